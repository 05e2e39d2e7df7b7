"""Peak resident memory of a streaming epoch over a synthetic set ten times a memory cap (issue 30).

    python bench/stream_memory.py                        # cap 64 MiB: >= 640 MiB of float32 features, batches of 16
    python bench/stream_memory.py --cap-mib 32 --json    # the numbers as JSON too

Each phase runs in its own child process, which measures how far its resident memory rises above where it stood
once torch was imported (the peak, VmHWM, after resetting it through /proc/self/clear_refs, minus VmRSS before):

1. writing the shards (``streaming.shard_split``) of a synthetic split of 10 s clips (1024 frames x 128 mel);
2. one streaming epoch: the epoch's permutation in global batches, each batch's rows read from the shards,
   normalized and cropped as ``train.Supervised.step`` does (the data path of a training epoch, without a model);
3. for contrast, the in-memory path: ``cache.load_features`` of the same split, then the same epoch.

The epochs' checksums must agree (the same numbers either way). The CPU model (lscpu) heads the output. Shards and
caches go to a temporary $TPRUNE_CACHE, removed at the end unless --cache is given.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEL = 128


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak():
    """Linux: writing 5 to clear_refs resets the peak resident size (VmHWM) to the current one."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def epoch(x, batch: int, frames: int) -> float:
    """The data path of one training epoch over ``x``; returns a checksum of every batch it built."""
    import torch

    from tprune_core.evaluation import crop_frames
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    total = 0.0
    for b in range(len(perm) // batch):
        xb = crop_frames(x[perm[b * batch:(b + 1) * batch]].float(), frames, random=False)
        total += float(xb.sum())   # no float64 copy of the batch
    return total


def phase(args) -> dict:
    """One measurement, in this (child) process."""
    # every module imported before the baseline: their memory is not the data's
    import torch  # noqa: F401

    from tprune_core import cache, evaluation, streaming  # noqa: F401
    from tprune_core.datasets import load_dataset
    protocol = dict(per_class=args.per_class, seconds=args.seconds)
    base = status_kib("VmRSS")
    reset_peak()
    t = time.perf_counter()
    if args.phase == "write":
        fs = streaming.shard_split(load_dataset("synthetic", None, "train", **protocol), args.frames, progress=False)
        out = {"clips": len(fs.x), "shards": len(fs.x.counts)}
    else:
        load = streaming.stream_features if args.phase == "stream" else cache.load_features
        fs = load("synthetic", "train", frames=args.frames, progress=False, **protocol)
        out = {"checksum": epoch(fs.x, args.batch, args.frames), "clips": len(fs.x)}
    out.update(seconds=round(time.perf_counter() - t, 1), base_mib=round(base / 1024, 1),
               growth_mib=round((status_kib("VmHWM") - base) / 1024, 1))
    return out


def run_phase(name: str, args, env) -> dict:
    cmd = [sys.executable, __file__, "--phase", name, "--per-class", str(args.per_class), "--seconds",
           str(args.seconds), "--frames", str(args.frames), "--batch", str(args.batch)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"phase {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        name = "unknown CPU"
    return f"{name}, {os.cpu_count()} logical CPUs"


def sized(args) -> int:
    """Sources per class for a training split of at least 10x the cap (float32 features)."""
    from tprune_core.datasets import load_dataset
    need = math.ceil(10 * args.cap_mib * 2**20 / (args.frames * MEL * 4))
    per_class = max(3, math.ceil(need / 7))
    while len(load_dataset("synthetic", None, "train", per_class=per_class, seconds=args.seconds)) < need:
        per_class += 1
    return per_class


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cap-mib", type=float, default=64.0, help="the memory cap; the set is 10x it (default 64)")
    p.add_argument("--seconds", type=float, default=10.0, help="synthetic clip length (default 10, as AudioSet)")
    p.add_argument("--frames", type=int, default=1024, help="frames per clip (default 1024)")
    p.add_argument("--batch", type=int, default=16, help="clips per batch (default 16: a per-process batch)")
    p.add_argument("--cache", default=None, help="keep shards and caches here (default: a temporary folder)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--phase", choices=["write", "stream", "memory"], help=argparse.SUPPRESS)
    p.add_argument("--per-class", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase:
        print(json.dumps(phase(args)))
        return 0
    args.per_class = sized(args)
    cache = Path(args.cache or tempfile.mkdtemp(prefix="tprune-stream-"))
    env = dict(os.environ, TPRUNE_CACHE=str(cache), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    try:
        result = {name: run_phase(name, args, env) for name in ("write", "stream", "memory")}
    finally:
        if args.cache is None:
            shutil.rmtree(cache, ignore_errors=True)
    n = result["write"]["clips"]
    set_mib = n * args.frames * MEL * 4 / 2**20
    result.update(cpu=cpu_model(), cap_mib=args.cap_mib, set_mib=round(set_mib, 1), batch=args.batch,
                  same_numbers=result["stream"]["checksum"] == result["memory"]["checksum"])
    print(f"CPU: {result['cpu']}")
    print(f"set: {n} synthetic clips x {args.frames} frames x {MEL} mel = {set_mib:.0f} MiB as float32 "
          f"({set_mib / args.cap_mib:.1f}x the {args.cap_mib:g} MiB cap), {result['write']['shards']} shard file(s)")
    for name, what in (("write", "writing the shards"), ("stream", f"streaming epoch, batch {args.batch}"),
                       ("memory", f"in-memory epoch, batch {args.batch}")):
        r = result[name]
        print(f"{what:32s} peak resident +{r['growth_mib']:7.1f} MiB over {r['base_mib']:.0f} MiB  ({r['seconds']} s)")
    verdict = "under" if result["stream"]["growth_mib"] < args.cap_mib else "OVER"
    print(f"streaming epoch: {verdict} the cap; same numbers as in memory: {result['same_numbers']}")
    if args.json:
        print(json.dumps(result, indent=1))
    return 0 if verdict == "under" and result["same_numbers"] else 1


if __name__ == "__main__":
    sys.exit(main())
