"""What every training run needs around its model: run identity and folders, files, devices, RNG, the optimizer.

    d = resolve_device("auto")                            # cuda if there is one, else cpu
    with cpu_threads(1), deterministic(d), training_attention(model, d), autocast(d, "auto"):
        ...
    opt = adamw(param_groups(model, 0.05), lr=1e-3, betas=(0.9, 0.999))
    save_atomic(obj, run_dir_for(cfg) / "state.pt")       # torch.save (or JSON for .json), never half a file

Shared by supervised training (train.py), MAE pretraining (mae.py), the epoch loop both use (loop.py) and
evaluation (evaluation.py). Imports no other training module.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError
from ..fsio import atomic_write, atomic_write_json
from ..nn.models import explicit_attention
from ..paths import cache_root

TRAIN_VERSION = 2   # bump when the training code changes its numbers in a way the config does not show
# Fields that only change how a run is executed, never its numbers: left out of the hash.
OPERATIONAL = ("device", "threads", "ckpt_every", "eval_batch_size", "progress", "stream")
# Fields added after a config's first release: at these defaults they are left out of the hash, so every run made
# before they existed keeps its folder (its numbers are what the default gives).
ADDED_LATER = {"class_balance": False, "time_shift": 0, "augment_while_shrinking": True, "teacher": None,
               "distill": 0.5, "qk_norm": False, "layer_scale": None, "on_error": "raise"}


# ---------------------------------------------------------------------------------------------- run identity

def config_hash(cfg, data=None) -> str:
    """12 hex digits of sha256 over every field that changes a run's numbers (and the code version). ``data``: the
    content fingerprint of user-folder datasets (``datasets.data_fingerprint``), left out when None (built-in
    datasets are identified by name and protocol)."""
    d = {k: v for k, v in cfg.to_dict().items()
         if k not in OPERATIONAL and not (k in ADDED_LATER and v == ADDED_LATER[k])}
    d["_kind"], d["_version"] = type(cfg).__name__, TRAIN_VERSION
    if d.get("prune_method") == "random":   # its draws changed (an on-device hash since version 2): only its runs
        d["_random_draws"] = 2
    if data:
        d["_data"] = data
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def alternatives(values) -> str:
    """The allowed values as a config error names them: ``'a', 'b' or 'c'``."""
    *head, last = [repr(v) for v in values]
    return f"{', '.join(head)} or {last}" if head else last


def zoo_root() -> Path:
    return cache_root() / "zoo"


def run_dir_for(cfg) -> Path:
    return zoo_root() / cfg.hash()


# ---------------------------------------------------------------------------------------------- files

def save_atomic(obj, path: Path):
    """torch.save, or JSON for a ``.json`` path, through ``fsio.atomic_write``: never half a file."""
    path = Path(path)
    if path.suffix == ".json":
        atomic_write_json(path, obj, indent=1, default=str)
    else:
        atomic_write(path, lambda f: torch.save(obj, f))


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read JSON ({exc})") from exc


def load_torch(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a damaged or foreign file: say which
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc})") from exc


def weights_digest(model) -> str:
    """sha256 of every tensor of the state_dict (names and bytes): a fingerprint to compare runs bit for bit."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- devices and RNG

def processor_name(device: torch.device | str = "cpu") -> str:
    """The CPU model (from /proc/cpuinfo) or the CUDA device's name: numbers differ between machines (an AMD EPYC
    and an Intel Xeon give other timings and, through other kernels, other trained weights)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str = "cpu") -> dict:
    """What a trained model or a computed table must record to be reproduced: processor, threads, versions."""
    import platform

    import numpy
    import timm
    flags = set()
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        pass
    return {"processor": processor_name(device), "cpu_features": [f for f in ("avx2", "avx512f", "amx_tile")
                                                                   if f in flags],
            "device": str(device), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "timm": timm.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r}: CUDA is not available on this machine")
    return dev


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA by default (no loss scaler needed), on CPU only when asked for."""
    use = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use)


@contextlib.contextmanager
def cpu_threads(n: int | None):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def deterministic(device: torch.device):
    """Deterministic kernels on CPU (cheap there); on CUDA they would need CUBLAS_WORKSPACE_CONFIG and cost speed."""
    old = torch.are_deterministic_algorithms_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old)


def rng_state(device: torch.device) -> dict:
    s = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        s["cuda"] = torch.cuda.get_rng_state(device)
    return s


def set_rng_state(state: dict, device: torch.device):
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ---------------------------------------------------------------------------------------------- optimization

def lr_at(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float = 0.0) -> float:
    """Linear warmup from 0 to ``lr`` over ``warmup_steps``, then a cosine down to ``min_lr`` at ``total_steps``."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * t))


def param_groups(model, weight_decay: float) -> list:
    """No weight decay on biases, norms, position embeddings and prefix tokens (as DeiT/MAE)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or name in ("pos_embed", "cls_token", "reg_token") or name.endswith("_token")
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(groups, lr: float, betas: tuple) -> torch.optim.AdamW:
    """AdamW with the fused kernel (CPU and CUDA). On 2 CPU cores the default per-parameter loop took 40 ms of a
    330 ms ViT-tiny step (batch 32, 49 tokens), the fused kernel 12 ms."""
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=True)


def training_attention(module, device: torch.device):
    """Explicit (matmul + softmax) attention in every block while training on CPU, timm's fused path otherwise.

    PyTorch's CPU flash-attention backward is slow for short sequences: 7 ms per block for ViT-tiny at batch 32 and
    49 tokens, a quarter of the training step; the explicit path makes the step ~20% faster. Evaluation keeps the
    fused path (its forward is fine)."""
    return explicit_attention(module) if device.type == "cpu" else contextlib.nullcontext()


def optimizer_step(loss, module, opt, grad_clip: float):
    """One update: backward, optional gradient-norm clipping, step (shared by supervised and MAE training)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(module.parameters(), grad_clip)
    opt.step()
