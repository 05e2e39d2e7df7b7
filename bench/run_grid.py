"""Run the timing grid of issue 8 and write one CSV row per (model, input, pruning config), plus a JSON sidecar.

    nice -n 10 .venv/bin/python bench/run_grid.py --quick          # a few minutes: ViT-B, 256 tokens, batch 1, topk
    nice -n 10 .venv/bin/python bench/run_grid.py                  # the CPU grid (results/bench/cpu_grid.csv)
    .venv/bin/python bench/run_grid.py --device cuda               # the GPU grid (results/bench/gpu_grid.csv)

Rows already in the CSV with identical parameters are skipped, so an interrupted run resumes where it stopped.
Each group (one model size, input length and batch) times the unpruned model once, interleaved with all its
pruned variants; see ``tprune_core.bench.bench_group``. On the CPU every group runs with oneDNN linear layers (the
``linear`` column; ``tprune bench``'s default), and the two 256-token batch-1 top-K groups once more with timm's
default linear layers, to show what the backend changes. Rows written before the ``linear`` column existed count
as ``default``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


# Before torch loads libgomp: waiting OpenMP threads sleep instead of spinning on cores other processes need.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import pandas as pd  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from tprune_core.bench import _device_name, bench_group, flat_row, resolve_linear  # noqa: E402

KEY = ["family", "size", "frames", "method", "keep_rate", "batch", "device", "threads", "dtype", "drop_loc", "mel",
       "num_classes", "seed", "omp_wait_policy", "linear"]
FRAMES = {64: 128, 256: 512, 512: 1024}          # patch tokens -> fbank frames (mel 128)
RATES = (0.7, 0.5)
ALL = [(m, k) for m in ("topk", "tome", "evit_fuse") for k in RATES]
TOPK = [("topk", k) for k in RATES]


def grid(device: str, quick: bool, families) -> list[dict]:
    """Groups in priority order (the targets first): family, tokens, batch, configs, timing budget."""
    g = []
    if device == "cpu":
        if quick:
            return [dict(family=f, tokens=256, batch=1, configs=TOPK, min_seconds=10, repeats=None)
                    for f in families]
        for f in families:   # the targets: 256 tokens, topk, batch 1 and 32 (with tome / evit_fuse at batch 1)
            g.append(dict(family=f, tokens=256, batch=1, configs=ALL, min_seconds=40, repeats=None))
        for f in families:   # the same with timm's default (MKL) linear layers: what oneDNN changes
            g.append(dict(family=f, tokens=256, batch=1, configs=TOPK, min_seconds=30, repeats=None,
                          linear="default"))
        for f in families:   # batch 32: a forward takes tens of seconds here, so 3 rounds, one kr-1.0 model
            g.append(dict(family=f, tokens=256, batch=32, configs=TOPK, min_seconds=0, repeats=3, warmup=1))
        for t in (64, 512):
            for f in families:
                g.append(dict(family=f, tokens=t, batch=1, configs=ALL, min_seconds=20 if t == 64 else 40,
                              repeats=None))
        return g
    batches = (1,) if quick else (1, 64)
    for dtype in (("fp32",) if quick else ("fp32", "bf16")):
        for b in batches:
            for t in (256,) if quick else (64, 256, 512):
                for f in families:
                    if dtype == "bf16" and b == 1:
                        continue   # batch 1 on a GPU is launch-bound: bf16 says nothing new there
                    g.append(dict(family=f, tokens=t, batch=b, configs=ALL, min_seconds=2, repeats=None,
                                  dtype=dtype, warmup=10))
    return g


def done_keys(path: Path) -> set:
    if not path.exists():
        return set()
    df = pd.read_csv(path)
    if "linear" not in df:
        df["linear"] = "default"
    return {tuple(str(v) for v in row) for row in df[KEY].itertuples(index=False)}


def row_key(**values) -> tuple:
    values["keep_rate"] = float(values["keep_rate"])
    return tuple(str(values[k]) for k in KEY)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="a small grid (minutes), e.g. to check the setup")
    p.add_argument("--families", nargs="+", default=["audiomae", "ast"], choices=["audiomae", "ast"])
    p.add_argument("--size", default="base")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: 2 on cpu, torch's on cuda)")
    p.add_argument("--out", default=None, help="CSV path (default: $OUT/<device>_grid.csv if $OUT is set, "
                                              "else results/bench/<cpu|gpu>_grid.csv)")
    args = p.parse_args(argv)

    name = f"{'cpu' if args.device == 'cpu' else 'gpu'}_grid{'_quick' if args.quick else ''}.csv"
    out = Path(args.out) if args.out else (Path(os.environ["OUT"]) if os.environ.get("OUT") else
                                           REPO / "results" / "bench") / name
    out.parent.mkdir(parents=True, exist_ok=True)
    threads = args.threads if args.threads is not None else (2 if args.device == "cpu" else None)
    import torch
    thread_col = threads if threads is not None else torch.get_num_threads()
    done = done_keys(out)
    groups = grid(args.device, args.quick, args.families)
    t0, added = time.time(), 0
    for grp in tqdm(groups, desc="groups"):
        frames = FRAMES[grp["tokens"]]
        dtype = grp.get("dtype", "fp32")
        linear = resolve_linear(grp.get("linear", "auto"), args.device, dtype)
        todo = [(m, k) for m, k in grp["configs"]
                if row_key(family=grp["family"], size=args.size, frames=frames, method=m, keep_rate=k,
                           batch=grp["batch"], device=args.device, threads=thread_col, dtype=dtype, drop_loc="3 6 9",
                           mel=128, num_classes=527, seed=0, omp_wait_policy=os.environ["OMP_WAIT_POLICY"],
                           linear=linear)
                not in done]
        if not todo:
            continue
        results = bench_group(grp["family"], args.size, frames, todo, batch=grp["batch"], device=args.device,
                              threads=threads, repeats=grp["repeats"], min_seconds=grp["min_seconds"],
                              warmup=grp.get("warmup"), dtype=dtype, overhead=["topk"], linear=linear,
                              progress=True)
        rows = pd.DataFrame([flat_row(r) for r in results])
        if out.exists():
            rows = pd.concat([pd.read_csv(out), rows], ignore_index=True)
        rows.to_csv(out, index=False)   # after every group: an interrupted run keeps what it measured
        added += len(results)
        for r in results:
            ovh = r["overhead_at_kr1"]
            kr1 = "n/a" if ovh != ovh else f"{100 * ovh:+.1f}%"   # NaN: no keep-rate-1.0 model for this method
            tqdm.write(f"{r['family']:8s} {r['tokens']:4d} tok b{r['batch']:<3d} {r['linear']:6s} {r['method']:9s} "
                       f"{r['keep_rate']:.1f} "
                       f"full {r['ms_full']:9.1f} ms  pruned {r['ms_pruned']:9.1f} ms  speedup {r['speedup']:.3f}  "
                       f"MACs {r['mac_ratio']:.3f}  eff {r['efficiency']:.3f}  kr1 {kr1}  "
                       f"load {r['load_before']}->{r['load_after']}")
    sidecar = out.with_suffix(".json")
    old = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    runs = old.get("runs", []) + [{"finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                                   "seconds": round(time.time() - t0, 1), "rows_added": added,
                                   "load_avg_end": [round(v, 2) for v in os.getloadavg()]}]
    import timm
    meta = {"csv": out.name, "device": args.device, "device_name": _device_name(torch.device(args.device)),
            "cpus": os.cpu_count(), "threads": thread_col, "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
            "torch": torch.__version__, "timm": timm.__version__, "size": args.size, "quick": args.quick,
            "families": args.families, "key_columns": KEY,
            "grid": [{**g, "frames": FRAMES[g["tokens"]]} for g in groups],
            "runs": runs,
            "note": "ms_* are medians over interleaved rounds (ms per batch); *_q25/*_q75 the quartiles; speedup = "
                    "ms_full / ms_pruned; mac_ratio from tprune_core.macs; efficiency = speedup / mac_ratio; "
                    "efficiency_min the same from each model's fastest round; cpu_efficiency from process CPU time; "
                    "overhead_at_kr1 = patched at keep rate 1.0 (timed for topk only) vs stock timm, overhead_paired "
                    "the median of per-round ratios; linear = the linear-layer backend of every model of the row "
                    "(onednn: tprune_core.models.onednn_linear; default: timm's F.linear); "
                    "load_* = 1-min load average. Other processes share the machine: "
                    "compare ratios within a group (same family, tokens, batch), not absolute ms across groups."}
    sidecar.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {out} ({len(pd.read_csv(out))} rows) and {sidecar.name}")


if __name__ == "__main__":
    main()
