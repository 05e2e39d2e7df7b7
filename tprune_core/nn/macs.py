"""Analytic multiply-accumulate counts of (pruned) audio ViTs, block by block, from the tokens entering each block.

Counted: every matrix product — patch embedding, qkv, q·kᵀ, attn·v, proj, MLP, head, and the extra products of
``evit_fuse`` (the attention-weighted sum of pruned tokens) and ``tome`` (token similarity). Not counted, as in
``torch.utils.flop_counter``: bias adds, LayerNorm, softmax, GELU, gathers. The count describes the model's
arithmetic with attention written out (``attn.fused_attn = False``); AST's fast scoring path adds one CLS query row
per scoring block (``n·d`` MACs, under 0.1% at any size here), which is not counted.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..rules import (DEFAULT_DROP_LOC, MEL_BINS, PATCH, SIZES, check_drop_loc, check_keep_rate, check_method,
                    check_model, check_positive_int, depth_of, load_function, pruning_method)
from .models import create_model, explicit_attention
from .pruning import kept_count, last_forward, settings, tome_rounds


@dataclass(frozen=True)
class Dims:
    """Everything the count needs to know about a model."""
    dim: int
    depth: int
    mlp_hidden: int
    prefix: int          # CLS (+ AST's distillation token)
    n_patches: int
    num_classes: int
    in_chans: int = 1

    @classmethod
    def of(cls, model) -> "Dims":
        return cls(model.embed_dim, len(model.blocks), model.blocks[0].mlp.fc1.out_features,
                   model.num_prefix_tokens, model.patch_embed.num_patches, model.num_classes,
                   model.patch_embed.proj.in_channels)

    @classmethod
    def spec(cls, family: str, size: str, frames: int, mel: int = MEL_BINS, num_classes: int = 527) -> "Dims":
        dim, depth, _ = SIZES[size]
        return cls(dim, depth, 4 * dim, 2 if family == "ast" else 1, (mel // PATCH) * (frames // PATCH), num_classes)


def block_macs(d: Dims, n_attn: int, n_mlp: int) -> dict:
    """MACs of one transformer block with ``n_attn`` tokens in attention and ``n_mlp`` after the drop."""
    return {
        "qkv": n_attn * d.dim * 3 * d.dim,
        "attn_matmul": 2 * n_attn * n_attn * d.dim,   # q·kᵀ and attn·v
        "proj": n_attn * d.dim * d.dim,
        "mlp": 2 * n_mlp * d.dim * d.mlp_hidden,
    }


def drop_extra_macs(d: Dims, method: str, n_patch_in: int, removed: int, fused_before: bool) -> int:
    """MACs a drop stage itself spends: its record's ``extra_macs`` (none for the ranking methods)."""
    extra = pruning_method(method).extra_macs
    if removed == 0 or extra is None:
        return 0
    return load_function(extra)(d, n_patch_in, removed, fused_before)


def evit_fuse_macs(d: Dims, n_patch_in: int, removed: int, fused_before: bool) -> int:
    """The weighted sum over the pruned tokens and the previous fused token."""
    return (removed + fused_before) * d.dim


def tome_macs(d: Dims, n_patch_in: int, removed: int, fused_before: bool) -> int:
    """Token similarity (src x dst dot products) of every bipartite matching round."""
    return sum(a * b * d.dim for a, b in tome_rounds(n_patch_in, removed))


def token_schedule(d: Dims, keep_rate: float = 1.0, drop_loc=DEFAULT_DROP_LOC, method: str = "topk") -> list:
    """(tokens entering attention, tokens entering the MLP, patch tokens removed) per block, for the methods whose
    budget is the same for every clip (``rules.fixed_budget_methods()``: all but intensity_range and adaptive)."""
    spec = pruning_method(method)
    if spec.per_clip:
        raise ConfigError(f"method: {method} keeps a different number of tokens per clip; count from a forward "
                          "pass (model_macs after calling the model)")
    n, fused, rows = d.n_patches, 0, []
    for b in range(d.depth):
        n_attn, removed = d.prefix + fused + n, 0
        if b in drop_loc:
            k = kept_count(n, keep_rate)
            removed, n = n - k, k
            fused = fused or int(spec.fuses and removed > 0)
        rows.append((n_attn, d.prefix + fused + n, removed))
    return rows


def macs_from_tokens(d: Dims, tokens, method: str = "topk") -> dict:
    """Per-block and total MACs for one clip, given its (depth, 3) token counts (see ``token_schedule``)."""
    parts = {"patch_embed": d.n_patches * d.dim * d.in_chans * PATCH * PATCH}
    per_block, fused, fuses = [], False, pruning_method(method).fuses
    for n_attn, n_mlp, removed in torch.as_tensor(tokens).tolist():
        blk = block_macs(d, n_attn, n_mlp)
        blk["drop"] = drop_extra_macs(d, method, n_attn - d.prefix - fused, removed, fused)
        fused = fused or (fuses and removed > 0)
        per_block.append(sum(blk.values()))
        for k, v in blk.items():
            parts[k] = parts.get(k, 0) + v
    parts["head"] = d.dim * d.num_classes
    return {"macs": sum(parts.values()), "per_block": per_block, "parts": parts,
            "tokens_per_block": [int(t[0]) for t in torch.as_tensor(tokens).tolist()]}


def _check_spec(family, size, frames, keep_rate, drop_loc, method, mel, num_classes):
    """The checks create_model and apply_pruning would make, for a model that is never built."""
    check_model(family, size, frames, mel)
    check_method(method)
    check_keep_rate(keep_rate)
    check_drop_loc(drop_loc, depth_of(size))
    check_positive_int("num_classes", num_classes)


def count_macs(family: str, size: str, frames: int, keep_rate: float = 1.0, drop_loc=DEFAULT_DROP_LOC,
               method: str = "topk", mel: int = MEL_BINS, num_classes: int = 527) -> dict:
    """MACs of a model given by name; ``gmacs`` and ``gmacs_per_block`` in units of 10^9."""
    drop_loc = tuple(int(b) for b in drop_loc)
    _check_spec(family, size, frames, keep_rate, drop_loc, method, mel, num_classes)
    d = Dims.spec(family, size, frames, mel, num_classes)
    out = macs_from_tokens(d, token_schedule(d, keep_rate, drop_loc, method), method)
    out["gmacs"] = out["macs"] / 1e9
    out["gmacs_per_block"] = [m / 1e9 for m in out["per_block"]]
    return out


def model_macs(model, tokens=None) -> torch.Tensor:
    """MACs per clip of ``model`` for its last forward (``tokens``: (B, depth, 3), default
    ``pruning.last_forward(model).tokens``); an unpatched model counts as unpruned."""
    d = Dims.of(model)
    patched = settings(model)
    if tokens is None:
        tokens = last_forward(model).tokens if patched is not None else torch.tensor(token_schedule(d))[None]
    method = patched.method if patched is not None else "topk"
    return torch.tensor([macs_from_tokens(d, t, method)["macs"] for t in tokens], dtype=torch.float64)


def macs_from_record(model, record) -> torch.Tensor:
    """MACs per clip of every forward recorded in ``record`` (a ``pruning.PruneRecord``), in call order."""
    return model_macs(model, record.tokens)


def flop_counter_macs(model, x) -> int:
    """MACs of one real forward measured by torch's FlopCounterMode (FLOPs / 2), attention written out."""
    from torch.utils.flop_counter import FlopCounterMode
    with explicit_attention(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


__all__ = ["Dims", "block_macs", "token_schedule", "macs_from_tokens", "count_macs", "model_macs",
           "macs_from_record", "flop_counter_macs", "create_model"]
