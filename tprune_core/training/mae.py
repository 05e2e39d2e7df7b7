"""AudioMAE-style self-supervised pretraining of the ``audiomae`` family's encoder, and loading it for fine-tuning.

    cfg = MAEConfig(sources=[{"dataset": "speechcommands", "frames": 96},
                             {"dataset": "urbansound8k", "protocol": {"test_fold": 10}, "frames": 400}])
    run_dir = pretrain(cfg)                                   # $TPRUNE_CACHE/zoo/<hash>/encoder.pt
    model = create_model("audiomae", "tiny", 96, 11); load_encoder(model, run_dir / "encoder.pt")

What it does (He et al. 2022; Huang et al. 2022, AudioMAE): every clip is cut to a window of ``crop_frames`` frames;
``mask_ratio`` of its 16x16 patch tokens are hidden (a fresh random choice per clip, seeded by (seed, step)); the
encoder — the very timm blocks of ``create_model("audiomae", ...)`` — sees only the visible tokens plus CLS; a light
decoder (``decoder_depth`` narrow blocks) gets the encoded tokens back in place with a shared mask token at every
hidden position and predicts each patch's 256 pixels; the loss is the mean squared error against the per-patch
normalized pixels (``norm_pix``), averaged over the masked patches only.

Clips of different lengths (1 s Speech Commands, 4 s UrbanSound8K) are pooled by cropping windows of a common length
at 16-frame offsets. Position embeddings are fixed 2-D sin-cos (as MAE/AudioMAE) over a grid as long as the longest
source, and each window gets the rows of its true time position. The fine-tuning model's (learnable) position
embedding starts from the same sin-cos function on its own grid, so every time row it uses was seen in pretraining
and the weights transfer without interpolation.

Only TRAINING splits are read. The UrbanSound8K training split depends on ``test_fold``: pretrain with the same
protocol as the fine-tune, or the test fold leaks in unlabeled form.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path

import torch
from torch import nn
from timm.models.vision_transformer import Block

from ..data.datasets import data_fingerprint
from ..errors import CheckpointError, ConfigError
from ..nn.models import create_model, patch_grid, patch_pixels
from ..rules import PATCH, check_patch_multiple, fields_of
from ..source import code_version
from .config import Schedule, check_schedule
from .loop import Task, run_epochs
from .runtime import (TRAIN_VERSION, adamw, autocast, config_hash, cpu_threads, deterministic, load_torch,
                      machine_info, param_groups, read_json, resolve_device, run_dir_for, save_atomic)


@dataclass
class MAEConfig(Schedule):
    """MAE pretraining of an encoder on one or more datasets' clips (the shared fields: ``config.Schedule``)."""
    sources: list = field(default_factory=lambda: [{"dataset": "speechcommands", "protocol": {}, "frames": 96}])
    crop_frames: int = 96                # common window length (multiple of 16)
    mask_ratio: float = 0.8
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix: bool = True
    epochs: int = 20                     # Schedule's fields with MAE's own defaults
    batch_size: int = 64
    warmup_epochs: float = 2.0

    def __post_init__(self):
        self.sources = [dict(dataset=s["dataset"], protocol=dict(s.get("protocol") or {}), frames=int(s["frames"]))
                        for s in self.sources]
        check_schedule(self)
        with fields_of("MAEConfig"):
            check_patch_multiple("crop_frames", self.crop_frames)
        bad = [s for s in self.sources if s["frames"] < self.crop_frames or s["frames"] % PATCH]
        if not self.sources or bad:
            raise ConfigError(f"MAEConfig.sources: expected datasets with frames >= crop_frames={self.crop_frames} "
                              f"and a multiple of {PATCH}, got {bad or self.sources}")
        if not 0 < self.mask_ratio < 1:
            raise ConfigError(f"MAEConfig.mask_ratio: expected a number in (0, 1), got {self.mask_ratio}")

    @property
    def max_frames(self) -> int:
        return max(s["frames"] for s in self.sources)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MAEConfig":
        known = {f.name for f in fields(cls)}
        if set(d) - known:
            raise ConfigError(f"MAEConfig: unknown field(s) {sorted(set(d) - known)}")
        return cls(**d)

    def hash(self) -> str:
        """As TrainConfig.hash: user-folder sources add their content fingerprints."""
        prints = [data_fingerprint(s["dataset"], s["protocol"]) for s in self.sources]
        return config_hash(self, data=prints if any(prints) else None)


