"""Where the time of a batch-1 pruned forward goes on the CPU, operator by operator, next to the unpruned forward.

    python bench/cpu_profile.py                       # ViT-B AudioMAE, 256 tokens, batch 1, fp32, topk 0.5, 2 threads
    python bench/cpu_profile.py --family ast --keep-rate 0.7 --out results/bench/cpu_profile_ast.txt

Wall time of both models with timm's default linear layers (MKL) and with oneDNN's (``models.onednn_linear``).
For each operator: milliseconds per forward (torch profiler, self time) in the unpruned and the pruned model and the
ratio between them, to compare with the MAC ratio. Then the four linear layers of one block timed alone at each
stage's token count, with the same weights every call (hot in cache) and with one copy per block as in a real
forward (the weights stream from memory): if the cost per token rises as tokens fall in both columns alike, the
small matrix products themselves are slow, not the memory traffic; and the same with oneDNN and packed weights.
Then the ceiling those layers set: the linear layers' own efficiency (their time per block at each stage's token
count, summed over the blocks of each model, against the ratio of tokens), the machine's memory bandwidth (reading a
large tensor) and the time one block's weights take to stream at that bandwidth, the floor of a block whatever its
token count. Last, the same two models with bf16 weights. The CPU model heads the file; the numbers also go to a
JSON file beside it (``--out`` with ``.json``), which the "Counting the work" chapter reads.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tprune_core.macs import model_macs  # noqa: E402
from tprune_core.models import SIZES, create_model, onednn_available, onednn_linear  # noqa: E402
from tprune_core.pruning import apply_pruning, last_forward  # noqa: E402
from tprune_core.runtime import processor_name  # noqa: E402


def interleaved_ms(fns, repeats, warmup=3):
    """Median ms of each function, timed in turn every round so that slow spells of the machine hit all alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            t.append(1e3 * (time.perf_counter() - t0))
    return [statistics.median(t) for t in times]


def median_ms(fn, repeats):
    return interleaved_ms([fn], repeats)[0]


