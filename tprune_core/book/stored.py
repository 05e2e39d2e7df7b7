"""Executed chapters kept in results/, so that a reader's build renders the site without models or audio.

After a successful build, ``store_executed`` writes each chapter's executed notebook (its outputs taken from the
build's jupyter-cache) to ``<results>/<chapter>/notebook.ipynb`` with a stamp,
``notebook.stamp.json``: the jupyter-cache hash of its code cells, the fingerprint of the tprune_core code that ran
it, and the checkpoint digests its tables recorded. Before a build, ``preload`` puts every stored notebook that is
*current* into the profile's jupyter-cache, where jupyter-book finds its outputs instead of executing the chapter.

Current means all of: the chapter's code cells are the ones that ran (same jupyter-cache hash: prose may change),
the package code is the same (same fingerprint), and every model of the release that the chapter's tables name
still has the digest they recorded (a new release makes them stale). Anything else is executed again; a stale
notebook is never served.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..analyses import results
from ..fsio import atomic_write

NOTEBOOK = "notebook.ipynb"
STAMP = "notebook.stamp.json"
PACKAGE_DIR = Path(__file__).resolve().parent.parent   # tprune_core/


def package_fingerprint() -> str:
    """sha256 over tprune_core's Python files (paths relative to the package, so any checkout agrees)."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        h.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def chapter_names(root: Path) -> list[str]:
    """The executable chapters named in _toc.yml: book/<name>.md files with a kernel (the intro has none)."""
    import yaml
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for part in toc.get("parts", []) for c in part.get("chapters", [])]
    out = []
    for f in files:
        path = root / f"{f}.md"
        text = path.read_text() if path.is_file() else ""
        header = text.split("---", 2)[1] if text.startswith("---") and text.count("---") >= 2 else ""
        if "kernelspec:" in header:
            out.append(Path(f).name)
    return out


def _code_hash(nb) -> str:
    from jupyter_cache.cache.main import JupyterCacheBase
    return JupyterCacheBase.create_hashed_notebook(None, nb)[1]


def _source_notebook(root: Path, chapter: str):
    import jupytext
    return jupytext.read(root / "book" / f"{chapter}.md")


def _table_checkpoints(store: Path, chapter: str) -> dict:
    found = {}
    for meta in results.list_results(store):
        if meta.get("chapter") == chapter:
            found.update(meta.get("checkpoints") or {})
    return found


def _unchanged(folder: Path, payload: bytes, stamp: dict) -> bool:
    if not (folder / NOTEBOOK).is_file() or not (folder / STAMP).is_file():
        return False
    old = json.loads((folder / STAMP).read_text())
    same = all(old.get(k) == stamp[k] for k in ("code_hash", "package", "checkpoints"))
    return same and (folder / NOTEBOOK).read_bytes() == payload


def store_executed(root: Path, cache_dir: Path, store: Path, package: str) -> list[str]:
    """Store every chapter whose executed outputs are in the build's jupyter-cache (``cache_dir``) into the
    results store; returns the chapters written. The outputs come from the cache, not from jupyter-book's
    jupyter_execute/ copies, which hold no outputs when a page was served from the cache. ``package``: the
    package fingerprint taken when the build started (the code that ran, even if files changed meanwhile)."""
    import nbformat
    from jupyter_cache import get_cache
    cache = get_cache(str(cache_dir))
    stored = []
    for chapter in chapter_names(root):
        source = _source_notebook(root, chapter)
        try:
            _, nb = cache.merge_match_into_notebook(source)
        except KeyError:
            continue   # not executed in this build (nothing to store)
        for i, cell in enumerate(nb.cells):   # stable between identical runs: jupytext draws random cell ids
            cell.get("metadata", {}).pop("execution", None)
            cell["id"] = f"cell-{i}"
        stamp = {"chapter": chapter, "code_hash": _code_hash(nb), "package": package,
                 "code_version": results.code_version(), "checkpoints": _table_checkpoints(store, chapter)}
        folder = store / chapter
        folder.mkdir(parents=True, exist_ok=True)
        payload = (nbformat.writes(nb) + "\n").encode()
        if _unchanged(folder, payload, stamp):
            continue   # served from the cache: keep the stamp of the run that made it (its code version)
        atomic_write(folder / NOTEBOOK, payload)
        atomic_write(folder / STAMP, (json.dumps(stamp, indent=1, sort_keys=True) + "\n").encode())
        stored.append(chapter)
    return stored


def why_stale(root: Path, store: Path, chapter: str, released: dict) -> str | None:
    """None when the stored notebook of ``chapter`` is current, else the reason it is not. ``released``: model
    name -> sha256 of the release's file."""
    folder = store / chapter
    if not (folder / NOTEBOOK).is_file() or not (folder / STAMP).is_file():
        return "no stored notebook"
    stamp = json.loads((folder / STAMP).read_text())
    if stamp.get("package") != package_fingerprint():
        return "tprune_core changed since it was executed"
    if stamp.get("code_hash") != _code_hash(_source_notebook(root, chapter)):
        return "its code cells changed"
    changed = sorted(n for n, d in (stamp.get("checkpoints") or {}).items() if n in released and released[n] != d)
    if changed:
        return f"computed from other weights than the release's ({', '.join(changed[:3])})"
    return None


def preload(root: Path, store: Path, cache_dir: Path, released: dict) -> tuple[list, dict]:
    """Add every current stored notebook to the jupyter-cache at ``cache_dir``. Returns (chapters preloaded,
    {chapter: why it must be executed})."""
    from jupyter_cache import get_cache
    cache = get_cache(str(cache_dir))
    loaded, stale = [], {}
    for chapter in chapter_names(root):
        why = why_stale(root, store, chapter, released)
        if why:
            stale[chapter] = why
            continue
        cache.cache_notebook_file(str(store / chapter / NOTEBOOK), check_validity=False, overwrite=True)
        loaded.append(chapter)
    return loaded, stale
