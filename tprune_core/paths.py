"""Where things live on disk, in one place: the audio (``$TPRUNE_DATA``), the heavy caches (``$TPRUNE_CACHE``) and
the model release (``$TPRUNE_RELEASE``). Torch-free; every module asks here instead of reading the environment."""
from __future__ import annotations

import os
from pathlib import Path

from .source import repo_root


def data_root() -> Path | None:
    """``$TPRUNE_DATA`` as a path (a relative value is tried from the working directory, then the checkout)."""
    value = os.environ.get("TPRUNE_DATA")
    if not value:
        return None
    path = Path(value).expanduser()
    repo = repo_root()
    if not path.is_absolute() and not path.exists() and repo is not None and (repo / path).exists():
        path = repo / path
    return path.resolve()


def cache_root() -> Path:
    """``$TPRUNE_CACHE``, else ``<checkout>/.cache/tprune``, else ``~/.cache/tprune`` (an installed package)."""
    if os.environ.get("TPRUNE_CACHE"):
        return Path(os.environ["TPRUNE_CACHE"]).expanduser()
    repo = repo_root()
    return repo / ".cache" / "tprune" if repo is not None else Path.home() / ".cache" / "tprune"


def release_dir(profile: str) -> Path:
    """``$TPRUNE_RELEASE/<profile>``, else ``<checkout>/zoo/<profile>``, else ``./zoo/<profile>``."""
    base = os.environ.get("TPRUNE_RELEASE", "").strip()
    root = Path(base).expanduser() if base else (repo_root() or Path.cwd()) / "zoo"
    return root / profile
