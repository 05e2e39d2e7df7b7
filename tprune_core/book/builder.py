"""`tprune book`: sync the Reruns part and run `jupyter-book build -W`.

One output folder (and so one execution cache) per profile, because jupyter-cache keys notebooks on their code
cells only; for the same reason a change in tprune_core re-executes every chapter. Chapters whose executed
notebook stored in results/ is current (``stored``) are put into that cache first and not executed: a reader's
build of a fresh clone needs neither models nor audio. Only when a chapter must be executed are the zoo's models
trained (those neither built nor released). The html folder of the last successful build is recorded in
`_build/last-build.json` for the site check.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..analyses import results
from ..errors import ConfigError, TpruneError
from ..rules import BOOK_PROFILES
from ._shared import book_root, environ
from .listing import sync_reruns
from .params import profile
from .stored import package_fingerprint, preload, store_executed

LAST_BUILD = "_build/last-build.json"


def output_dir(root, profile_name: str) -> Path:
    """Where jupyter-book writes a profile's build (`<it>/_build/html`, `<it>/_build/.jupyter_cache`)."""
    root = book_root(root)
    return root if profile_name == "full" else root / "_build" / profile_name


def _check_provenance(profile_name: str, store: Path):
    """Every table's checkpoint digests must agree with each other and with the zoo the chapters were built on."""
    from ..training import zoo
    built = [e for e in zoo.zoo_entries(profile_name, require=False) if e.get("trained") and e["role"] != "mae"]
    # No zoo here (e.g. a book of model-free chapters): the tables must still agree with each other.
    current = zoo.provenance(built)["checkpoints"] if built else None
    problems = results.provenance_problems(store, current)
    if problems:
        raise TpruneError(f"{len(problems)} stored table(s) do not match the zoo's weights: " + "; ".join(problems[:5])
                          + " (re-run the chapters: `tprune book --reexecute`)")
    print(f"tprune book: every stored table's checkpoint digests agree"
          + (f" with the zoo ({len(current)} models)" if current else " with each other (no zoo built)"), flush=True)


def _prepare_execution(root: Path, out: Path, profile_name: str, reexecute: bool, train: bool, jobs: int):
    """Preload the current stored chapters into the execution cache; train the zoo only if a chapter must run."""
    from ..training import zoo
    from ..training.build import build_zoo
    store = results.default_root(base=root)
    if reexecute:
        stale = {"*": "--reexecute"}
    else:
        loaded, stale = preload(root, store, out / "_build" / ".jupyter_cache", zoo.released_digests(profile_name))
        print(f"tprune book: {len(loaded)} chapter(s) from the notebooks stored in {store}"
              + "".join(f"\n  {ch}: to execute ({why})" for ch, why in stale.items()), flush=True)
    if stale and train:
        build_zoo(profile_name, jobs=jobs)   # what the chapters to execute need, if not built or released


def build(root=None, profile_name: str | None = None, extra_args=(), reexecute: bool = False, train: bool = True,
          jobs: int = 1) -> Path:
    """`tprune book`: sync the Reruns part, then build the book with jupyter-book under -W. Returns the html
    folder, also recorded in _build/last-build.json for the site check. `reexecute` drops the profile's
    execution cache first (jupyter-cache keys notebooks on their code cells, so a change in tprune_core alone
    does not re-run a chapter). Chapters whose stored notebook is current are not executed; when some chapter
    must be, the zoo is built first (`train`; `jobs` runs at a time). After the build every executed notebook is
    stored in results/ for the next reader."""
    root = book_root(root)
    profile_name = profile_name or profile()
    if profile_name not in BOOK_PROFILES:
        raise ConfigError(f"profile {profile_name!r}: expected one of {', '.join(BOOK_PROFILES)}")
    toc, _ = sync_reruns(root)
    out = output_dir(root, profile_name)
    html = out / "_build" / "html"
    marker = root / LAST_BUILD
    marker.unlink(missing_ok=True)  # a failed build must not leave an older one to be checked
    # Sphinx rewrites only changed pages, so after a toc change the sidebars of the other pages would be
    # stale: re-read everything then (executed notebooks come from the cache, nothing is re-executed).
    stamp = out / "_build" / ".tprune-toc.sha256"
    toc_hash = hashlib.sha256(toc.read_bytes()).hexdigest()
    reread = reexecute or not stamp.is_file() or stamp.read_text().strip() != toc_hash
    code_stamp = out / "_build" / ".tprune-code.sha256"
    code = package_fingerprint()
    if code_stamp.is_file() and code_stamp.read_text().strip() != code and not reexecute:
        # jupyter-cache keys notebooks on their code cells only: a cached page made by older package code
        # would be stale, so a package change re-executes every chapter (stored result tables still apply).
        print("tprune book: tprune_core changed since the last build: re-executing every chapter", flush=True)
        reexecute = True
    if reexecute:
        shutil.rmtree(out / "_build" / ".jupyter_cache", ignore_errors=True)
        reread = True
    with environ(TPRUNE_PROFILE=profile_name):
        _prepare_execution(root, out, profile_name, reexecute, train, jobs)
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(root), "--path-output", str(out),
           "--toc", str(toc.relative_to(root)), "-W", "--keep-going", *(["--all"] if reread else []),
           *extra_args]
    with environ(TPRUNE_PROFILE=profile_name):  # chapters and the findings table use the same store
        env = dict(os.environ, TPRUNE_RESULTS=str(results.default_root(base=root)))
    print(f"tprune book: profile {profile_name} -> {html}", flush=True)
    start = time.monotonic()
    done = subprocess.run(cmd, cwd=root, env=env)
    if done.returncode != 0:
        raise TpruneError(f"jupyter-book build failed (exit {done.returncode}); see the messages above")
    with environ(TPRUNE_PROFILE=profile_name):
        store = results.default_root(base=root)
        _check_provenance(profile_name, store)
        stored = store_executed(root, out / "_build" / ".jupyter_cache", store, code)
    print(f"tprune book: {len(stored)} executed chapter(s) stored in {store}", flush=True)
    stamp.write_text(toc_hash + "\n")
    code_stamp.write_text(code + "\n")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"html": str(html), "profile": profile_name, "seconds": round(
        time.monotonic() - start, 1), "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat()}, indent=2) + "\n")
    print(f"tprune book: built in {time.monotonic() - start:.0f} s: {html / 'index.html'}", flush=True)
    return html
