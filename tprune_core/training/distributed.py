"""Data-parallel training under torchrun: one process per device, each global batch split evenly among them.

    torchrun --nproc-per-node 2 -m tprune_core.cli train --size base --device cuda ...   # NCCL, one GPU each
    torchrun --nproc-per-node 2 -m tprune_core.cli train --device cpu ...                # gloo on CPU

``environment()`` is the one place that reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK. Without them, or with
WORLD_SIZE=1, nothing here does anything and training is the single-process code path, unchanged. ``setup(device)``
joins the process group once per process (NCCL on CUDA devices, gloo on CPU) and gives each process its device
(``cuda:LOCAL_RANK``). ``loop.run_epochs`` then wraps the model in DistributedDataParallel, hands each rank its
part of every batch (``shard``), writes state.pt, config.json, log.json, best.pt and train.json from rank 0 only
(through the same atomic writes) and keeps every rank's random state in state.pt, so a killed run resumes.

One recipe, one run hash, whatever the number of processes (the world size is not hashed, as the device is not):
- ``TrainConfig.batch_size`` is the global batch. The epoch's permutation depends on (seed, epoch) alone, as in one
  process; rank r takes the r-th contiguous 1/N of each batch of it. Steps per epoch, the learning-rate and the
  keep-rate schedules are those of one process, and DDP averages the N equal parts' gradients: the gradient of the
  mean loss over the global batch, as one process computes it. The log and train.json state the global batch and
  the per-process batch (``record``).
- What is not the same: floating-point summation order, and the random draws (crops, SpecAugment, time shift,
  mixup, drop path, random pruning), which each rank makes from its own stream seeded from (seed, rank), so the N
  parts of a batch are augmented independently; class-balanced loss weights normalize within each part. With the
  random augmentation off, a 2-process run ends within float tolerance of the 1-process run (tests/test_ddp.py);
  with it on, a different draw of the same recipe: as a CUDA run differs from a CPU run of the same hash.
- Validation runs on rank 0 while the others wait (the process group's timeout is generous for it). Resuming on the
  same number of processes continues every rank's random stream exactly; on another number (dividing the batch)
  it continues the data order and the schedules, and re-seeds the ranks that have no saved stream.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import hashlib
import os
import sys
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .runtime import resolve_device

TIMEOUT = datetime.timedelta(hours=2)   # a collective waits this long: rank 0 validates while the others wait


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None
    local_size: int = 1          # processes on this machine (LOCAL_WORLD_SIZE): each holds its own data in memory

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


_world: World | None = None   # set by setup(): the process group this process has joined


def environment() -> World:
    """The world torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE), before
    joining it."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
    values = {n: os.environ.get(n) for n in names}
    if values["WORLD_SIZE"] is None:
        return World()
    try:
        rank, size, local, local_size = (int(values[n]) if values[n] is not None else default
                                         for n, default in zip(names, (0, 1, 0, 0)))
    except ValueError:
        raise ConfigError(f"torchrun environment: {', '.join(names)} must be ints, got {values}") from None
    if not (size >= 1 and 0 <= rank < size and local >= 0):
        raise ConfigError(f"torchrun environment: expected WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE, got {values}")
    return World(rank, size, local, local_size=local_size or size)


def current() -> World:
    """The world this process has joined with ``setup`` (one process until then)."""
    return _world or World()


def is_main() -> bool:
    """Whether this process writes files and prints results (rank 0, or the only process)."""
    return current().main


def setup(device: str = "auto") -> tuple[World, torch.device]:
    """Join torchrun's process group (once per process) and return (world, this process's device). One process:
    (World(), resolve_device(device)), nothing joined."""
    global _world
    env = environment()
    if not env.active:
        return World(), resolve_device(device)
    dev = _device_for(device, env)
    if _world is None:
        import torch.distributed as dist
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)   # NCCL and all_gather_object use the current device
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=TIMEOUT)
            atexit.register(_leave)
        _world = World(env.rank, env.size, env.local_rank, backend, env.local_size)
    return _world, dev


def _leave():
    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()


