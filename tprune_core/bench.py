"""Wall-clock timing of pruned vs unpruned models: does the clock agree with the MAC count?

``bench_group`` builds one stock model, deep-copies it (before patching: pruning re-classes modules in place) into
a keep-rate-1.0 patched model and one pruned model per ``(method, keep_rate)``, and times them all on the same
random input under ``torch.inference_mode()``: a warm-up, then interleaved rounds (every model once per round, the
order rotated each round) so that load from other processes hits every model alike. Each model's time is the median
over rounds; the spread is the inter-quartile range, and the paired per-round ratios are reported next to the ratio
of medians because, on a shared machine, a round's models see the same load.

Every timed model shares one linear-layer backend (``linear``): on the CPU in fp32 by default oneDNN
(``models.onednn_linear``), which is faster than timm's default (MKL through ``F.linear``) at every token count and
loses less of its speed as pruning shrinks the matrices; ``linear="default"`` times timm's own path. Either way the
stock, the keep-rate-1.0 and the pruned model compute alike, so the comparison stays like for like.

``bench`` is the single-configuration front end (``tprune bench``).
"""
from __future__ import annotations

import copy
import os
import platform
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError
from .macs import model_macs
from .models import FAMILIES, SIZES, create_model, onednn_available, onednn_linear
from .pruning import METHODS, apply_pruning

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
LINEARS = ("auto", "onednn", "default")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _stats(samples) -> dict:
    a = np.asarray(samples, dtype=float)
    q25, med, q75 = np.percentile(a, [25, 50, 75])
    return {"median": float(med), "q25": float(q25), "q75": float(q75), "iqr": float(q75 - q25),
            "mad": float(np.median(np.abs(a - med))), "min": float(a.min()), "n": int(a.size)}


def resolve_linear(linear: str, device, dtype: str) -> str:
    """The linear backend a run will use: ``auto`` is oneDNN for fp32 on a CPU whose torch has it, else default."""
    if linear not in LINEARS:
        raise ConfigError(f"linear: expected one of {LINEARS}, got {linear!r}")
    fits = torch.device(device).type == "cpu" and dtype == "fp32"
    if linear == "onednn" and not fits:
        raise ConfigError(f"linear: 'onednn' applies to fp32 on the CPU only (got device {str(device)!r}, "
                          f"dtype {dtype!r}); use 'auto' or 'default'")
    if linear == "onednn" and not onednn_available():
        raise ConfigError("linear: 'onednn' requested but this torch build has no oneDNN; use 'default'")
    if linear == "auto":
        return "onednn" if fits and onednn_available() else "default"
    return linear