# ---------------------------------------------------------------------------------------------- pieces

def sincos_pos_embed(rows: int, cols: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (rows * cols, dim), row-major: half the channels encode the row
    (time for audiomae), half the column (frequency)."""
    if dim % 4:
        raise ConfigError(f"sincos_pos_embed: dim must be a multiple of 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                          indexing="ij")
    parts = []
    for pos in (r.flatten(), c.flatten()):
        angle = pos[:, None] * omega[None]
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1).float()


def random_masking(batch: int, n: int, ratio: float, generator=None, device=None):
    """Per clip, hide ``round(ratio * n)`` of ``n`` tokens at random. Returns ``keep`` (B, n_keep) indices of the
    visible tokens (ascending), ``mask`` (B, n) with 1 = hidden, and ``restore`` (B, n): the permutation that puts
    [visible..., hidden...] back in token order."""
    n_mask = int(round(ratio * n))
    if not 0 < n_mask < n:
        raise ConfigError(f"mask_ratio={ratio}: hides {n_mask} of {n} tokens; expected at least one hidden and one "
                          "visible token")
    noise = torch.rand(batch, n, generator=generator)
    shuffle = noise.argsort(dim=1)
    keep = shuffle[:, :n - n_mask].sort(dim=1).values
    hidden = shuffle[:, n - n_mask:]
    order = torch.cat([keep, hidden], dim=1)
    restore = order.argsort(dim=1)
    mask = torch.ones(batch, n)
    mask.scatter_(1, keep, 0.0)
    if device is not None:
        keep, mask, restore = keep.to(device), mask.to(device), restore.to(device)
    return keep, mask, restore


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True) -> torch.Tensor:
    """Mean over hidden patches of the per-patch MSE; ``target`` normalized per patch when ``norm_pix``."""
    if norm_pix:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


def _gather(x, idx):
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


class MaskedAutoencoder(nn.Module):
    """An audiomae ``AudioViT`` encoder on the visible tokens and a narrow decoder for the hidden ones."""

    def __init__(self, cfg: MAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = create_model("audiomae", cfg.size, cfg.crop_frames, num_classes=0, mel=cfg.mel)
        dim = self.encoder.embed_dim
        self.rows, self.cols = patch_grid(self.encoder)              # window grid (time rows, frequency columns)
        self.max_rows = cfg.max_frames // PATCH
        self.register_buffer("pos", sincos_pos_embed(self.max_rows, self.cols, dim), persistent=False)
        self.encoder.pos_embed.requires_grad_(False)                 # the fixed table above is used instead
        self.encoder_norm = nn.LayerNorm(dim, eps=1e-6)              # audiomae's own `norm` is Identity (fc_norm)
        dd = cfg.decoder_dim
        self.decoder_embed = nn.Linear(dim, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.register_buffer("decoder_pos", sincos_pos_embed(self.max_rows, self.cols, dd), persistent=False)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.decoder_blocks = nn.Sequential(*[Block(dd, cfg.decoder_heads, mlp_ratio=4.0, qkv_bias=True,
                                                    norm_layer=norm) for _ in range(cfg.decoder_depth)])
        self.decoder_norm = norm(dd)
        self.decoder_pred = nn.Linear(dd, PATCH * PATCH)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def positions(self, row0: torch.Tensor) -> torch.Tensor:
        """(B, n) indices into the sin-cos tables of the window starting at time row ``row0`` (time-major order)."""
        local = torch.arange(self.rows * self.cols, device=row0.device)
        return row0[:, None] * self.cols + local[None]

    def forward(self, x: torch.Tensor, row0: torch.Tensor, keep: torch.Tensor, mask: torch.Tensor,
                restore: torch.Tensor):
        """``x`` (B, crop_frames, mel) windows starting at time rows ``row0``; returns (loss, pred (B, n, 256))."""
        enc = self.encoder
        pos_idx = self.positions(row0)
        tokens = enc.patch_embed(enc.to_image(x)) + self.pos[pos_idx]
        visible = _gather(tokens, keep)
        cls = (enc.cls_token + 0.0).expand(x.shape[0], -1, -1)     # MAE: the CLS position embedding is zero
        h = enc.norm_pre(torch.cat([cls, visible], dim=1))
        h = self.encoder_norm(enc.blocks(h))
        d = self.decoder_embed(h)
        hidden = self.mask_token.expand(x.shape[0], restore.shape[1] - keep.shape[1], -1)
        full = _gather(torch.cat([d[:, 1:], hidden], dim=1), restore) + self.decoder_pos[pos_idx]
        full = self.decoder_blocks(torch.cat([d[:, :1], full], dim=1))
        pred = self.decoder_pred(self.decoder_norm(full))[:, 1:]
        loss = mae_loss(pred, patch_pixels(enc, x), mask, self.cfg.norm_pix)
        return loss, pred

    def encoder_state(self) -> dict:
        """The encoder weights that transfer: everything but the position table, pooling norm and head."""
        skip = ("pos_embed", "fc_norm.", "head.")
        return {k: v.detach().cpu().clone() for k, v in self.encoder.state_dict().items() if not k.startswith(skip)}


def load_encoder(model, path) -> dict:
    """Load a pretrained MAE encoder into an ``audiomae`` AudioViT of any length; position embeddings are set to
    the same sin-cos function on the model's grid. Returns the encoder file's metadata."""
    if getattr(model, "family", None) != "audiomae":
        raise ConfigError(f"load_encoder: MAE weights fit family 'audiomae', got {getattr(model, 'family', None)!r}")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no MAE encoder here (run tprune_core.training.mae.pretrain first)")
    ck = load_torch(path)
    state = ck.get("encoder")
    if state is None:
        raise CheckpointError(f"{path}: not an MAE encoder file (no 'encoder' entry)")
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state and not k.startswith(("pos_embed", "fc_norm.", "head.")))
    unexpected = sorted(k for k in state if k not in own)
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
              if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(f"{path} does not fit this {model.embed_dim}-dim model: missing {missing}, "
                              f"unexpected {unexpected}, shapes {shapes}")
    model.load_state_dict(state, strict=False)
    rows, cols = patch_grid(model)
    with torch.no_grad():
        model.pos_embed.zero_()   # CLS position: zero, as in pretraining
        model.pos_embed[0, model.num_prefix_tokens:] = sincos_pos_embed(rows, cols, model.embed_dim)
    return {k: v for k, v in ck.items() if k != "encoder"}


# ---------------------------------------------------------------------------------------------- pretraining

def load_pool(cfg: MAEConfig, progress: bool = True) -> list:
    """The TRAINING split of every source (features normalized with that split's own statistics)."""
    from ..data.cache import load_features
    return [load_features(s["dataset"], "train", frames=s["frames"], mel_bins=cfg.mel, progress=progress,
                          **s["protocol"]) for s in cfg.sources]


def sample_windows(pool_x: list, clip_ids: torch.Tensor, crop: int, generator) -> tuple:
    """Windows of ``crop`` frames at random 16-frame offsets: (x (B, crop, mel), first time row (B,))."""
    xs, rows = [], []
    starts = torch.rand(len(clip_ids), generator=generator)
    for (src, i), u in zip(clip_ids.tolist(), starts.tolist()):
        x = pool_x[src][i]
        n_rows = (x.shape[0] - crop) // PATCH + 1
        r = min(int(u * n_rows), n_rows - 1)
        xs.append(x[r * PATCH:r * PATCH + crop])
        rows.append(r)
    return torch.stack(xs).float(), torch.tensor(rows)


class Pretraining(Task):
    """``pretrain``'s part of the shared epoch loop: masked windows from the pooled clips, no validation, the encoder
    (encoder.pt) and mae.json at the end."""
    lr_hint = "lower MAEConfig.lr"
    zero = (0.0, 0)   # loss * windows, windows

    def __init__(self, cfg: MAEConfig, pool: list, index: torch.Tensor, run_dir, mae, opt, device):
        tag = f"mae/{'+'.join(s['dataset'] for s in cfg.sources)}/s{cfg.seed}"
        super().__init__(cfg, run_dir, tag, mae, opt, device, len(index))
        self.pool, self.pool_x, self.index = pool, [fs.x for fs in pool], index

    def step(self, idx, step):
        cfg, mae = self.cfg, self.model
        # Windows and masks depend only on (seed, step): resumable without extra RNG state.
        g = torch.Generator().manual_seed(cfg.seed * 7_919 + step * 104_729 + 1)
        x, row0 = sample_windows(self.pool_x, self.index[idx], cfg.crop_frames, g)
        keep, mask, restore = random_masking(len(x), mae.rows * mae.cols, cfg.mask_ratio, g)
        x, row0, keep, mask, restore = (t.to(self.device) for t in (x, row0, keep, mask, restore))
        with autocast(self.device, cfg.precision):
            loss, _ = mae(x, row0, keep, mask, restore)
        return loss, (loss.item() * len(x), len(x))

    def postfix(self, sums):
        return {"loss": f"{sums[0] / sums[1]:.4f}"}

    def end_epoch(self, epoch, sums):
        return {"loss": sums[0] / max(sums[1], 1)}

    def describe(self, row):
        return f"loss {row['loss']:.4f}"

    def finish(self, history) -> Path:
        cfg = self.cfg
        save_atomic({"encoder": self.model.encoder_state(), "config": cfg.to_dict(), "hash": self.run_hash,
                     "train_version": TRAIN_VERSION}, self.run_dir / "encoder.pt")
        summary = {"hash": self.run_hash, "config": cfg.to_dict(), "history": history,
                   "final_loss": history[-1]["loss"], "train_seconds": history[-1]["seconds"], "steps": self.total,
                   "n_clips": self.n, "device": str(self.device), "machine": machine_info(self.device),
                   "code_version": code_version(),
                   "sources": [{"dataset": s["dataset"], "split": "train", "clips": len(fs.x),
                                "source": getattr(fs, "source", None)} for s, fs in zip(cfg.sources, self.pool)]}
        save_atomic(summary, self.run_dir / "mae.json")
        return self.run_dir


def pretrain(cfg: MAEConfig, pool=None) -> Path:
    """Pretrain (or resume, or find) the MAE of ``cfg``; returns the run folder holding ``encoder.pt``.
    ``pool``: the training FeatureSets (default: loaded from ``cfg.sources``)."""
    run_dir = run_dir_for(cfg)
    if (run_dir / "mae.json").is_file():
        return run_dir
    pool = load_pool(cfg, cfg.progress) if pool is None else pool
    device = resolve_device(cfg.device)
    index = torch.tensor([(s, i) for s, fs in enumerate(pool) for i in range(len(fs.x))])
    if len(index) // cfg.batch_size < 1:
        raise ConfigError(f"MAEConfig.batch_size={cfg.batch_size} exceeds the {len(index)} pooled training clips")
    with cpu_threads(cfg.threads), deterministic(device):
        torch.manual_seed(cfg.seed)
        mae = MaskedAutoencoder(cfg).to(device)
        opt = adamw(param_groups(mae, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
        return run_epochs(Pretraining(cfg, pool, index, run_dir, mae, opt, device))


def summary(run_dir) -> dict:
    return read_json(Path(run_dir) / "mae.json")
