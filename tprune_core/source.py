"""Which checkout this package runs from and which version of its code: recorded with every trained model and
every stored table. Torch-free, so the CLI's help and the book's tables can use it."""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from . import __version__


def repo_root() -> Path | None:
    """The checkout this package lives in (the folder holding pyproject.toml), or None when installed."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "pyproject.toml").is_file() else None


# Paths the build itself writes: a change there says nothing about the code, so it never makes the version dirty.
GENERATED = ("results", "_build", "book/reruns", "zoo")


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """Package version plus the git commit, and `-dirty` when tracked code has uncommitted changes. The tables
    and pages a build writes (GENERATED) do not count: a build from a clean checkout stays clean."""
    root = repo_root()
    if root is None:
        return __version__
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."]
                                + [f":(exclude){p}" for p in GENERATED], cwd=root, capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.SubprocessError):
        return __version__
    if rev.returncode != 0 or not rev.stdout.strip():
        return __version__
    dirty = "-dirty" if status.returncode == 0 and status.stdout.strip() else ""
    return f"{__version__}+g{rev.stdout.strip()}{dirty}"
