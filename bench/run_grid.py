"""Run the timing grid of issue 8 and write one CSV row per (model, input, pruning config), plus a JSON sidecar.

    nice -n 10 .venv/bin/python bench/run_grid.py --quick          # a few minutes: ViT-B, 256 tokens, batch 1, topk
    nice -n 10 .venv/bin/python bench/run_grid.py                  # the CPU grid (results/bench/cpu_grid.csv)
    .venv/bin/python bench/run_grid.py --device cuda               # the GPU grid (results/bench/gpu_grid.csv)
    .venv/bin/python bench/run_grid.py --device cuda --grid static --compile none default reduce-overhead
                                                                   # bench/gpu_session.sh: the six static methods

Rows already in the CSV with identical parameters are skipped, so an interrupted run resumes where it stopped.
Each group (one model size, input length and batch) times the unpruned model once, interleaved with all its
pruned variants; see ``tprune_core.bench.bench_group``. On the CPU every group runs with oneDNN linear layers (the
``linear`` column; ``tprune bench``'s default), and the two 256-token batch-1 top-K groups once more with timm's
default linear layers, to show what the backend changes. Rows written before the ``linear`` column existed count
as ``default``.

``--compile`` lists ``torch.compile`` modes (default: none and default): the grid runs once per mode, eager groups
first, every model of a group compiled the same way (``tprune_core.bench``); each model's first call, which
compiles it, is stored apart (``first_call_s_*``). Compiled groups use timm's linear layers, so the groups that
only exist to compare linear backends run eagerly only; ``reduce-overhead`` (CUDA graphs) runs on CUDA only.
Rows written before the ``compile`` column existed count as ``none``. ``--deadline-s`` stops starting groups after
that many seconds (a lent GPU has a time limit; what was measured is written after every group).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tprune_core.rules import BENCH_COMPILE, FIXED_BUDGET, OMP_WAITS, apply_omp_wait  # noqa: E402

if __name__ == "__main__":   # libgomp reads its wait policy once, when torch loads: settle it before that
    _early = argparse.ArgumentParser(add_help=False)
    _early.add_argument("--omp-wait", default=None, choices=OMP_WAITS)
    apply_omp_wait(_early.parse_known_args()[0].omp_wait)
import pandas as pd  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from tprune_core.bench import _cpu_name, _device_name, bench_group, flat_row, resolve_linear  # noqa: E402

KEY = ["family", "size", "frames", "method", "keep_rate", "batch", "device", "device_name", "threads", "dtype",
       "drop_loc", "mel", "num_classes", "seed", "omp_wait_policy", "linear", "compile"]   # one row per machine kind
DEFAULTS = {"linear": "default", "compile": "none"}   # key columns rows of older runs lack: what those rows ran
FRAMES = {64: 128, 256: 512, 512: 1024}          # patch tokens -> fbank frames (mel 128)
RATES = (0.7, 0.5)
ALL = [(m, k) for m in ("topk", "tome", "evit_fuse") for k in RATES]
TOPK = [("topk", k) for k in RATES]
STATIC = [(m, 0.5) for m in FIXED_BUDGET]          # every method with a static budget (all of them compile)
GRIDS = ("full", "quick", "static", "tokens")


def grid(device: str, name: str, families) -> list[dict]:
    """Groups in priority order (the targets first): family, tokens, batch, configs, timing budget."""
    quick = name == "quick"
    if name == "tokens":   # issue 19's targets: TopK 0.5, batch 1, 64 and 256 tokens (eager and compiled alike)
        return [dict(family=f, tokens=t, batch=1, configs=[("topk", 0.5)], min_seconds=20 if t == 64 else 40,
                     repeats=None) for t in (64, 256) for f in families]
    if name == "static":   # 256 tokens, batch 1, keep rate 0.5: the six static methods
        return [dict(family=f, tokens=256, batch=1, configs=STATIC, min_seconds=2 if device == "cuda" else 20,
                     repeats=None, warmup=10 if device == "cuda" else 2) for f in families]
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
    for column, value in DEFAULTS.items():
        if column not in df:
            df[column] = value
    return {tuple(str(v) for v in row) for row in df[KEY].itertuples(index=False)}


def runs(groups: list, modes, device: str) -> list[tuple[dict, str]]:
    """(group, compile mode) pairs, mode by mode (eager first): what the grid times, in that order."""
    out = []
    for mode in modes:
        if mode == "reduce-overhead" and device != "cuda":
            print("run_grid: skipping compile 'reduce-overhead' (CUDA graphs) on the CPU")
            continue
        out += [(g, mode) for g in groups if mode == "none" or g.get("linear", "auto") == "auto"]
    return out


def row_key(**values) -> tuple:
    values["keep_rate"] = float(values["keep_rate"])
    return tuple(str(values[k]) for k in KEY)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--grid", default="full", choices=GRIDS,
                   help="full: the whole grid; quick: a small one (minutes), e.g. to check the setup; static: "
                        "256 tokens, batch 1, keep rate 0.5, the six static-budget methods; tokens: TopK 0.5, "
                        "batch 1, 64 and 256 tokens (issue 19's targets)")
    p.add_argument("--quick", action="store_true", help="the same as --grid quick")
    p.add_argument("--compile", nargs="+", default=["none", "default"], choices=BENCH_COMPILE,
                   help="torch.compile modes to time, each a run of the grid (default: none default)")
    p.add_argument("--families", nargs="+", default=["audiomae", "ast"], choices=["audiomae", "ast"])
    p.add_argument("--size", default="base")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: 2 on cpu, torch's on cuda)")
    p.add_argument("--omp-wait", default=None, choices=OMP_WAITS,
                   help="OpenMP wait policy (default: $OMP_WAIT_POLICY if set, else active; passive on a machine "
                        "busy with other work); a key column, so each policy has its own rows")
    p.add_argument("--deadline-s", type=float, default=None,
                   help="start no group after this many seconds (groups run whole; each is saved when done)")
    p.add_argument("--out", default=None, help="CSV path (default: $OUT/<device>_grid.csv if $OUT is set, "
                                              "else results/bench/<cpu|gpu>_grid.csv)")
    args = p.parse_args(argv)
    if args.quick:
        args.grid = "quick"
    return args


def todo_configs(args, grp, mode, thread_col, done) -> tuple[str, list]:
    """The group's linear backend under ``mode``, and its configs that have no row yet."""
    dtype = grp.get("dtype", "fp32")
    linear = resolve_linear(grp.get("linear", "auto"), args.device, dtype, mode)
    todo = [(m, k) for m, k in grp["configs"]
            if row_key(family=grp["family"], size=args.size, frames=FRAMES[grp["tokens"]], method=m, keep_rate=k,
                       batch=grp["batch"], device=args.device, device_name=args.device_name, threads=thread_col,
                       dtype=dtype, drop_loc="3 6 9",
                       mel=128, num_classes=527, seed=0, omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "default"),
                       linear=linear, compile=mode)
            not in done]
    return linear, todo


