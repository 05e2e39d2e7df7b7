"""AST- and AudioMAE-style audio transformers on a stock timm VisionTransformer.

Both families take a batch of normalized fbank features shaped ``(B, frames, mel)`` and lay it out as a one-channel
image themselves, so the token order matches the official models:

- ``ast``: image ``(B, 1, mel, frames)`` -> tokens frequency-major (index ``f * T' + t``); CLS and distillation token;
  output ``(x[:, 0] + x[:, 1]) / 2`` after the final norm, then LayerNorm + Linear (AST's ``mlp_head``).
- ``audiomae``: image ``(B, 1, frames, mel)`` -> tokens time-major (index ``t * F' + f``); a CLS token that attends
  but is never read out; mean of the patch tokens -> ``fc_norm`` -> head.

The only departures from timm's ``VisionTransformer`` are the input layout and AST's two-token pooling; blocks,
attention and ``state_dict`` keys are timm's own, so pruning can patch them in place.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from ..errors import CheckpointError, ConfigError
from ..rules import FAMILIES, MEL_BINS, PATCH, SIZES, check_model   # FAMILIES, SIZES: re-exported for callers


class AudioViT(VisionTransformer):
    """timm ViT fed with ``(B, frames, mel)`` fbank features; ``family`` fixes the layout and the pooling."""

    family: str = "audiomae"

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # already an image
            return x
        if x.dim() != 3:
            raise ConfigError(f"model input: expected (batch, frames, mel) features, got shape {tuple(x.shape)}")
        x = x.unsqueeze(1)
        return x.transpose(2, 3) if self.family == "ast" else x

    def forward_features(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return super().forward_features(self.to_image(x), **kwargs)

    def pool(self, x: torch.Tensor, pool_type=None) -> torch.Tensor:
        if self.family == "ast":
            return (x[:, 0] + x[:, 1]) / 2
        if x.shape[1] == self.num_prefix_tokens:
            # Pruning left no patch token (see pruning.intensity_range): the CLS output is all there is.
            return x[:, 0]
        return x[:, self.num_prefix_tokens:].mean(dim=1)


def create_model(family: str, size: str, frames: int, num_classes: int, mel: int = MEL_BINS,
                 **kwargs) -> AudioViT:
    """An AST- or AudioMAE-style ViT with 16x16 patches for a ``(mel, frames)`` fbank grid."""
    check_model(family, size, frames, mel)
    dim, depth, heads = SIZES[size]
    img_size = (mel, frames) if family == "ast" else (frames, mel)
    common = dict(img_size=img_size, patch_size=PATCH, in_chans=1, num_classes=num_classes, embed_dim=dim,
                  depth=depth, num_heads=heads, mlp_ratio=4.0, qkv_bias=True,
                  norm_layer=partial(nn.LayerNorm, eps=1e-6), dynamic_img_size=False)
    common.update(kwargs)
    if family == "ast":
        # The distillation token is timm's single register token: a second prefix token with its own position.
        model = AudioViT(class_token=True, reg_tokens=1, global_pool="token", fc_norm=False, **common)
        model.fc_norm = nn.LayerNorm(dim)  # AST's mlp_head[0]; default eps as in AST
    else:
        model = AudioViT(class_token=True, global_pool="avg", fc_norm=True, **common)
    model.family = family
    model.size_name = size
    model.frames, model.mel = frames, mel
    return model


def patch_grid(model: AudioViT) -> tuple[int, int]:
    """(rows, cols) of the token grid in the model's token order: AST (mel/16, frames/16), AudioMAE the transpose."""
    return tuple(model.patch_embed.grid_size)


def patch_pixels(model: AudioViT, x: torch.Tensor) -> torch.Tensor:
    """The 16x16 input patch under every patch token: ``(B, n_patches, 256)`` in the model's token order."""
    img = model.to_image(x)
    b = img.shape[0]
    patches = img.unfold(2, PATCH, PATCH).unfold(3, PATCH, PATCH)  # (B, 1, rows, cols, 16, 16)
    return patches.reshape(b, -1, PATCH * PATCH)


def patch_positions_tf(model: AudioViT) -> torch.Tensor:
    """For every patch token (model order): its (time index, frequency index) on the fbank grid."""
    rows, cols = patch_grid(model)
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    r, c = r.flatten(), c.flatten()
    return torch.stack([c, r], 1) if model.family == "ast" else torch.stack([r, c], 1)


# ---------------------------------------------------------------------------------------------------------------
# Execution switches. Each changes how a model computes, never what it computes or its state_dict.

