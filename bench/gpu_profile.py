"""Where the time of a batch-1 pruned forward goes on a GPU: kernel launches and GPU busy time vs wall clock.

    python bench/gpu_profile.py                   # ViT-B AudioMAE and AST, 256 tokens, batch 1, topk 0.5 vs unpruned

For each model: median wall time per forward (CUDA-synchronised), GPU kernel time per forward (torch profiler),
kernels launched per forward, and the slowest CPU-side operators of the pruned forward. A forward whose GPU time is
far below its wall time is launch-bound: the host, not the GPU, sets the pace.
"""
from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tprune_core.models import create_model  # noqa: E402
from tprune_core.pruning import apply_pruning  # noqa: E402


def wall_ms(model, x, repeats=50):
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        model(x)
        torch.cuda.synchronize()
        times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def kernels(model, x, repeats=10):
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            model(x)
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_ms = sum(e.time_range.elapsed_us() for e in events) / 1e3 / repeats
    return gpu_ms, len(events) / repeats, prof


def main():
    torch.manual_seed(0)
    print(torch.__version__, torch.cuda.get_device_name())
    for family in ("audiomae", "ast"):
        full = create_model(family, "base", 512, 527).eval().cuda()
        pruned = apply_pruning(copy.deepcopy(full), "topk", 0.5)
        x = torch.randn(1, 512, 128, device="cuda")
        with torch.inference_mode():
            for m in (full, pruned):
                wall_ms(m, x, 20)                                  # warm-up
            rows = {}
            for name, m in (("unpruned", full), ("topk 0.5", pruned)):
                gpu, n, prof = kernels(m, x)
                rows[name] = (wall_ms(m, x), gpu, n)
            for name, (wall, gpu, n) in rows.items():
                print(f"{family:8s} {name:9s} wall {wall:6.2f} ms  GPU busy {gpu:6.2f} ms ({100 * gpu / wall:4.0f}%)  "
                      f"kernels/forward {n:5.0f}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
