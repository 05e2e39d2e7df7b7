"""One way to write a file so that no reader, and no crash, ever sees half of it (and one way to name its bytes).

The data goes to a temporary file in the target's own folder (same file system, so the rename is atomic), is
flushed and fsynced, then ``os.replace``d over the target. Every module that writes a cache entry, a checkpoint or
a result table uses this helper. Torch-free: a checkpoint passes ``torch.save`` as the writer.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, IO


def atomic_write(path, payload: bytes | str | Callable[[IO[bytes]], None], mode: int = 0o644) -> Path:
    """Write ``payload`` (bytes, text as UTF-8, or a function that writes to a binary file) to ``path`` atomically.

    Creates missing parent folders. On any error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(payload):
                payload(f)
            else:
                f.write(payload.encode() if isinstance(payload, str) else payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path, obj, **dumps_options) -> Path:
    """``json.dumps(obj, **dumps_options)`` written with ``atomic_write``."""
    return atomic_write(path, json.dumps(obj, **dumps_options))


_SHA256: dict = {}   # (path, size, mtime_ns) -> digest: checkpoints are asked for many times, read once


def sha256_file(path) -> str:
    """sha256 (hex) of a file's bytes; read again only when its size or modification time changed."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA256:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _SHA256[key] = h.hexdigest()
    return _SHA256[key]
