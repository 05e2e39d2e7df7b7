"""Where the time of a batch-1 pruned forward goes on the CPU, operator by operator, next to the unpruned forward.

    python bench/cpu_profile.py                       # ViT-B AudioMAE, 256 tokens, batch 1, fp32, topk 0.5, 2 threads
    python bench/cpu_profile.py --family ast --keep-rate 0.7 --out results/bench/cpu_profile_ast.txt

For each operator: milliseconds per forward (torch profiler, self time) in the unpruned and the pruned model and the
ratio between them, to compare with the MAC ratio. Then the four linear layers of one block timed alone at each
stage's token count, with the same weights every call (hot in cache) and with one copy per block as in a real
forward (the weights stream from memory): if the cost per token rises as tokens fall in both columns alike, the
small matrix products themselves are slow, not the memory traffic. Last, the same two models with bf16 weights.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tprune_core.macs import model_macs  # noqa: E402
from tprune_core.models import SIZES, create_model  # noqa: E402
from tprune_core.pruning import apply_pruning  # noqa: E402


def median_ms(fn, repeats):
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def op_table(model, x, repeats=10) -> dict:
    """Self CPU milliseconds per forward of every operator."""
    for _ in range(3):
        model(x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            model(x)
    return {e.key: e.self_cpu_time_total / 1e3 / repeats for e in prof.key_averages()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="audiomae")
    ap.add_argument("--size", default="base")
    ap.add_argument("--frames", type=int, default=512)
    ap.add_argument("--keep-rate", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="results/bench/cpu_profile.txt")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    full = create_model(a.family, a.size, a.frames, 527).eval()
    pruned = apply_pruning(copy.deepcopy(full), "topk", a.keep_rate)
    x = torch.randn(1, a.frames, 128)
    lines = [f"{a.family}-{a.size}, {full.patch_embed.num_patches} patch tokens, batch 1, fp32, topk keep rate "
             f"{a.keep_rate}, {torch.get_num_threads()} threads, torch {torch.__version__}", ""]
    with torch.inference_mode():
        ms_full, ms_pruned = median_ms(lambda: full(x), 15), median_ms(lambda: pruned(x), 15)
        mac_ratio = float(model_macs(full).mean() / model_macs(pruned).mean())
        counts = [c[0] for c in pruned._tprune.counts]
        lines += [f"wall: unpruned {ms_full:.1f} ms, pruned {ms_pruned:.1f} ms, speedup {ms_full / ms_pruned:.3f}, "
                  f"MAC ratio {mac_ratio:.3f}, efficiency {ms_full / ms_pruned / mac_ratio:.3f}",
                  f"tokens entering each block: {counts}", ""]
        t_full, t_pruned = op_table(full, x), op_table(pruned, x)
        lines.append(f"{'operator (self time)':44s} {'unpruned':>9s} {'pruned':>9s} {'ratio':>7s}   ms per forward")
        for key in sorted(t_full.keys() | t_pruned.keys(), key=lambda k: -t_full.get(k, 0) - t_pruned.get(k, 0))[:14]:
            f, p = t_full.get(key, 0.0), t_pruned.get(key, 0.0)
            lines.append(f"{key[:44]:44s} {f:9.2f} {p:9.2f} {f / p if p else float('nan'):7.2f}")
        lines.append(f"{'all operators':44s} {sum(t_full.values()):9.2f} {sum(t_pruned.values()):9.2f} "
                     f"{sum(t_full.values()) / sum(t_pruned.values()):7.2f}")

        # The block's four linear layers alone at each stage's token count.
        dim = SIZES[a.size][0]
        shapes = [(dim, 3 * dim), (dim, dim), (dim, 4 * dim), (4 * dim, dim)]
        hot = [(torch.randn(o, i) * 0.02, torch.zeros(o)) for i, o in shapes]
        cold = [[(torch.randn(o, i) * 0.02, torch.zeros(o)) for i, o in shapes] for _ in range(12)]
        weight_mb = sum(w.numel() for w, _ in hot) * 4 / 2 ** 20
        lines += ["", f"one block's four linear layers (qkv, proj, fc1, fc2; {weight_mb:.0f} MB of fp32 weights), "
                  "ms per block:", f"{'tokens':>7s} {'hot weights':>12s} {'12 weight copies':>17s} {'per token (cold)':>17s}"]
        for n in sorted(set(counts), reverse=True):
            xs = [torch.randn(n, i) for i, _ in shapes]
            h = median_ms(lambda: [F.linear(xi, w, b) for xi, (w, b) in zip(xs, hot)], 30)
            c = median_ms(lambda: [[F.linear(xi, w, b) for xi, (w, b) in zip(xs, blk)] for blk in cold], 10) / 12
            lines.append(f"{n:7d} {h:12.2f} {c:17.2f} {1e3 * c / n:14.1f} us")

        # Half the bytes per weight: the same two models stored in bf16 (not autocast, which re-reads fp32 weights).
        full16, pruned16, x16 = full.to(torch.bfloat16), pruned.to(torch.bfloat16), x.to(torch.bfloat16)
        ms_full16, ms_pruned16 = median_ms(lambda: full16(x16), 15), median_ms(lambda: pruned16(x16), 15)
        lines += ["", f"bf16 weights: unpruned {ms_full16:.1f} ms, pruned {ms_pruned16:.1f} ms, speedup "
                  f"{ms_full16 / ms_pruned16:.3f}, efficiency {ms_full16 / ms_pruned16 / mac_ratio:.3f}"]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
