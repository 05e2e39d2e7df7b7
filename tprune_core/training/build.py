"""Building a zoo profile: train what is neither built nor released, in dependency order, one process per run
when ``jobs`` > 1; pack built runs into the release. What to build (the spec, the plan, the entries) is ``zoo``."""
from __future__ import annotations

import copy
import os
import sys
import time

from ..errors import ConfigError
from . import release
from .mae import pretrain
from .runtime import zoo_root
from .train import test_run, train_run
from .zoo import (_built, _entry, _finished, _parents, format_summary, summarize, zoo_entries, zoo_plan)


def build_zoo(profile: str = "full", threads: int | None = None, progress: bool = True, device: str = "auto",
              report: bool = True, jobs: int = 1, roles=None, on_start=None, on_done=None) -> list:
    """Train (or find in the cache) every model of a profile, test each selected checkpoint once, print the
    accuracy table (stdout, when ``report``) and the total wall time; returns ``zoo_entries(profile)``.
    ``jobs`` > 1 trains that many runs at once, each in its own process with one thread (unless ``threads`` says
    otherwise), a run starting as soon as the run it starts from is done: on a 2-core CPU two one-thread runs get
    more done than one two-thread run, whose threads wait on each other. ``on_start(role, cfg)`` and
    ``on_done(i, n, role, cfg, seconds)`` replace the per-run progress lines (`tprune study` draws a bar)."""
    t0 = time.perf_counter()
    from_release = release.materialize(profile)
    whole = zoo_plan(profile)
    plan = [(role, cfg) for role, cfg in whole if roles is None or role in roles]
    done = {cfg.hash() for role, cfg in whole if _built(role, cfg)}
    # parents from outside the plan (a study's released starts) count as done once they are in the cache
    inside = {cfg.hash() for _, cfg in whole}
    done |= {h for _, cfg in plan for h in _parents(cfg) if h not in inside and _finished(h)}
    n_released = sum(cfg.hash() in release.released(profile) for _, cfg in plan)
    print(f"tprune zoo {profile}: {len(plan)} runs ({len(done & {c.hash() for _, c in plan})} already in "
          f"{zoo_root()}, {n_released} of them from the release {release.release_dir(profile)}"
          + (f", {len(from_release)} written from it now" if from_release else "") + ")"
          + (f", {jobs} at a time" if jobs > 1 else ""), file=sys.stderr)
    todo = [(role, _operational(cfg, threads if threads or jobs == 1 else 1, progress and jobs == 1, device))
            for role, cfg in plan if cfg.hash() not in done]
    if jobs == 1:
        for role, cfg in todo:
            if on_start:
                on_start(role, cfg)
            (on_done or _report_run)(len(plan) - len(todo) + todo.index((role, cfg)) + 1, len(plan), role, cfg,
                                     _train_one(role, cfg))
    else:
        _train_parallel(todo, done, jobs, len(plan), on_start, on_done)
    entries = zoo_entries(profile, roles=roles)
    total = time.perf_counter() - t0
    if report:
        print(format_summary(summarize(entries)))
    print(f"tprune zoo {profile}: total {total:.0f} s ({total / 60:.1f} min) for {len(plan)} runs, "
          f"{len(todo)} trained now", file=sys.stdout if report else sys.stderr)
    return entries


def pack_release(profile: str = "full", roles=release.RELEASED_ROLES, code_commit: str | None = None,
                 progress: bool = True) -> list:
    """`tprune zoo pack`: add the profile's built runs of ``roles`` to its release (``release.pack``)."""
    return release.pack(profile, [(r, c) for r, c in zoo_plan(profile) if r in roles], code_commit, progress)


def _operational(cfg, threads, progress, device):
    cfg = copy.copy(cfg)
    cfg.threads, cfg.progress, cfg.device = threads, progress, device  # operational: hash unchanged
    return cfg


def _train_one(role, cfg) -> float:
    """Train (or resume) one run and test it; the seconds it took. Also the body of a parallel worker."""
    t = time.perf_counter()
    if role == "mae":
        pretrain(cfg)
    else:
        test_run(train_run(cfg), cfg.progress)
    return time.perf_counter() - t


def _exit_with_parent(parent: int, every: float = 2.0):
    """Pool worker initializer: end this worker when the process that started it is gone. A parent killed
    outright (SIGKILL, an OOM kill) runs no cleanup, and its workers would go on training unseen, holding the
    cores; each run resumes from its last checkpoint, so ending mid-epoch loses at most that epoch."""
    import threading

    def watch():
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(3)
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _report_run(i, n, role, cfg, seconds):
    e = _entry(role, cfg)
    acc = f"  test acc {100 * e['test_accuracy']:.1f}%" if "test_accuracy" in e else ""
    print(f"[zoo {i}/{n}] {role} {e['family']}/{e['dataset']} seed {e['seed']}"
          + (f" keep {e['keep_rate']}" if role == "prune" else "") + f"  {seconds:.0f}s{acc}", file=sys.stderr)


def _train_parallel(todo, done: set, jobs: int, n_plan: int, on_start=None, on_done=None):
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    waiting, running, finished = list(todo), {}, n_plan - len(todo)
    # spawn, not fork: a forked child inherits torch's thread pools and can deadlock in them
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_exit_with_parent, initargs=(os.getpid(),)) as pool:
        while waiting or running:
            for role, cfg in [rc for rc in waiting if set(_parents(rc[1])) <= done][:jobs - len(running)]:
                waiting.remove((role, cfg))
                running[pool.submit(_train_one, role, cfg)] = (role, cfg)
                if on_start:
                    on_start(role, cfg)
                else:
                    print(f"[zoo] started {role} {cfg.hash()} ({getattr(cfg, 'family', 'mae')}/"
                          f"{getattr(cfg, 'dataset', '')} seed {cfg.seed})", file=sys.stderr)
            if not running:
                stuck = ", ".join(f"{r} {c.hash()} needs {' and '.join(_parents(c))}" for r, c in waiting[:3])
                raise ConfigError(f"zoo: runs wait for parents that are not in the plan: {stuck}")
            ready, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in ready:
                role, cfg = running.pop(fut)
                seconds = fut.result()   # a failed run raises here, naming its own error
                done.add(cfg.hash())
                finished += 1
                (on_done or _report_run)(finished, n_plan, role, cfg, seconds)