def run_group(args, grp, mode, linear, todo, threads, out: Path) -> list[dict]:
    """Time one group under one compile mode and append its rows to ``out`` (saved after every group)."""
    results = bench_group(grp["family"], args.size, FRAMES[grp["tokens"]], todo, batch=grp["batch"],
                          device=args.device, threads=threads, repeats=grp["repeats"],
                          min_seconds=grp["min_seconds"], warmup=grp.get("warmup"), dtype=grp.get("dtype", "fp32"),
                          overhead=["topk"], linear=linear, progress=True, compile=mode)
    rows = pd.DataFrame([flat_row(r) for r in results])
    if out.exists():
        rows = pd.concat([pd.read_csv(out), rows], ignore_index=True)
    rows.to_csv(out, index=False)   # after every group: an interrupted run keeps what it measured
    for r in results:
        ovh = r["overhead_at_kr1"]
        kr1 = "n/a" if ovh != ovh else f"{100 * ovh:+.1f}%"   # NaN: no keep-rate-1.0 model for this method
        tqdm.write(f"{r['family']:8s} {r['tokens']:4d} tok b{r['batch']:<3d} {r['linear']:6s} {r['compile']:15s} "
                   f"{r['method']:9s} {r['keep_rate']:.1f} "
                   f"full {r['ms_full']:9.2f} ms  pruned {r['ms_pruned']:9.2f} ms  speedup {r['speedup']:.3f}  "
                   f"MACs {r['mac_ratio']:.3f}  eff {r['efficiency']:.3f}  kr1 {kr1}  "
                   f"first call {r['first_call_s_full']:.1f}/{r['first_call_s_pruned']:.1f} s  "
                   f"load {r['load_before']}->{r['load_after']}")
    return results