@contextmanager
def explicit_attention(module: nn.Module):
    """Every attention in ``module`` (timm's ``fused_attn`` flag) written out as matmul + softmax inside the block,
    the fused kernel restored after it, also on error."""
    attns = [m for m in module.modules() if hasattr(m, "fused_attn")]
    saved = [a.fused_attn for a in attns]
    for a in attns:
        a.fused_attn = False
    try:
        yield
    finally:
        for a, fused in zip(attns, saved):
            a.fused_attn = fused


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` whose fp32 CPU inference calls oneDNN's matrix product on a copy of the weight packed once in
    oneDNN's own layout, instead of the BLAS product (MKL) that ``F.linear`` uses. Same parameters, same
    ``state_dict``, same results to float rounding; the packed copy costs as much memory as the weight. Why: from
    257 to 33 tokens (a pruned ViT-B) MKL's cost per token about doubles, packed oneDNN's rises 1.4x, and packed
    oneDNN is faster at every count (``bench/cpu_profile.py``). The copy is re-packed whenever the weight changes
    (an optimizer step, ``load_state_dict``, a move) and left out of copies and pickles. Anything else (autograd,
    autocast, other dtypes or devices, a dispatch mode such as the FLOP counter, which does not know the oneDNN op)
    takes ``nn.Linear``'s own path."""

    def forward(self, x):
        w = self.weight
        if (x.device.type == "cpu" and x.dtype == torch.float32 and w.dtype == torch.float32
                and not torch.is_autocast_enabled("cpu")
                and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
                and _get_current_dispatch_mode() is None):
            # A weight made under inference_mode has no version counter to tell when it changed: not cached.
            weight = w if w.is_inference() else self._packed_weight()
            return torch.ops.mkldnn._linear_pointwise(x, weight, self.bias, "none", [], "")
        return super().forward(x)

    def _packed_weight(self):
        key = (self.weight.data_ptr(), self.weight._version, tuple(self.weight.shape))
        cached = self.__dict__.get("_onednn_pack")
        if cached is None or cached[0] != key:
            cached = (key, torch.ops.mkldnn._reorder_linear_weight(self.weight.detach()))
            self.__dict__["_onednn_pack"] = cached
        return cached[1]

    def __getstate__(self):   # deepcopy / pickle: the packed copy is a cache, rebuilt on the next forward
        state = self.__dict__.copy()
        state.pop("_onednn_pack", None)
        return state


def onednn_linear(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Re-class every plain ``nn.Linear`` in ``module`` in place as ``OneDNNLinear`` (``enabled=False``: back).
    Returns ``module``. Raises ``ConfigError`` where this torch build has no oneDNN."""
    if enabled and not onednn_available():
        raise ConfigError("onednn_linear: this torch build has no oneDNN (torch.backends.mkldnn); use the default "
                          "linear layers")
    for m in module.modules():
        if enabled and type(m) is nn.Linear:
            m.__class__ = OneDNNLinear
        elif not enabled and type(m) is OneDNNLinear:
            m.__dict__.pop("_onednn_pack", None)
            m.__class__ = nn.Linear
    return module


# ---------------------------------------------------------------------------------------------------------------
# Official checkpoints. Neither can be downloaded here; the code maps their key layouts onto ours.

def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def ast_checkpoint_filter(state: dict, model: AudioViT) -> dict:
    """AST (``module.v.*``, ``module.mlp_head.*``) -> our keys; position embeddings centre-cropped in time."""
    if any(k.startswith("module.") for k in state):
        state = _strip(state, "module.")
    out = {}
    for k, v in state.items():
        if k.startswith("v."):
            k = k[2:]
            k = "reg_token" if k == "dist_token" else k
            if k.startswith("head") or k.startswith("head_dist"):
                continue  # unused ImageNet heads of the DeiT backbone
        elif k.startswith("mlp_head.0."):
            k = "fc_norm." + k[len("mlp_head.0."):]
        elif k.startswith("mlp_head.1."):
            k = "head." + k[len("mlp_head.1."):]
        out[k] = v
    if "pos_embed" in out:
        out["pos_embed"] = _crop_pos_embed(out["pos_embed"], model, mode="centre")
    return out


def audiomae_checkpoint_filter(state: dict, model: AudioViT) -> dict:
    """AudioMAE fine-tuned (``model`` dict) -> our keys; position embeddings: the first T/16 time rows."""
    state = state.get("model", state)
    out = {k: v for k, v in state.items() if not k.startswith(("decoder", "mask_token"))}
    if "pos_embed" in out:
        out["pos_embed"] = _crop_pos_embed(out["pos_embed"], model, mode="first")
    return out


def transfer_filter(state: dict, model: AudioViT) -> dict:
    """A supervised run of another dataset (same family and size) -> this model's keys, head left out (the classes
    differ; it is trained anew). Position embeddings are cropped to a shorter time axis or linearly stretched to a
    longer one, as AST stretches its ImageNet embeddings to the spectrogram's width."""
    out = {k: v for k, v in state.items() if not k.startswith("head.")}
    if "pos_embed" in out:
        out["pos_embed"] = _crop_pos_embed(out["pos_embed"], model, mode="stretch")
    return out


def _crop_pos_embed(pos: torch.Tensor, model: AudioViT, mode: str) -> torch.Tensor:
    """Cut a checkpoint's position embeddings down to the model's (shorter) time axis: from the ``centre``, from the
    ``first`` row, or ``stretch`` them (linear interpolation along time) to any length."""
    want = model.pos_embed.shape[1]
    if pos.shape[1] == want:
        return pos
    p = model.num_prefix_tokens
    rows, cols = patch_grid(model)
    prefix, grid = pos[:, :p], pos[:, p:]
    dim = pos.shape[-1]
    ast = model.family == "ast"  # AST's grid is (mel/16, time), AudioMAE's (time, mel/16)
    bands, t_model = (rows, cols) if ast else (cols, rows)
    if grid.shape[1] % bands:
        raise CheckpointError(f"pos_embed: {grid.shape[1]} patch positions do not tile {bands} frequency bands")
    t_ckpt = grid.shape[1] // bands
    if mode == "stretch":   # timm's resampler, bilinear along the time axis alone (the band axis keeps its size)
        old, new = ((bands, t_ckpt), (bands, t_model)) if ast else ((t_ckpt, bands), (t_model, bands))
        return resample_abs_pos_embed(pos, new_size=list(new), old_size=list(old), num_prefix_tokens=p,
                                      interpolation="bilinear", antialias=False, align_corners=False)
    if t_ckpt < t_model:
        raise CheckpointError(f"pos_embed: checkpoint has {t_ckpt} time patches, model needs {t_model}")
    # AST's own centre: t_ckpt // 2 - t_model // 2 (differs from (t_ckpt - t_model) // 2 for an odd t_model).
    start = t_ckpt // 2 - t_model // 2 if mode == "centre" else 0
    if ast:
        grid = grid.reshape(1, bands, t_ckpt, dim)[:, :, start:start + t_model]
    else:
        grid = grid.reshape(1, t_ckpt, bands, dim)[:, start:start + t_model]
    return torch.cat([prefix, grid.reshape(1, -1, dim)], dim=1)


def load_official_checkpoint(model: AudioViT, checkpoint, family: str | None = None,
                             strict: bool = True, head: bool = True) -> AudioViT:
    """Load an official AST or AudioMAE checkpoint (a path or a state dict) into ``model``.

    ``family`` (optional) states which layout the checkpoint has; it must match the model's.
    ``head=False``: the encoder only, for a fine-tune on other classes (``TrainConfig.init="official:PATH"``): the
    classifier starts fresh, and so does AudioMAE's pooling norm (``fc_norm``) when the checkpoint has none (its
    pretrained encoder ends in ``norm``, which mean pooling leaves out; AudioMAE's own fine-tuning does the same).
    Raises CheckpointError naming missing and unexpected keys and every mismatched shape.
    """
    if family is not None and family != model.family:
        raise ConfigError(f"family: checkpoint layout {family!r} does not match the {model.family!r} model")
    source = str(checkpoint) if not isinstance(checkpoint, dict) else "state dict"
    if not isinstance(checkpoint, dict):
        try:
            checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"{source}: cannot read checkpoint ({exc})") from exc
    filt = ast_checkpoint_filter if model.family == "ast" else audiomae_checkpoint_filter
    state = filt(checkpoint, model)
    own = model.state_dict()
    fresh = set()
    if not head:
        state = {k: v for k, v in state.items() if not k.startswith("head.") and (k in own or not k.startswith("norm."))}
        fresh = {k for k in own if k.startswith("head.") or (k.startswith("fc_norm.") and k not in state)}
    missing = sorted(set(own) - set(state) - fresh)
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    problems = []
    if missing and strict:
        problems.append(f"missing keys {missing}")
    if unexpected and strict:
        problems.append(f"unexpected keys {unexpected}")
    if shapes:
        problems.append("mismatched shapes: " + "; ".join(shapes))
    if problems:
        raise CheckpointError(f"{source} does not fit {model.family} "
                              f"({model.embed_dim}-dim, {len(model.blocks)} blocks): " + " | ".join(problems))
    model.load_state_dict(state, strict=strict and head)
    return model