def _device_for(name: str, world: World) -> torch.device:
    """cuda:LOCAL_RANK for "auto" (when CUDA is there) and "cuda"; "cpu" as is. Naming another GPU is an error: two
    processes on one GPU are refused by NCCL, and torchrun already gives each process its own."""
    dev = resolve_device(name)
    if dev.type != "cuda":
        return dev
    if dev.index is not None and dev.index != world.local_rank:
        raise ConfigError(f"device={name!r}: under torchrun each process trains on cuda:LOCAL_RANK (this one "
                          f"cuda:{world.local_rank}); pass --device cuda or auto")
    if world.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"torchrun: LOCAL_RANK {world.local_rank} but only {torch.cuda.device_count()} CUDA "
                          f"device(s) here; expected --nproc-per-node at most {torch.cuda.device_count()}")
    return torch.device("cuda", world.local_rank)


def check_batch(batch_size: int, world: World, what: str = "TrainConfig.batch_size"):
    """The global batch must split evenly: every rank's part is one size, so DDP's average is the global mean."""
    if batch_size % world.size:
        raise ConfigError(f"{what}: {batch_size} does not split evenly over the {world.size} training processes "
                          f"(WORLD_SIZE); expected a multiple of {world.size}")


def shard(batch: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's contiguous part of a global batch of example indices."""
    if not world.active:
        return batch
    per = len(batch) // world.size
    return batch[world.rank * per:(world.rank + 1) * per]


def stream_seed(seed: int, rank: int) -> int:
    """A 63-bit seed for rank ``rank``'s random stream, from the run's seed."""
    return int.from_bytes(hashlib.sha256(f"tprune/{seed}/rank{rank}".encode()).digest()[:8], "little") >> 1


def seed_ranks(seed: int, world: World):
    """Give every rank its own random stream (augmentation, drop path): the model was built from ``seed`` on every
    rank alike before this."""
    if world.active:
        torch.manual_seed(stream_seed(seed, world.rank))


def rank_options(method: str, options: dict, world: World) -> dict:
    """Pruning options for this rank: a method that draws at random (``seed`` among its options) draws from
    another seed on ranks 1.. (rank 0 keeps the run's own, which validation and evaluation use)."""
    from ..rules import OPTIONS
    if not world.active or world.main or "seed" not in OPTIONS.get(method, ()):
        return dict(options)
    return dict(options, seed=stream_seed(int(options.get("seed", 0)), world.rank) % 2**31)


def wrap(model: torch.nn.Module, device: torch.device, world: World) -> torch.nn.Module:
    """The DistributedDataParallel wrapper to run training forwards through (the model itself when alone).
    No buffer broadcast: a ViT has no running statistics, and the pruning forward counter is per rank."""
    if not world.active:
        return model
    import warnings

    from torch.nn.parallel import DistributedDataParallel
    with warnings.catch_warnings():
        # torch 2.14 deprecates broadcast_buffers in favour of forward_sync_buffers, which would still copy rank 0's
        # buffers at construction: the per-rank forward counters restored from state.pt must stay as they are
        warnings.filterwarnings("ignore", message=".*broadcast_buffers", category=FutureWarning)
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       broadcast_buffers=False)


def barrier(world: World | None = None):
    world = world or current()
    if world.active:
        import torch.distributed as dist
        dist.barrier()


@contextlib.contextmanager
def main_first(world: World | None = None):
    """Rank 0 runs the block first (it fills caches and writes files), the others after it, finding them."""
    world = world or current()
    if not world.main:
        barrier(world)
    try:
        yield
    finally:
        if world.main:
            barrier(world)


def all_sum(values: tuple, world: World) -> tuple:
    """Element-wise sum of a tuple of numbers over the ranks (the tuple itself when alone); ints stay ints."""
    if not world.active:
        return values
    import torch.distributed as dist
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device(world))
    dist.all_reduce(t)
    return tuple(int(round(s)) if isinstance(v, int) else s for v, s in zip(values, t.tolist()))


def gather(obj, world: World) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` when alone."""
    if not world.active:
        return [obj]
    import torch.distributed as dist
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def _comm_device(world: World) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if world.backend == "nccl" else torch.device("cpu")


def record(batch_size: int, world: World) -> dict:
    """What train.json and log.json say about the processes ({} for one process: single-process files unchanged)."""
    if not world.active:
        return {}
    return {"distributed": {"world_size": world.size, "backend": world.backend, "global_batch": batch_size,
                            "per_process_batch": batch_size // world.size}}


def announce(tag: str, batch_size: int, device: torch.device, world: World):
    """The console line that states the effective (global) batch (rank 0)."""
    if world.active and world.main:
        print(f"[{tag}] data parallel: {world.size} processes ({world.backend}, {device.type}), "
              f"{batch_size // world.size} clips each per step = global batch {batch_size} "
              f"(TrainConfig.batch_size)", file=sys.stderr)
