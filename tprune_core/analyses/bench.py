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

Compiling (``compile``, ``rules.BENCH_COMPILE``): ``none`` times eager models; ``default``, ``reduce-overhead``
(CUDA graphs, CUDA only) and ``max-autotune`` wrap every timed model, stock and pruned alike, in
``torch.compile(model, mode=..., fullgraph=True, dynamic=False)``: one graph per model, so a silent graph break
cannot make a pruned model look slow. Only static-budget methods compile (``pruning``'s docstring). Each model's
first call, which compiles it, is timed on its own (``first_call_s_*``, also reported for eager models, where it is
the cold first forward) and never enters the timed rounds; with ``reduce-overhead`` CUDA graphs are recorded in
the warm-up that follows. MACs come from one eager forward per model before compiling. A compiled model brings its
own matrix products, so the linear backend is timm's (``linear="auto"`` resolves to ``default``).

``bench`` is the single-configuration front end (``tprune bench``).
"""
from __future__ import annotations

import copy
import os
import platform
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..nn.macs import model_macs
from ..nn.models import create_model, onednn_available, onednn_linear
from ..nn.pruning import apply_pruning
from ..rules import (BENCH_COMPILE, BENCH_DEVICES, BENCH_DTYPES, DEFAULT_DROP_LOC, LINEARS, MEL_BINS, PER_CLIP,
                    check_family, check_keep_rate, check_method, check_one_of, check_positive_int, check_size)
from ..training.runtime import processor_name

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}   # rules.BENCH_DTYPES -> autocast dtype


def _device_name(device: torch.device) -> str:
    return processor_name(device)


def _cpu_name() -> str:
    """The CPU model (a GPU run records it too: at batch 1 the host launching the kernels sets the pace)."""
    return processor_name("cpu")


def _stats(samples) -> dict:
    a = np.asarray(samples, dtype=float)
    q25, med, q75 = np.percentile(a, [25, 50, 75])
    return {"median": float(med), "q25": float(q25), "q75": float(q75), "iqr": float(q75 - q25),
            "mad": float(np.median(np.abs(a - med))), "min": float(a.min()), "n": int(a.size)}


def resolve_linear(linear: str, device, dtype: str, compile: str = "none") -> str:
    """The linear backend a run will use: ``auto`` is oneDNN for fp32 on a CPU whose torch has it, else default
    (and default for a compiled run: the compiler picks its own matrix products)."""
    check_one_of("linear", LINEARS, linear)
    check_one_of("compile", BENCH_COMPILE, compile)
    fits = torch.device(device).type == "cpu" and dtype == "fp32"
    if linear == "onednn" and compile != "none":
        raise ConfigError(f"linear: 'onednn' layers do not compile (compile {compile!r}); use 'auto' or 'default'")
    if compile != "none":
        return "default"
    if linear == "onednn" and not fits:
        raise ConfigError(f"linear: 'onednn' applies to fp32 on the CPU only (got device {str(device)!r}, "
                          f"dtype {dtype!r}); use 'auto' or 'default'")
    if linear == "onednn" and not onednn_available():
        raise ConfigError("linear: 'onednn' requested but this torch build has no oneDNN; use 'default'")
    if linear == "auto":
        return "onednn" if fits and onednn_available() else "default"
    return linear


def _check_compile(compile: str, device: torch.device, methods) -> None:
    check_one_of("compile", BENCH_COMPILE, compile)
    if compile == "reduce-overhead" and device.type != "cuda":
        raise ConfigError("compile: 'reduce-overhead' records CUDA graphs, so it needs device 'cuda'")
    per_clip = sorted(set(methods) & PER_CLIP)
    if compile != "none" and per_clip:
        raise ConfigError(f"compile: {', '.join(per_clip)} keep a per-clip number of tokens and do not compile as "
                          f"one graph; time them with compile 'none'")


def _check(family, size, frames, batch, device, threads, repeats, dtype):
    check_family(family)
    check_size(size)
    check_positive_int("batch", batch)
    if threads is not None:
        check_positive_int("threads", threads)
    if repeats is not None and repeats < 3:
        raise ConfigError(f"repeats: expected at least 3 (a spread needs samples), got {repeats}")
    check_one_of("dtype", BENCH_DTYPES, dtype)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but torch sees no CUDA device")
    if device.type not in BENCH_DEVICES:
        raise ConfigError(f"device: expected {' or '.join(map(repr, BENCH_DEVICES))}, got {str(device)!r}")


def bench_group(family: str, size: str, frames: int, configs, batch: int = 1, device: str = "cpu",
                threads: int | None = None, repeats: int | None = None, min_seconds: float = 10.0,
                max_repeats: int = 100, warmup: int | None = None, dtype: str = "fp32", drop_loc=DEFAULT_DROP_LOC,
                mel: int = MEL_BINS, num_classes: int = 527, seed: int = 0, overhead=True, linear: str = "auto",
                progress: bool = False, compile: str = "none") -> list[dict]:
    """Time the stock model, the patched model at keep rate 1.0 and every ``(method, keep_rate)`` in ``configs``.

    ``repeats``: rounds to time; ``None`` runs until at least 7 rounds and ``min_seconds`` of timing have passed
    (at most ``max_repeats``). ``overhead``: time a keep-rate-1.0 model for every method (True), for none (False)
    or for the methods listed; where none is timed, ``ms_kr1`` and ``overhead_at_kr1`` are NaN. (At keep rate 1.0
    the ranking and merging methods all run the same code, so one of them says what the patching costs.)
    ``linear``: the linear-layer backend of every timed model (``LINEARS``; see the module docstring).
    ``compile``: ``BENCH_COMPILE``; every timed model is compiled the same way (see the module docstring).
    Returns one result dict per config (see ``bench`` for the keys).
    """
    device = torch.device(device)
    configs = [(str(m), float(k)) for m, k in configs]
    _check(family, size, frames, batch, device, threads, repeats, dtype)
    for m, k in configs:
        check_method(m)
        check_keep_rate(k)
    if not configs:
        raise ConfigError("configs: expected at least one (method, keep_rate)")
    _check_compile(compile, device, [m for m, _ in configs])
    linear = resolve_linear(linear, device, dtype, compile)
    settings = BenchSettings(family, size, frames, batch, device, dtype, tuple(drop_loc), mel, num_classes, seed,
                             linear, repeats, min_seconds, max_repeats, warmup, overhead, progress, compile)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run_group(settings, configs)
    finally:
        torch.set_num_threads(old_threads)


@dataclass(frozen=True)
class BenchSettings:
    """Everything a timing run needs besides its ``(method, keep_rate)`` configs (checked by ``bench_group``)."""
    family: str
    size: str
    frames: int
    batch: int
    device: torch.device
    dtype: str
    drop_loc: tuple
    mel: int
    num_classes: int
    seed: int
    linear: str              # resolved: "onednn" or "default"
    repeats: int | None
    min_seconds: float
    max_repeats: int
    warmup: int | None
    overhead: object         # True, False or the methods whose keep-rate-1.0 model is timed
    progress: bool
    compile: str = "none"    # rules.BENCH_COMPILE

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def warmup_rounds(self) -> int:
        return self.warmup if self.warmup is not None else (10 if self.cuda else 2)

    def finished(self, rounds: int, seconds: float) -> bool:
        """Whether ``rounds`` timed rounds taking ``seconds`` are enough."""
        if self.repeats is not None:
            return rounds >= self.repeats
        return (rounds >= 7 and seconds >= self.min_seconds) or rounds >= self.max_repeats

    def overhead_methods(self, methods) -> list:
        return list(methods) if self.overhead is True else [] if self.overhead is False else [
            m for m in methods if m in self.overhead]


@dataclass
class _Timings:
    """Per timed model (key "full", ``("kr1", method)`` or ``(method, keep_rate)``): wall and CPU ms per round,
    MACs per clip, seconds of the first call (compilation included); the load average before and after."""
    times: dict
    cpu: dict
    macs: dict
    first_call: dict
    load_before: tuple
    load_after: tuple


def _run_group(s: BenchSettings, configs) -> list[dict]:
    models, x = _build_models(s, configs)
    timings = _time_models(s, models, x)
    machine = _machine(s, timings)
    tokens = models["full"].patch_embed.num_patches
    return [_result(s, m, k, tokens, timings, machine) for m, k in configs]


def _build_models(s: BenchSettings, configs) -> tuple[dict, torch.Tensor]:
    """The stock model, its patched copies (keep rate 1.0 per ``s.overhead``, then every config) and the input."""
    with torch.random.fork_rng(devices=[]):   # weights from an explicit seed, global RNG untouched
        torch.manual_seed(s.seed)
        stock = create_model(s.family, s.size, s.frames, s.num_classes, mel=s.mel).eval()
    if s.linear == "onednn":   # before the copies, so that every timed model has it
        onednn_linear(stock)
    g = torch.Generator().manual_seed(s.seed)
    x = torch.randn(s.batch, s.frames, s.mel, generator=g).to(s.device)

    # Copies first, patches second: apply_pruning re-classes the copy's modules, never the stock model's.
    models = {"full": stock}
    for m in s.overhead_methods(sorted({m for m, _ in configs})):
        models[("kr1", m)] = apply_pruning(copy.deepcopy(stock), m, 1.0, s.drop_loc)
    for m, k in configs:
        models[(m, k)] = apply_pruning(copy.deepcopy(stock), m, k, s.drop_loc)
    for model in models.values():
        model.to(s.device)
    return models, x


def _timed(model, x, sync) -> tuple[float, float]:
    """Wall-clock and process CPU milliseconds of one forward."""
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    model(x)
    sync()
    return (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3


def _compiled(s: BenchSettings, models: dict) -> dict:
    """What each timed model runs as: the model itself, or the same ``torch.compile`` of it for every model."""
    if s.compile == "none":
        return dict(models)
    import torch._dynamo
    torch._dynamo.reset()   # a fresh cache per group: the pruned models share their forward's code object
    mode = None if s.compile == "default" else s.compile
    return {key: torch.compile(model, mode=mode, fullgraph=True, dynamic=False) for key, model in models.items()}


def _time_models(s: BenchSettings, models: dict, x) -> _Timings:
    """The first call of every model (timed apart: it compiles), a warm-up, then the timed rounds, under inference
    mode and the autocast dtype. MACs: from the warm-up's tokens, or from one eager forward before compiling."""
    autocast = (torch.autocast(s.device.type, dtype=DTYPES[s.dtype]) if DTYPES[s.dtype] is not None
                else nullcontext())
    sync = torch.cuda.synchronize if s.cuda else (lambda: None)
    load_before = os.getloadavg()
    bar = None
    if s.progress:
        from tqdm import tqdm
        bar = tqdm(total=s.repeats, desc=f"bench {s.family}-{s.size} {s.frames}f b{s.batch}", leave=False)
    with torch.inference_mode(), autocast, _recompile_room(len(models)):
        # A CUDA graph's outputs are reused by the next call: a compiled group counts MACs on the eager models.
        macs = _eager_macs(models, x) if s.compile != "none" else None
        runs = _compiled(s, models)
        first = {key: _timed(run, x, sync)[0] / 1e3 for key, run in runs.items()}
        for _ in range(max(0, s.warmup_rounds() - 1)):   # the first call was the first warm-up round
            for run in runs.values():
                _timed(run, x, sync)
        if macs is None:
            macs = {key: model_macs(model) for key, model in models.items()}   # per clip, from the warm-up
        times, cpu = _rounds(s, runs, x, sync, bar)
    if bar is not None:
        bar.close()
    return _Timings(times, cpu, macs, first, load_before, os.getloadavg())


def _eager_macs(models: dict, x) -> dict:
    macs = {}
    for key, model in models.items():
        model(x)
        macs[key] = model_macs(model)
    return macs


def _recompile_room(n_models: int):
    """Dynamo caches one entry per pruned model on their shared forward: room for a whole group."""
    import torch._dynamo
    limit = max(torch._dynamo.config.recompile_limit, 2 * n_models)
    return torch._dynamo.config.patch(recompile_limit=limit)


def _rounds(s: BenchSettings, models: dict, x, sync, bar) -> tuple[dict, dict]:
    """Interleaved rounds, every model once per round: wall-clock and CPU ms per model."""
    keys = list(models)
    times = {key: [] for key in keys}
    cpu = {key: [] for key in keys}   # process CPU time: less sensitive than the clock to other processes' load
    t_start, r = time.perf_counter(), 0
    while not s.finished(r, time.perf_counter() - t_start):
        for j in range(len(keys)):   # rotate the order so no model always runs first (or after the same one)
            key = keys[(r + j) % len(keys)]
            wall, c = _timed(models[key], x, sync)
            times[key].append(wall)
            cpu[key].append(c)
        r += 1
        if bar is not None:
            bar.update(1)
    return times, cpu


def _machine(s: BenchSettings, t: _Timings) -> dict:
    return {"device": str(s.device), "device_name": _device_name(s.device), "cpu_name": _cpu_name(),
            "threads": torch.get_num_threads(), "compile": s.compile,
            "tf32": bool(torch.backends.cuda.matmul.allow_tf32) if s.cuda else False, "linear": s.linear,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
            "torch": torch.__version__, "timm": __import__("timm").__version__, "python": platform.python_version(),
            "load_before": round(t.load_before[0], 2), "load_after": round(t.load_after[0], 2),
            "cpus": os.cpu_count()}


def _result(s: BenchSettings, m: str, k: float, tokens: int, t: _Timings, machine: dict) -> dict:
    """One config's result: medians, ratios and spreads against the stock model (see ``bench``)."""
    full = np.asarray(t.times["full"])
    pruned, kr1 = np.asarray(t.times[(m, k)]), np.asarray(t.times.get(("kr1", m), np.full_like(full, np.nan)))
    ms_full, ms_pruned, ms_kr1 = np.median(full), np.median(pruned), np.median(kr1)
    cpu_full, cpu_pruned = np.median(t.cpu["full"]), np.median(t.cpu[(m, k)])
    mac_full, mac_pruned = float(t.macs["full"].mean()), float(t.macs[(m, k)].mean())
    speedup = ms_full / ms_pruned
    mac_ratio = mac_full / mac_pruned
    return {
        "family": s.family, "size": s.size, "frames": s.frames, "tokens": tokens,
        "method": m, "keep_rate": k, "batch": s.batch, "dtype": s.dtype, "drop_loc": list(s.drop_loc), "mel": s.mel,
        "num_classes": s.num_classes, "seed": s.seed,
        "ms_full": float(ms_full), "ms_pruned": float(ms_pruned), "ms_kr1": float(ms_kr1),
        "speedup": float(speedup), "gmacs_full": mac_full / 1e9, "gmacs_pruned": mac_pruned / 1e9,
        "mac_ratio": mac_ratio, "efficiency": float(speedup / mac_ratio),
        "cpu_ms_full": float(cpu_full), "cpu_ms_pruned": float(cpu_pruned),
        "cpu_efficiency": float(cpu_full / cpu_pruned / mac_ratio),
        # Load from other processes only ever adds time: the fastest round is a second, robust estimate.
        "efficiency_min": float(full.min() / pruned.min() / mac_ratio),
        "overhead_at_kr1": float(ms_kr1 / ms_full - 1.0),
        # Seconds of each model's first call: compilation (if any) plus one forward; never in the medians above.
        "first_call_s_full": t.first_call["full"], "first_call_s_pruned": t.first_call[(m, k)],
        "first_call_s_kr1": t.first_call.get(("kr1", m), float("nan")),
        "spread": {"full": _stats(full), "pruned": _stats(pruned), "kr1": _stats(kr1),
                   "speedup_paired": _stats(full / pruned), "overhead_paired": _stats(kr1 / full - 1.0)},
        "repeats": int(full.size), **machine,
    }


def bench(family: str, size: str, frames: int, keep_rate: float, method: str = "topk", batch: int = 1,
          device: str = "cpu", threads: int | None = None, repeats: int | None = None, **kwargs) -> dict:
    """Time one pruned model against its unpruned twin (same weights, same input).

    Keys: ``ms_full``, ``ms_pruned``, ``ms_kr1`` (medians, ms per batch), ``speedup`` = ms_full / ms_pruned,
    ``mac_ratio`` = MACs full / MACs pruned (``macs.model_macs`` of the timed forwards), ``efficiency`` =
    speedup / mac_ratio, ``overhead_at_kr1`` = patched at keep rate 1.0 vs stock timm (fraction; both with the
    same ``linear`` backend), ``compile`` and ``first_call_s_full`` / ``_pruned`` / ``_kr1`` (seconds of each
    model's first call, compilation included; NaN where no keep-rate-1.0 model ran), ``spread``
    (median, quartiles, IQR, MAD of every model's times and of the paired per-round ratios), every parameter, and
    the machine (device and CPU model, threads, torch version, load average before and after).
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

    from ..errors import TpruneError
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


def short_device_name(name: str) -> str:
    """'Intel(R) Xeon(R) Processor' -> 'Intel Xeon': a label short enough for a chart."""
    for mark in ("(R)", "(TM)", " Processor", " CPU"):
        name = name.replace(mark, "")
    return " ".join(name.split()[:3]) if name.strip() else "unknown device"


# Issue 19's efficiency targets on a CPU: batch 1, keep rate 0.5, ViT-B; patch tokens -> speed-up / MAC ratio.
CPU_TARGETS = {64: 0.90, 256: 0.95}


def target_table(grid):
    """Batch-1 TopK 0.5 rows of a CPU grid as one row per (CPU, threads, wait policy, compile mode, linear layers,
    family) and one efficiency column per token count, next to the targets (``CPU_TARGETS``)."""
    import pandas as pd

    g = grid[(grid.device == "cpu") & (grid.batch == 1) & (grid.method == "topk") & (grid.keep_rate == 0.5)
             & grid.tokens.isin(list(CPU_TARGETS))].copy()
    for column, value in (("compile", "none"), ("linear", "default"), ("omp_wait_policy", "default")):
        g[column] = g[column].fillna(value) if column in g else value
    g["cpu"] = g.device_name.map(short_device_name)
    index = ["cpu", "threads", "omp_wait_policy", "compile", "linear", "family"]
    table = g.pivot_table(index=index, columns="tokens", values="efficiency", aggfunc="median")
    table.columns = [f"{t} tokens" for t in table.columns]
    for t, target in CPU_TARGETS.items():
        if f"{t} tokens" in table:
            table[f"{t} tokens meets {target:.2f}"] = table[f"{t} tokens"] >= target
    return table.reset_index().rename(columns={"omp_wait_policy": "OMP wait"}) if len(g) else pd.DataFrame()


def load_profiles(root=None) -> list[dict]:
    """The JSON summaries ``bench/cpu_profile.py`` writes beside its text reports (``results/bench/``), sorted by CPU
    and token count: wall efficiency per linear backend, the linear layers' ceiling, memory bandwidth."""
    import json

    from .results import repo_root

    base = Path(root) if root is not None else (repo_root() or Path.cwd()) / "results" / "bench"
    found = [json.loads(p.read_text()) for p in sorted(base.glob("cpu_profile*.json"))]
    return sorted(found, key=lambda d: (d["cpu_name"], d["tokens"], d.get("omp_wait_policy", "")))