def read_bandwidth_gbs(mb: int = 1024, repeats: int = 10) -> float:
    """GB/s of reading a tensor far larger than any cache (a sum: one pass over memory, little arithmetic)."""
    big = torch.ones(mb * 2 ** 20 // 4)
    ms = median_ms(lambda: big.sum(), repeats)
    return big.numel() * 4 / 1e9 / (ms / 1e3)


def linear_ceiling(ms_per_block: dict, full_counts, pruned_counts) -> float:
    """The efficiency the linear layers alone allow: (time ratio) / (token ratio) over the blocks of both models,
    from each stage's measured time per block (linear layers' MACs are proportional to tokens)."""
    t_full = sum(ms_per_block[n] for n in full_counts)
    t_pruned = sum(ms_per_block[n] for n in pruned_counts)
    return (t_full / t_pruned) / (sum(full_counts) / sum(pruned_counts))


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
    models = {"default": (full, pruned)}
    if onednn_available():
        models["onednn"] = tuple(onednn_linear(copy.deepcopy(m)) for m in (full, pruned))
    x = torch.randn(1, a.frames, 128)
    lines = [f"CPU: {processor_name()}, {os.cpu_count()} cores",
             f"{a.family}-{a.size}, {full.patch_embed.num_patches} patch tokens, batch 1, fp32, topk keep rate "
             f"{a.keep_rate}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY "
             f"{os.environ.get('OMP_WAIT_POLICY', 'default')}, torch {torch.__version__}", ""]
    # Weights for the linear-layer timings, made outside inference_mode so that oneDNN can keep them packed.
    dim = SIZES[a.size][0]
    shapes = [(dim, 3 * dim), (dim, dim), (dim, 4 * dim), (4 * dim, dim)]
    hot = [(torch.randn(o, i) * 0.02, torch.zeros(o)) for i, o in shapes]
    cold = [[(torch.randn(o, i) * 0.02, torch.zeros(o)) for i, o in shapes] for _ in range(12)]
    packed = []
    if onednn_available():
        for blk in cold:
            packed.append([])
            for (i, o), (w, b) in zip(shapes, blk):
                lin = onednn_linear(torch.nn.Linear(i, o))
                with torch.no_grad():
                    lin.weight.copy_(w)
                    lin.bias.copy_(b)
                packed[-1].append((lin, w, b))
    with torch.inference_mode():
        for m in (*models["default"], *models.get("onednn", ())):
            m(x)   # token counts for the MACs; oneDNN packs its weights
        mac_ratio = float(model_macs(full).mean() / model_macs(pruned).mean())
        counts = last_forward(pruned).tokens[0, :, 0].tolist()
        summary = {"cpu_name": processor_name(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                   "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"), "torch": torch.__version__,
                   "family": a.family, "size": a.size, "tokens": full.patch_embed.num_patches,
                   "keep_rate": a.keep_rate, "mac_ratio": mac_ratio, "wall": {}}
        for name, (f, pr) in models.items():
            ms_full, ms_pruned = interleaved_ms([lambda f=f: f(x), lambda pr=pr: pr(x)], 15)
            summary["wall"][name] = {"ms_full": ms_full, "ms_pruned": ms_pruned,
                                     "efficiency": ms_full / ms_pruned / mac_ratio}
            lines.append(f"wall, {name} linear layers: unpruned {ms_full:.1f} ms, pruned {ms_pruned:.1f} ms, speedup "
                         f"{ms_full / ms_pruned:.3f}, MAC ratio {mac_ratio:.3f}, efficiency "
                         f"{ms_full / ms_pruned / mac_ratio:.3f}")
        lines += [f"tokens entering each block: {counts}", ""]
        for name, (f, pr) in models.items():
            t_full, t_pruned = op_table(f, x), op_table(pr, x)
            lines.append(f"{'operator (self time), ' + name + ' linear':44s} {'unpruned':>9s} {'pruned':>9s} "
                         f"{'ratio':>7s}   ms per forward")
            for key in sorted(t_full.keys() | t_pruned.keys(),
                              key=lambda k: -t_full.get(k, 0) - t_pruned.get(k, 0))[:10]:
                fm, pm = t_full.get(key, 0.0), t_pruned.get(key, 0.0)
                lines.append(f"{key[:44]:44s} {fm:9.2f} {pm:9.2f} {fm / pm if pm else float('nan'):7.2f}")
            lines += [f"{'all operators':44s} {sum(t_full.values()):9.2f} {sum(t_pruned.values()):9.2f} "
                      f"{sum(t_full.values()) / sum(t_pruned.values()):7.2f}", ""]

        # The block's four linear layers alone at each stage's token count.
        weight_mb = sum(w.numel() for w, _ in hot) * 4 / 2 ** 20
        lines += [f"one block's four linear layers (qkv, proj, fc1, fc2; {weight_mb:.0f} MB of fp32 weights), "
                  "ms per block (12 weight copies: streamed from memory as in a forward) and us per token:",
                  f"{'tokens':>7s} {'MKL hot':>9s} {'MKL 12 copies':>14s} {'per token':>10s} "
                  f"{'oneDNN 12 copies':>17s} {'per token':>10s}"]
        per_block = {}
        for n in sorted(set(counts), reverse=True):
            xs = [torch.randn(n, i) for i, _ in shapes]
            h = median_ms(lambda: [F.linear(xi, w, b) for xi, (w, b) in zip(xs, hot)], 30)
            c = median_ms(lambda: [[F.linear(xi, w, b) for xi, (w, b) in zip(xs, blk)] for blk in cold], 10) / 12
            row = f"{n:7d} {h:9.2f} {c:14.2f} {1e3 * c / n:7.1f} us"
            if packed:
                d = median_ms(lambda: [[lin(xi) for xi, (lin, _, _) in zip(xs, blk)] for blk in packed], 10) / 12
                row += f" {d:17.2f} {1e3 * d / n:7.1f} us"
            per_block[n] = d if packed else c
            lines.append(row)

        full_counts = [counts[0]] * len(counts)
        ceiling = linear_ceiling(per_block, full_counts, counts)
        gbs = read_bandwidth_gbs()
        floor_ms = weight_mb * 2 ** 20 / 1e9 / gbs * 1e3
        smallest = min(per_block)
        summary.update(tokens_per_block=counts, linear_ms_per_block=per_block, linear_ceiling=ceiling,
                       read_gbs=gbs, weight_mb_per_block=weight_mb, weight_stream_ms_per_block=floor_ms)
        lines += ["", f"ceiling from the linear layers ({'oneDNN' if packed else 'MKL'}, 12 copies): efficiency "
                  f"{ceiling:.3f} (their time per block, summed over both models' blocks, against the token ratio "
                  f"{sum(full_counts) / sum(counts):.3f})",
                  f"memory read bandwidth {gbs:.1f} GB/s: one block's {weight_mb:.0f} MB of weights stream in "
                  f"{floor_ms:.2f} ms, {100 * floor_ms / per_block[smallest]:.0f}% of the block's time at "
                  f"{smallest} tokens and {100 * floor_ms / per_block[counts[0]]:.0f}% at {counts[0]} tokens"]

        # Half the bytes per weight: the same two models stored in bf16 (not autocast, which re-reads fp32 weights).
        full16, pruned16, x16 = full.to(torch.bfloat16), pruned.to(torch.bfloat16), x.to(torch.bfloat16)
        ms_full16, ms_pruned16 = interleaved_ms([lambda: full16(x16), lambda: pruned16(x16)], 15)
        summary["bf16_weights"] = {"ms_full": ms_full16, "ms_pruned": ms_pruned16,
                                   "efficiency": ms_full16 / ms_pruned16 / mac_ratio}
        lines += ["", f"bf16 weights: unpruned {ms_full16:.1f} ms, pruned {ms_pruned16:.1f} ms, speedup "
                  f"{ms_full16 / ms_pruned16:.3f}, efficiency {ms_full16 / ms_pruned16 / mac_ratio:.3f}"]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    Path(a.out).with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")   # what the chapter reads


if __name__ == "__main__":
    main()
