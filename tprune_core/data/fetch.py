"""Download and unpack the official archives of the public datasets (for users with internet access).

    fetch("esc50", "data/")            -> data/ESC-50-master            (GitHub master zip, ~600 MB)
    fetch("speechcommands", "data/")   -> data/speech_commands_v0.02    (tar.gz, ~2.3 GB, SHA-256 checked)

UrbanSound8K is distributed after accepting its licence on the dataset's site, so it is not fetched here.
Point TPRUNE_DATA at the folder you passed (`to_dir`); the dataset folders above are found there automatically.
"""
import hashlib
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from ..errors import ConfigError, DatasetError
from .datasets import locate

OFFICIAL = {
    "esc50": dict(url="https://github.com/karolpiczak/ESC-50/archive/master.zip", archive="ESC-50-master.zip",
                  folder="ESC-50-master", sha256=None),  # a moving branch archive: no fixed checksum
    "speechcommands": dict(url="http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
                           archive="speech_commands_v0.02.tar.gz", folder="speech_commands_v0.02",
                           sha256="af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58"),
}
MANUAL = {"urbansound8k": "UrbanSound8K is shared after accepting its licence at https://urbansounddataset.weebly.com/"
                          "urbansound8k.html; download it there and unpack it so that <DIR>/UrbanSound8K/audio/fold1 "
                          "and <DIR>/UrbanSound8K/metadata/UrbanSound8K.csv exist"}


def fetch(name: str, to_dir, url: str | None = None, sha256: str | None = None, keep_archive: bool = False,
          progress: bool = True) -> Path:
    """Download `name`'s archive (or `url`), check its size and checksum, unpack it under `to_dir`, check the
    layout, and return the dataset folder. The official checksum applies only to the official URL."""
    if name in MANUAL:
        raise DatasetError(MANUAL[name].replace("<DIR>", str(to_dir)))
    if name not in OFFICIAL:
        raise ConfigError(f"dataset {name!r}: expected one of {sorted(OFFICIAL)} (urbansound8k: download by hand)")
    spec = OFFICIAL[name]
    to_dir = Path(to_dir).expanduser().resolve()
    to_dir.mkdir(parents=True, exist_ok=True)
    url = url or spec["url"]
    expected = sha256 or (spec["sha256"] if url == spec["url"] else None)
    archive = to_dir / spec["archive"]
    _download(url, archive, expected, progress)
    folder = _extract(archive, to_dir, spec["folder"], progress)
    try:
        found, _ = locate(name, folder)
    except DatasetError as exc:
        raise DatasetError(f"{url}: the archive unpacked into {folder} does not hold the {name} layout "
                           f"({exc})") from None
    if not keep_archive:
        archive.unlink()
    print(f"{name}: ready in {found}", file=sys.stderr)
    return found


def _download(url: str, dest: Path, sha256: str | None, progress: bool):
    """Stream `url` into `dest` (via a .part file), checking the length the server announced and the checksum."""
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {dest.name}", file=sys.stderr,
                      disable=not progress) as bar:
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        got = part.stat().st_size
    except urllib.error.HTTPError as exc:
        part.unlink(missing_ok=True)
        raise DatasetError(f"{url}: the server answered HTTP {exc.code} ({exc.reason}); expected the archive") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise DatasetError(f"{url}: download failed ({reason}). Offline? Download it by hand and unpack it into "
                           f"{dest.parent}, or pass url= a reachable copy") from None
    if total is not None and got != total:
        part.unlink(missing_ok=True)
        raise DatasetError(f"{url}: download truncated: got {got} bytes, the server announced {total}")
    if got == 0:
        part.unlink(missing_ok=True)
        raise DatasetError(f"{url}: downloaded 0 bytes; expected an archive")
    if sha256 and digest.hexdigest() != sha256.lower():
        part.unlink(missing_ok=True)
        raise DatasetError(f"{url}: SHA-256 {digest.hexdigest()} does not match the expected {sha256}")
    part.replace(dest)


def _inside(base: Path, member: str) -> bool:
    return (base / member).resolve().is_relative_to(base.resolve())


def _extract(archive: Path, to_dir: Path, folder: str, progress: bool) -> Path:
    """Unpack into `to_dir`; an archive without a single top folder (Speech Commands) goes into `to_dir/folder`."""
    bar = dict(desc=f"unpacking {archive.name}", unit="file", file=sys.stderr, disable=not progress)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            top = _single_top(names)
            target = to_dir if top else to_dir / folder
            bad = [n for n in names if not (target / n).resolve().is_relative_to(target.resolve())]
            if bad:
                raise DatasetError(f"{archive}: refuses to unpack a path outside the target folder: {bad[0]}")
            for n in tqdm(names, **bar):
                zf.extract(n, target)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            top = _single_top([m.name for m in members])
            target = to_dir if top else to_dir / folder
            target.mkdir(parents=True, exist_ok=True)
            for m in tqdm(members, **bar):
                try:
                    tf.extract(m, target, filter="data")  # "data" refuses links and paths leaving the target
                except tarfile.FilterError as exc:
                    raise DatasetError(f"{archive}: refuses to unpack {m.name!r} ({exc})") from None
    else:
        raise DatasetError(f"{archive}: neither a zip nor a tar archive; expected the dataset's official archive")
    return to_dir / top if top else target


def _single_top(names) -> str | None:
    """The one top-level folder every member lives in (ESC-50-master/...), or None."""
    paths = [n[2:] if n.startswith("./") else n for n in names]
    paths = [p for p in paths if p.strip("/")]
    tops = {p.split("/", 1)[0] for p in paths}
    return tops.pop() if len(tops) == 1 and any("/" in p.rstrip("/") for p in paths) else None