def _check(family, size, frames, batch, device, threads, repeats, dtype):
    if family not in FAMILIES:
        raise ConfigError(f"family: expected one of {FAMILIES}, got {family!r}")
    if size not in SIZES:
        raise ConfigError(f"size: expected one of {tuple(SIZES)}, got {size!r}")
    if batch < 1:
        raise ConfigError(f"batch: expected a positive integer, got {batch}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads: expected a positive integer, got {threads}")
    if repeats is not None and repeats < 3:
        raise ConfigError(f"repeats: expected at least 3 (a spread needs samples), got {repeats}")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype: expected one of {tuple(DTYPES)}, got {dtype!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: expected 'cpu' or 'cuda', got {str(device)!r}")


def bench_group(family: str, size: str, frames: int, configs, batch: int = 1, device: str = "cpu",
                threads: int | None = None, repeats: int | None = None, min_seconds: float = 10.0,
                max_repeats: int = 100, warmup: int | None = None, dtype: str = "fp32", drop_loc=(3, 6, 9),
                mel: int = 128, num_classes: int = 527, seed: int = 0, overhead=True, linear: str = "auto",
                progress: bool = False) -> list[dict]:
    """Time the stock model, the patched model at keep rate 1.0 and every ``(method, keep_rate)`` in ``configs``.

    ``repeats``: rounds to time; ``None`` runs until at least 7 rounds and ``min_seconds`` of timing have passed
    (at most ``max_repeats``). ``overhead``: time a keep-rate-1.0 model for every method (True), for none (False)
    or for the methods listed; where none is timed, ``ms_kr1`` and ``overhead_at_kr1`` are NaN. (At keep rate 1.0
    the ranking and merging methods all run the same code, so one of them says what the patching costs.)
    ``linear``: the linear-layer backend of every timed model (``LINEARS``; see the module docstring).
    Returns one result dict per config (see ``bench`` for the keys).
    """
    device = torch.device(device)
    configs = [(str(m), float(k)) for m, k in configs]
    _check(family, size, frames, batch, device, threads, repeats, dtype)
    linear = resolve_linear(linear, device, dtype)
    for m, k in configs:
        if m not in METHODS:
            raise ConfigError(f"method: expected one of {METHODS}, got {m!r}")
        if not 0.0 < k <= 1.0:
            raise ConfigError(f"keep_rate: expected a number in (0, 1], got {k}")
    if not configs:
        raise ConfigError("configs: expected at least one (method, keep_rate)")
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run_group(family, size, frames, configs, batch, device, repeats, min_seconds, max_repeats,
                          warmup, dtype, tuple(drop_loc), mel, num_classes, seed, overhead, linear, progress)
    finally:
        torch.set_num_threads(old_threads)


def _run_group(family, size, frames, configs, batch, device, repeats, min_seconds, max_repeats, warmup, dtype,
               drop_loc, mel, num_classes, seed, overhead, linear, progress):
    with torch.random.fork_rng(devices=[]):   # weights from an explicit seed, global RNG untouched
        torch.manual_seed(seed)
        stock = create_model(family, size, frames, num_classes, mel=mel).eval()
    if linear == "onednn":   # before the copies, so that every timed model has it
        onednn_linear(stock)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, mel, generator=g).to(device)

    # Copies first, patches second: apply_pruning re-classes the copy's modules, never the stock model's.
    models = {"full": stock}
    methods = sorted({m for m, _ in configs})
    for m in (methods if overhead is True else [] if overhead is False else [m for m in methods if m in overhead]):
        models[("kr1", m)] = apply_pruning(copy.deepcopy(stock), m, 1.0, drop_loc)
    for m, k in configs:
        models[(m, k)] = apply_pruning(copy.deepcopy(stock), m, k, drop_loc)
    for model in models.values():
        model.to(device)

    cuda = device.type == "cuda"
    autocast = (torch.autocast(device.type, dtype=DTYPES[dtype]) if DTYPES[dtype] is not None else nullcontext())
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def run(model):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        model(x)
        sync()
        return (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3

    keys = list(models)
    times = {key: [] for key in keys}
    cpu = {key: [] for key in keys}   # process CPU time: less sensitive than the clock to other processes' load
    load_before = os.getloadavg()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=repeats, desc=f"bench {family}-{size} {frames}f b{batch}", leave=False)
    with torch.inference_mode(), autocast:
        for _ in range(warmup if warmup is not None else (10 if cuda else 2)):
            for key in keys:
                run(models[key])
        macs = {key: model_macs(models[key]) for key in keys}   # per clip, from the warm-up's token counts
        t_start, r = time.perf_counter(), 0
        while True:
            if repeats is not None and r >= repeats:
                break
            if repeats is None and ((r >= 7 and time.perf_counter() - t_start >= min_seconds) or r >= max_repeats):
                break
            for j in range(len(keys)):   # rotate the order so no model always runs first (or after the same one)
                key = keys[(r + j) % len(keys)]
                wall, c = run(models[key])
                times[key].append(wall)
                cpu[key].append(c)
            r += 1
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    load_after = os.getloadavg()

    full = np.asarray(times["full"])
    machine = {"device": str(device), "device_name": _device_name(device), "threads": torch.get_num_threads(),
               "tf32": bool(torch.backends.cuda.matmul.allow_tf32) if cuda else False, "linear": linear,
               "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
               "torch": torch.__version__, "timm": __import__("timm").__version__, "python": platform.python_version(),
               "load_before": round(load_before[0], 2), "load_after": round(load_after[0], 2), "cpus": os.cpu_count()}
    out = []
    nan = np.full_like(full, np.nan)
    for m, k in configs:
        pruned, kr1 = np.asarray(times[(m, k)]), np.asarray(times.get(("kr1", m), nan))
        ms_full, ms_pruned, ms_kr1 = np.median(full), np.median(pruned), np.median(kr1)
        cpu_full, cpu_pruned = np.median(cpu["full"]), np.median(cpu[(m, k)])
        mac_full, mac_pruned = float(macs["full"].mean()), float(macs[(m, k)].mean())
        speedup = ms_full / ms_pruned
        mac_ratio = mac_full / mac_pruned
        out.append({
            "family": family, "size": size, "frames": frames, "tokens": stock.patch_embed.num_patches,
            "method": m, "keep_rate": k, "batch": batch, "dtype": dtype, "drop_loc": list(drop_loc), "mel": mel,
            "num_classes": num_classes, "seed": seed,
            "ms_full": float(ms_full), "ms_pruned": float(ms_pruned), "ms_kr1": float(ms_kr1),
            "speedup": float(speedup), "gmacs_full": mac_full / 1e9, "gmacs_pruned": mac_pruned / 1e9,
            "mac_ratio": mac_ratio, "efficiency": float(speedup / mac_ratio),
            "cpu_ms_full": float(cpu_full), "cpu_ms_pruned": float(cpu_pruned),
            "cpu_efficiency": float(cpu_full / cpu_pruned / mac_ratio),
            # Load from other processes only ever adds time: the fastest round is a second, robust estimate.
            "efficiency_min": float(full.min() / pruned.min() / mac_ratio),
            "overhead_at_kr1": float(ms_kr1 / ms_full - 1.0),
            "spread": {"full": _stats(full), "pruned": _stats(pruned), "kr1": _stats(kr1),
                       "speedup_paired": _stats(full / pruned), "overhead_paired": _stats(kr1 / full - 1.0)},
            "repeats": int(full.size), **machine,
        })
    return out


