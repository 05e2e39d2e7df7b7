"""fetch() against a local HTTP server on 127.0.0.1 serving tiny archives built here."""
import functools
import hashlib
import http.server
import io
import socket
import tarfile
import threading
import zipfile

import pytest

from conftest import make_esc50, make_speechcommands
from tprune_core.datasets import load_dataset
from tprune_core.errors import DatasetError
from tprune_core.fetch import OFFICIAL, fetch


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serves tmp_path/www on an ephemeral port; yields (folder, base URL)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")  # a proxy in the environment must not intercept
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def zip_folder(folder, dest):
    with zipfile.ZipFile(dest, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, path.relative_to(folder.parent))  # keeps the top folder, as GitHub's zip does
    return dest


def test_fetch_esc50_zip(tmp_path, server):
    www, base = server
    zip_folder(make_esc50(tmp_path / "src"), www / "master.zip")
    folder = fetch("esc50", tmp_path / "data", url=f"{base}/master.zip", progress=False)
    assert folder == (tmp_path / "data" / "ESC-50-master").resolve()
    assert len(load_dataset("esc50", tmp_path / "data", "all")) == 10
    assert not (tmp_path / "data" / "ESC-50-master.zip").exists()  # archive removed after unpacking


def test_fetch_speechcommands_tar_without_top_folder_and_checksum(tmp_path, server):
    www, base = server
    src = make_speechcommands(tmp_path / "src", official=True, speakers=6)
    with tarfile.open(www / "sc.tar.gz", "w:gz") as tf:
        for path in sorted(src.iterdir()):
            tf.add(path, arcname=f"./{path.name}")  # like the official archive: files at the top level
    sha = hashlib.sha256((www / "sc.tar.gz").read_bytes()).hexdigest()
    with pytest.raises(DatasetError, match="SHA-256"):
        fetch("speechcommands", tmp_path / "data", url=f"{base}/sc.tar.gz", sha256="0" * 64, progress=False)
    assert not list((tmp_path / "data").glob("*.part"))
    folder = fetch("speechcommands", tmp_path / "data", url=f"{base}/sc.tar.gz", sha256=sha, progress=False)
    assert folder.name == "speech_commands_v0.02"
    assert len(load_dataset("speechcommands", tmp_path / "data", "all")) == 11 * 6


def test_official_checksum_is_known():
    assert len(OFFICIAL["speechcommands"]["sha256"]) == 64
    assert OFFICIAL["esc50"]["url"].endswith("master.zip")


def test_offline_gives_a_clear_error(tmp_path):
    with socket.socket() as s:  # a port on which nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/master.zip"
    with pytest.raises(DatasetError, match="Offline") as info:
        fetch("esc50", tmp_path / "data", url=url, progress=False)
    assert url in str(info.value)


def test_missing_file_and_bad_archives(tmp_path, server):
    www, base = server
    with pytest.raises(DatasetError, match="HTTP 404"):
        fetch("esc50", tmp_path / "d1", url=f"{base}/nothing.zip", progress=False)
    (www / "junk.zip").write_bytes(b"this is not an archive" * 10)
    with pytest.raises(DatasetError, match="neither a zip nor a tar"):
        fetch("esc50", tmp_path / "d2", url=f"{base}/junk.zip", progress=False)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ESC-50-master/../../evil.txt", "x")
    (www / "evil.zip").write_bytes(buf.getvalue())
    with pytest.raises(DatasetError, match="outside"):
        fetch("esc50", tmp_path / "d3", url=f"{base}/evil.zip", progress=False)
    assert not (tmp_path / "evil.txt").exists()
    with zipfile.ZipFile(www / "wrong.zip", "w") as zf:
        zf.writestr("something/readme.txt", "not a dataset")
    with pytest.raises(DatasetError, match="does not hold the esc50 layout"):
        fetch("esc50", tmp_path / "d4", url=f"{base}/wrong.zip", progress=False)


def test_urbansound8k_is_manual(tmp_path):
    with pytest.raises(DatasetError, match="licence"):
        fetch("urbansound8k", tmp_path)
