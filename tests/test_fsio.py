"""fsio.atomic_write: a file is replaced whole or not at all, folders are made, nothing is left behind."""
import json
import os
import stat

import pytest

from tprune_core.fsio import atomic_write, atomic_write_json


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("payload, expected", [
    (b"\x00\x01 bytes", b"\x00\x01 bytes"),
    ("text é", "text é".encode()),
    (lambda f: f.write(b"from a writer"), b"from a writer"),
])
def test_payload_lands_whole(tmp_path, payload, expected):
    target = tmp_path / "out.bin"
    target.write_bytes(b"an older and much longer content" * 100)
    assert atomic_write(target, payload) == target
    assert target.read_bytes() == expected
    assert leftovers(tmp_path) == []


def test_large_payload_written_through_a_writer(tmp_path):
    chunk = os.urandom(1 << 16)

    def writer(f):
        for _ in range(64):
            f.write(chunk)

    atomic_write(tmp_path / "big", writer)
    assert (tmp_path / "big").read_bytes() == chunk * 64


def test_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "keep.json"
    target.write_text('{"old": true}')

    def writer(f):
        f.write(b"half of a new fi")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, writer)
    assert target.read_text() == '{"old": true}'
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["keep.json"]


def test_interrupted_writer_creates_no_target(tmp_path):
    def writer(f):
        f.write(b"partial")
        raise KeyboardInterrupt   # not an Exception: the clean-up must still run

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "new.bin", writer)
    assert list(tmp_path.iterdir()) == []


def test_parent_folders_are_created(tmp_path):
    target = tmp_path / "a" / "b" / "c.txt"
    atomic_write(target, "deep")
    assert target.read_text() == "deep"


def test_mode_is_0644(tmp_path):
    old = os.umask(0o077)   # mkstemp makes 0600 files; the result must still be readable by others
    try:
        atomic_write(tmp_path / "f", b"x")
        atomic_write(tmp_path / "f", b"y")   # replacing keeps the mode too
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


def test_json_uses_the_dumps_options(tmp_path):
    obj = {"b": [1, 2.5, None], "a": "é"}
    for options in ({}, {"sort_keys": True}, {"indent": 2, "sort_keys": True}):
        atomic_write_json(tmp_path / "x.json", obj, **options)
        assert (tmp_path / "x.json").read_text() == json.dumps(obj, **options)
    assert json.loads((tmp_path / "x.json").read_text()) == obj
