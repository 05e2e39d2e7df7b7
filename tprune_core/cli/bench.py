"""`tprune bench`: time a pruned model against its unpruned twin and compare the speed-up with the MAC ratio."""
from __future__ import annotations

import json

from ..rules import (BENCH_COMPILE, BENCH_DEVICES, BENCH_DTYPES, DEFAULT_DROP_LOC, FAMILIES, LINEARS, OMP_WAITS, SIZES,
                     apply_omp_wait)
from . import drop_loc_arg


def add_parser(subparsers):
    p = subparsers.add_parser("bench", help="time pruned vs unpruned inference (speed-up vs MAC ratio)")
    p.add_argument("--family", required=True, choices=FAMILIES)
    p.add_argument("--size", default="base", choices=tuple(SIZES))
    p.add_argument("--frames", type=int, required=True, help="fbank frames (tokens = frames/16 * mel/16)")
    p.add_argument("--keep-rate", type=float, required=True)
    p.add_argument("--method", default="topk")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cpu", choices=BENCH_DEVICES)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds (default: at least 7 and --min-seconds of timing)")
    p.add_argument("--min-seconds", type=float, default=30.0,
                   help="seconds of timed rounds (default 30: on a 2-core VM, 10 s left the efficiency +-0.04 "
                        "from run to run)")
    p.add_argument("--dtype", default="fp32", choices=BENCH_DTYPES, help="autocast dtype")
    p.add_argument("--linear", default="auto", choices=LINEARS,
                   help="linear-layer backend of every timed model (auto: oneDNN for fp32 on the CPU, else timm's; "
                        "timm's for a compiled run)")
    p.add_argument("--compile", default="none", choices=BENCH_COMPILE,
                   help="torch.compile mode of every timed model, unpruned and pruned alike (fullgraph; "
                        "reduce-overhead: CUDA graphs, cuda only). Each model's first call, which compiles it, is "
                        "reported apart and never timed with the rest")
    p.add_argument("--omp-wait", default=None, choices=OMP_WAITS,
                   help="OpenMP threads between operators (default: $OMP_WAIT_POLICY if set, else active): active "
                        "spin, the lowest latency on an idle machine; passive sleep, for a machine busy with other "
                        "work; default leaves libgomp's own (spin a while, then sleep)")
    p.add_argument("--drop-loc", type=drop_loc_arg, default=DEFAULT_DROP_LOC, help="drop blocks, e.g. 3,6,9")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.set_defaults(func=run)


def run(args):
    apply_omp_wait(args.omp_wait)   # before torch loads
    from ..analyses.bench import bench
    r = bench(args.family, args.size, args.frames, args.keep_rate, method=args.method, batch=args.batch,
              device=args.device, threads=args.threads, repeats=args.repeats, min_seconds=args.min_seconds,
              dtype=args.dtype, drop_loc=args.drop_loc, seed=args.seed, linear=args.linear, progress=not args.json,
              compile=args.compile)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    s = r["spread"]
    host = f", host {r['cpu_name']}" if r["device_name"] != r["cpu_name"] else ""
    print(f"{r['family']}-{r['size']} {r['tokens']} tokens, {r['method']} keep {r['keep_rate']}, batch {r['batch']}, "
          f"{r['device']} ({r['device_name']}{host}, {r['threads']} threads, OMP_WAIT_POLICY {r['omp_wait_policy']}, "
          f"{r['dtype']}, linear {r['linear']}, compile {r['compile']}), {r['repeats']} rounds, "
          f"load {r['load_before']} -> {r['load_after']}")
    for name, key in (("full", "full"), ("pruned", "pruned"), ("patched kr 1.0", "kr1")):
        print(f"  {name:15s} {s[key]['median']:10.2f} ms  (IQR {s[key]['q25']:.2f}-{s[key]['q75']:.2f})")
    print(f"  speed-up {r['speedup']:.3f} (paired {s['speedup_paired']['median']:.3f}, "
          f"IQR {s['speedup_paired']['q25']:.3f}-{s['speedup_paired']['q75']:.3f}), "
          f"MAC ratio {r['mac_ratio']:.3f} ({r['gmacs_full']:.2f} -> {r['gmacs_pruned']:.2f} GMACs/clip)")
    print(f"  first call (compile included, not timed above): full {r['first_call_s_full']:.2f} s, "
          f"pruned {r['first_call_s_pruned']:.2f} s, patched kr 1.0 {r['first_call_s_kr1']:.2f} s")
    print(f"  efficiency {r['efficiency']:.3f}   overhead at keep rate 1.0 {100 * r['overhead_at_kr1']:+.1f}% "
          f"(paired {100 * s['overhead_paired']['median']:+.1f}%)")
    return 0
