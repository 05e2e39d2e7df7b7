"""The one resumable epoch loop: supervised training (``train.fit``) and MAE pretraining (``mae.pretrain``) drive it.

    class MyTask(Task):
        zero = (0.0, 0)                           # the epoch's running sums as it starts, e.g. (loss * n, n)
        def step(self, idx, step): ...            # one batch of example indices -> (loss, increments of the sums)
        def end_epoch(self, epoch, sums): ...     # validation -> this epoch's own fields of the history row
        def finish(self, history): ...            # the run's final files (train.json, encoder.pt ...)
    with cpu_threads(cfg.threads), deterministic(device):
        torch.manual_seed(cfg.seed)
        model, opt = ..., ...
        result = run_epochs(MyTask(cfg, run_dir, tag, model, opt, device, n))

An epoch is ``n // batch_size`` batches (the last partial one is dropped) of a permutation of ``range(n)`` that
depends only on (seed, epoch); the learning rate follows ``lr_at`` step by step. ``state.pt`` in the run folder
(model, optimizer, step, global RNG states, history, elapsed time, the epoch's running sums and what the task's
``state`` adds) is rewritten atomically every ``ckpt_every`` steps and after every epoch. Rerunning after a kill
continues from it and ends with the same weights as a run that was never interrupted (CPU), as long as the task's
batches are pure functions of the step and of the global RNG. ``config.json`` is written when a run starts and
``log.json`` (config and history) after every epoch; ``state.pt`` is removed once ``finish`` has written the final
files, so a kill at any point leaves a run that either resumes or is complete.

Under torchrun (``distributed``: WORLD_SIZE > 1, a task with ``data_parallel = True``) the same loop runs in every
process: each batch of the permutation is split among the ranks (``distributed.shard``), the task's forwards go
through ``task.net`` (the DistributedDataParallel wrapper of ``task.model``), the epoch's running sums are added
over the ranks before they are logged or saved, and rank 0 alone validates and writes the files (state.pt keeps
every rank's RNG state and ``rank_state`` in ``ranks``), the others waiting at the collectives.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..errors import CheckpointError, ConfigError, TpruneError
from . import distributed
from .distributed import World
from .runtime import load_torch, lr_at, optimizer_step, rng_state, save_atomic, set_rng_state, training_attention


class RunBusyError(TpruneError):
    """Another process is training this run right now."""


class Task:
    """One kind of training as ``run_epochs`` drives it. Subclasses implement ``step``, ``end_epoch`` and ``finish``;
    the other hooks are optional. ``cfg`` has epochs, batch_size, seed, lr, min_lr, warmup_epochs, grad_clip,
    ckpt_every, progress, ``hash()`` and ``to_dict()``. ``run_hash`` is the run's identity, taken once as the
    task starts (a user-folder dataset's hash reads every file's size and mtime: not a thing to redo per save)."""
    zero = (0.0, 0)                      # the running sums of an epoch as it starts ("epoch_stats" in state.pt)
    lr_hint = "lower the learning rate"  # the advice when the loss stops being finite
    data_parallel = False                # True: ``step`` runs its training forwards through ``self.net`` (DDP)

    def __init__(self, cfg, run_dir, tag: str, model, opt, device: torch.device, n: int):
        self.cfg, self.run_dir, self.tag, self.run_hash = cfg, Path(run_dir), tag, cfg.hash()
        self.model, self.opt, self.device, self.n = model, opt, device, n
        self.net = model   # the loop puts the DistributedDataParallel wrapper here under torchrun
        self.steps_per_epoch = n // cfg.batch_size
        self.total = self.steps_per_epoch * cfg.epochs

    def step(self, idx: torch.Tensor, step: int) -> tuple:
        """Forward the examples ``idx`` at iteration ``step``: (loss, what it adds to each running sum)."""
        raise NotImplementedError

    def postfix(self, sums: tuple) -> dict:
        """The progress bar's fields, from the epoch's running sums."""
        return {}

    def end_epoch(self, epoch: int, sums: tuple) -> dict:
        """Validation after ``epoch`` (from 0): the history row's own fields (the loop adds epoch, step, lr and
        seconds)."""
        return {}

    def keep_best(self, row: dict):
        """Each finished history row: a task that selects an epoch keeps the best one here (best.pt)."""

    def describe(self, row: dict) -> str:
        """The row's own fields in the epoch's log line."""
        return ""

    def state(self) -> dict:
        """What the task adds to state.pt (e.g. the best epoch so far)."""
        return {}

    def rank_state(self) -> dict:
        """What differs between the ranks of a data-parallel run and must survive a resume (e.g. the pruning
        forward counter): kept per rank in state.pt, handed back to ``restore`` on each rank."""
        return {}

    def restore(self, st: dict):
        """Take back what ``state`` (and this rank's ``rank_state``) saved, when a run resumes."""

    def finish(self, history: list):
        """Write the run's final files after the last epoch; ``run_epochs`` returns what this returns."""
        raise NotImplementedError


def resume_state(state_path: Path, run_hash: str, model, opt, device, world: World = World()) -> dict | None:
    """The saved state of an interrupted run with model, optimizer and RNG restored from it; None: a fresh run.
    In a data-parallel run each rank takes its own entry of ``ranks`` (RNG state and ``rank_state``); a rank the
    saved run did not have is marked ``own_stream: False``."""
    if not state_path.is_file():
        return None
    st = load_torch(state_path)
    if st.get("hash") != run_hash:
        raise CheckpointError(f"{state_path}: belongs to run {st.get('hash')}, not {run_hash}")
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["optimizer"])
    ranks = st.get("ranks") or [{}]
    st = {**st, **ranks[world.rank], "own_stream": True} if world.rank < len(ranks) else {**st, "own_stream": False}
    set_rng_state(st["rng"], device)
    return st