def bench(family: str, size: str, frames: int, keep_rate: float, method: str = "topk", batch: int = 1,
          device: str = "cpu", threads: int | None = None, repeats: int | None = None, **kwargs) -> dict:
    """Time one pruned model against its unpruned twin (same weights, same input).

    Keys: ``ms_full``, ``ms_pruned``, ``ms_kr1`` (medians, ms per batch), ``speedup`` = ms_full / ms_pruned,
    ``mac_ratio`` = MACs full / MACs pruned (``macs.model_macs`` of the timed forwards), ``efficiency`` =
    speedup / mac_ratio, ``overhead_at_kr1`` = patched at keep rate 1.0 vs stock timm (fraction; both with the
    same ``linear`` backend), ``spread``
    (median, quartiles, IQR, MAD of every model's times and of the paired per-round ratios), every parameter, and
    the machine (device, threads, torch version, load average before and after).
    """
    return bench_group(family, size, frames, [(method, keep_rate)], batch=batch, device=device, threads=threads,
                       repeats=repeats, **kwargs)[0]


def flat_row(result: dict) -> dict:
    """One result as a flat CSV row: scalars kept, the spread summarised by quartiles."""
    row = {k: v for k, v in result.items() if k != "spread" and k != "drop_loc"}
    row["drop_loc"] = " ".join(str(b) for b in result["drop_loc"])
    for name, s in result["spread"].items():
        row[f"{name}_q25"], row[f"{name}_q75"] = s["q25"], s["q75"]
    row["speedup_paired"] = result["spread"]["speedup_paired"]["median"]
    row["overhead_paired"] = result["spread"]["overhead_paired"]["median"]
    return row


GRID_COLUMNS = ("family", "tokens", "batch", "dtype", "method", "keep_rate", "ms_full", "ms_pruned", "speedup",
                "mac_ratio", "efficiency", "device", "device_name")


def load_grid(name: str, root=None):
    """A stored timing grid written by ``bench/run_grid.py`` (``results/bench/<name>.csv``) and its JSON sidecar
    (machine, versions, runs): ``(DataFrame, dict)``. Raises a clear error if it is missing or lacks columns."""
    import json

    import pandas as pd

    from .errors import TpruneError
    from .results import repo_root

    base = Path(root) if root is not None else (repo_root() or Path.cwd()) / "results" / "bench"
    path = base / f"{name}.csv"
    if not path.is_file():
        raise TpruneError(f"{path}: no timing grid; run `python bench/run_grid.py` (CPU) or "
                          f"`bash bench/gpu_session.sh` (GPU) to make it")
    df = pd.read_csv(path)
    missing = [c for c in GRID_COLUMNS if c not in df.columns]
    if missing:
        raise TpruneError(f"{path}: not a timing grid (missing columns {missing})")
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    return df, meta