NOTE = ("ms_* are medians over interleaved rounds (ms per batch); *_q25/*_q75 the quartiles; speedup = "
        "ms_full / ms_pruned; mac_ratio from tprune_core.macs; efficiency = speedup / mac_ratio; "
        "efficiency_min the same from each model's fastest round; cpu_efficiency from process CPU time; "
        "overhead_at_kr1 = patched at keep rate 1.0 (timed for topk only) vs stock timm, overhead_paired "
        "the median of per-round ratios; linear = the linear-layer backend of every model of the row "
        "(onednn: tprune_core.models.onednn_linear; default: timm's F.linear); compile = the torch.compile "
        "mode of every model of the row (none: eager; rows without the column are eager), first_call_s_* = "
        "seconds of each model's first call (compilation included; never part of the medians); device_name = "
        "the timed device, cpu_name = the host CPU; load_* = 1-min load average. Other processes share the "
        "machine: compare ratios within a group (same family, tokens, batch, compile), not absolute ms across "
        "groups.")


def write_sidecar(args, out: Path, plan, thread_col, t0: float, added: int, skipped: int, failed: list):
    import timm
    import torch
    sidecar = out.with_suffix(".json")
    old = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    runs = old.get("runs", []) + [{"finished": time.strftime("%Y-%m-%d %H:%M:%S"), "device_name": args.device_name,
                                   "grid_name": args.grid,
                                   "seconds": round(time.time() - t0, 1), "rows_added": added,
                                   "groups_skipped_at_deadline": skipped, "groups_failed": failed,
                                   "compile": args.compile,
                                   "load_avg_end": [round(v, 2) for v in os.getloadavg()]}]
    names = sorted(pd.read_csv(out).device_name.unique()) if out.exists() else [args.device_name]
    meta = {"csv": out.name, "device": args.device, "device_name": " / ".join(names),
            "cpu_name": _cpu_name(), "cpus": os.cpu_count(), "threads": thread_col,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"), "torch": torch.__version__, "timm": timm.__version__,
            "size": args.size, "grid_name": args.grid, "quick": args.grid == "quick", "compile": args.compile,
            "families": args.families, "key_columns": KEY,
            "grid": [{**g, "frames": FRAMES[g["tokens"]], "compile": mode} for g, mode in plan],
            "runs": runs, "note": NOTE}
    sidecar.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {out} ({len(pd.read_csv(out)) if out.exists() else 0} rows) and {sidecar.name}")


def main(argv=None):
    args = parse_args(argv)
    args.omp_wait = apply_omp_wait(args.omp_wait)   # before torch loads libgomp
    name = f"{'cpu' if args.device == 'cpu' else 'gpu'}_grid{'_' + args.grid if args.grid == 'quick' else ''}.csv"
    out = Path(args.out) if args.out else (Path(os.environ["OUT"]) if os.environ.get("OUT") else
                                           REPO / "results" / "bench") / name
    out.parent.mkdir(parents=True, exist_ok=True)
    threads = args.threads if args.threads is not None else (2 if args.device == "cpu" else None)
    import torch
    thread_col = threads if threads is not None else torch.get_num_threads()
    args.device_name = _device_name(torch.device(args.device))   # rows of another machine kind are not this one's
    done = done_keys(out)
    plan = runs(grid(args.device, args.grid, args.families), args.compile, args.device)
    t0, added, skipped, failed = time.time(), 0, 0, []
    for grp, mode in tqdm(plan, desc="groups"):
        if args.deadline_s is not None and time.time() - t0 > args.deadline_s:
            skipped += 1
            tqdm.write(f"deadline: skipping {grp['family']} {grp['tokens']} tok b{grp['batch']} compile {mode}")
            continue
        linear, todo = todo_configs(args, grp, mode, thread_col, done)
        if not todo:
            continue
        try:
            results = run_group(args, grp, mode, linear, todo, threads, out)
        except Exception as exc:   # e.g. a compiler error in one mode: report it, keep the other groups
            failed.append(f"{grp['family']} {grp['tokens']} tok b{grp['batch']} compile {mode}: {exc!r}"[:500])
            tqdm.write(f"FAILED {failed[-1]}")
            traceback.print_exc()
            continue
        added += len(results)
        done |= {row_key(**{**r, "drop_loc": " ".join(map(str, r["drop_loc"]))}) for r in results}
    write_sidecar(args, out, plan, thread_col, t0, added, skipped, failed)
    if failed:
        sys.exit(f"run_grid: {len(failed)} group(s) failed (listed in the sidecar)")


if __name__ == "__main__":
    main()