def _start(task: Task, state_path: Path, world: World) -> tuple:
    """(step, history, elapsed seconds, this rank's running sums of the epoch) to go on from: state.pt's, with
    everything else it holds restored; or a fresh run's, whose folder and config.json rank 0 creates."""
    cfg = task.cfg
    st = resume_state(state_path, task.run_hash, task.model, task.opt, task.device, world)
    if st is None:
        if world.main:
            task.run_dir.mkdir(parents=True, exist_ok=True)
            save_atomic({"hash": task.run_hash, "config": cfg.to_dict()}, task.run_dir / "config.json")
        return 0, [], 0.0, task.zero
    task.restore(st)
    if not st["own_stream"]:   # resumed on more processes than saved it: a fresh stream, the same for a rerun
        torch.manual_seed(distributed.stream_seed(cfg.seed * 1_000_003 + st["step"], world.rank))
    if world.main:
        saved = st.get("world_size", 1)
        print(f"[{task.tag}] resuming {task.run_dir.name} at step {st['step']}/{task.total} "
              f"(epoch {st['step'] // task.steps_per_epoch + 1})"
              + (f" on {world.size} processes, saved by {saved}" if saved != world.size else ""), file=sys.stderr)
    # the saved sums are the whole world's: rank 0 carries them on, the others start from zero
    return st["step"], st["history"], st["elapsed"], st.get("epoch_stats", task.zero) if world.main else task.zero


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold ``run_dir/.lock`` while training: a second process (another `tprune zoo`, a parallel zoo worker) that
    reaches the same run gets a clear error instead of writing the same files at the same time."""
    import fcntl
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise RunBusyError(f"{run_dir}: being trained by another process ({f.read().strip() or 'pid unknown'}); "
                               f"wait for it, or stop it and rerun (training resumes)") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_epochs(task: Task):
    """Train ``task`` to its last step, from state.pt when there is one; returns ``task.finish(history)`` (None on
    ranks other than 0 of a data-parallel run)."""
    world = distributed.current()
    if distributed.environment().active and not (world.active and task.data_parallel):
        raise ConfigError(f"[{task.tag}] {type(task).__name__} trains in one process: run it without torchrun "
                          f"(WORLD_SIZE={distributed.environment().size})")
    distributed.check_batch(task.cfg.batch_size, world)
    with run_lock(task.run_dir) if world.main else contextlib.nullcontext():
        return _run_epochs(task, world)


def _save_state(task: Task, state_path: Path, world: World, **fields):
    """state.pt (rank 0 writes it; every rank must call this: it gathers each rank's RNG state and rank_state)."""
    ranks = distributed.gather({"rng": rng_state(task.device), **task.rank_state()}, world)
    if world.main:
        extra = {"ranks": ranks, "world_size": world.size} if world.active else {}
        save_atomic({"hash": task.run_hash, "model": task.model.state_dict(), "optimizer": task.opt.state_dict(),
                     "rng": ranks[0]["rng"], **fields, **task.state(), **extra}, state_path)


def _run_epochs(task: Task, world: World):
    cfg, model, opt = task.cfg, task.model, task.opt
    steps_per_epoch, total = task.steps_per_epoch, task.total
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    state_path = task.run_dir / "state.pt"
    step, history, elapsed, partial = _start(task, state_path, world)
    distributed.barrier(world)   # every rank has read state.pt before rank 0 may write it again
    task.net = distributed.wrap(model, task.device, world)
    distributed.announce(task.tag, cfg.batch_size, task.device, world)
    t_session, steps_session = time.perf_counter(), 0

    def save_state(stats):
        _save_state(task, state_path, world, step=step, history=history,
                    elapsed=elapsed + time.perf_counter() - t_session, epoch_stats=stats)

    model.train()
    while step < total:
        epoch, first = divmod(step, steps_per_epoch)
        # The epoch's example order depends only on (seed, epoch): a resumed run sees the same batches.
        perm = torch.randperm(task.n, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
        # Running sums of this epoch (restored mid-epoch so the log matches an uninterrupted run).
        sums = partial if first else task.zero
        bar = tqdm(range(first, steps_per_epoch), desc=f"{task.tag} ep {epoch + 1}/{cfg.epochs}", unit="it",
                   leave=False, disable=not (cfg.progress and world.main), file=sys.stderr, initial=first,
                   total=steps_per_epoch, mininterval=0.5 if sys.stderr.isatty() else 30.0)
        with training_attention(model, task.device):
            for b in bar:
                lr = lr_at(step, total, warmup, cfg.lr, cfg.min_lr)
                for group in opt.param_groups:
                    group["lr"] = lr
                batch = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                loss, counts = task.step(distributed.shard(batch, world), step)
                if not torch.isfinite(loss):
                    raise ConfigError(f"[{task.tag}] loss became {loss.item()} at step {step}; {task.lr_hint}")
                optimizer_step(loss, model, opt, cfg.grad_clip)
                step += 1
                steps_session += 1
                sums = tuple(s + c for s, c in zip(sums, counts))
                # refresh=False: shown at the bar's own refresh (with an up-to-date count), not redrawn every step
                bar.set_postfix(refresh=False, **task.postfix(sums))
                if step % cfg.ckpt_every == 0 and step % steps_per_epoch:
                    save_state(distributed.all_sum(sums, world))
        bar.close()
        sums = distributed.all_sum(sums, world)   # the epoch's sums over every rank's part of the batches
        if world.main:   # End of epoch: validate, log, keep the best, checkpoint.
            row = {"epoch": epoch + 1, "step": step, "lr": lr, **task.end_epoch(epoch, sums)}
            row["seconds"] = elapsed + time.perf_counter() - t_session
            history.append(row)
            task.keep_best(row)
        save_state(sums)
        if world.main:
            save_atomic({"hash": task.run_hash, "config": cfg.to_dict(), "history": history,
                         **distributed.record(cfg.batch_size, world)}, task.run_dir / "log.json")
            eta = (time.perf_counter() - t_session) / max(steps_session, 1) * (total - step)
            tqdm.write(f"[{task.tag}] epoch {epoch + 1}/{cfg.epochs}  {task.describe(row)}  lr {lr:.2e}  "
                       f"{row['seconds']:.0f}s  ETA {eta:.0f}s", file=sys.stderr)
    result = task.finish(history) if world.main else None
    if world.main:
        state_path.unlink(missing_ok=True)   # optimizer state is only needed to resume
    distributed.barrier(world)   # the other ranks return once the run's final files are there
    return result
