"""Accuracy and MACs of a model on a feature set, as trained or under a pruning setting.

    evaluate(model, features)                                   # the model as it is (patched or not)
    evaluate(model, features, method="topk", keep_rate=0.5)     # accuracy, n_clips, gmacs_per_clip, ...

A multi-label feature set (multi-hot ``y``, tprune_core.data.targets) adds ``metric: "mAP"``, ``mAP`` and
``n_scored_classes``; its ``accuracy`` is the top-1 hit rate (the arg-max class is one of the clip's labels).

Uses only the public pruning API: a pruning setting is applied for the call (``pruning.patched``), which puts
the previous one back.
"""
from __future__ import annotations

import contextlib
import sys

import torch
from tqdm import tqdm

from ..data.features import crop_frames   # also importable from here, its old home
from ..data.targets import hits, is_multilabel, multilabel_metrics
from ..errors import ConfigError
from ..nn.macs import model_macs
from ..nn.pruning import (PruneSettings, first_drop_counts, forward_from, hidden_before, last_forward, patched,
                          settings)
from ..rules import DEFAULT_DROP_LOC
from .runtime import autocast


@torch.no_grad()
def evaluate(model, features, method=None, keep_rate=1.0, drop_loc=DEFAULT_DROP_LOC, batch_size=128, options=None,
             split=None, precision="fp32", progress=False, shared=None) -> dict:
    """Accuracy and mean GMACs per clip of ``model`` on a FeatureSet (or anything with ``.x``, ``.y``).

    ``method=None`` evaluates the model as it is (patched or not); a method patches it for the call and puts the
    previous state back afterwards. Clips longer than the model's input are cut to their first ``model.frames``.
    ``shared``: a dict that calls over the same model, features, batch size and precision pass along; the unpruned
    blocks before the first drop location are then computed once per clip and reused (same numbers where the
    batches are the same; it holds every clip's tokens at that block, so its memory grows with the split).
    A per-clip method whose counts the input decides (intensity_range) runs clips sorted by count, so that padding
    to a batch's largest count wastes little; per-clip results come back in feature order.
    """
    x_all, y_all = features.x, torch.as_tensor(features.y)
    if x_all.dim() != 3 or x_all.shape[2] != model.mel:
        raise ConfigError(f"evaluate: features must be (N, frames, {model.mel}), got {tuple(x_all.shape)}")
    if len(x_all) == 0:
        raise ConfigError("evaluate: the feature set is empty")
    device = next(model.parameters()).device
    setting = None if method is None else PruneSettings(method, keep_rate, tuple(drop_loc), dict(options or {}))
    was_training = model.training
    correct, macs, tokens, empty, per_class, right_all = 0, [], [], 0, None, []
    scores = [] if is_multilabel(y_all) else None   # multi-label: every logit, for mAP
    with contextlib.nullcontext() if setting is None else patched(model, setting):
        state = settings(model)
        model.eval()
        try:
            order = None if setting is None else _similar_counts_order(model, x_all, setting, device)
            bar = tqdm(range(0, len(x_all), batch_size), desc="evaluating", unit="batch", leave=False,
                       disable=not progress, file=sys.stderr)
            # blocks before the first drop are unpruned: with ``shared`` they run once per clip for all settings
            start = min(state.drop_loc) if (shared is not None and method is not None) else 0
            for i in bar:
                rows = slice(i, i + batch_size) if order is None else order[i:i + batch_size]
                x = _model_input(model, x_all[rows], device)
                with autocast(device, precision):
                    if start > 0:
                        prefix = _shared_prefix(shared, model, features, start, batch_size, precision, device)
                        logits = forward_from(model, x, prefix[rows], start)
                    else:
                        logits = model(x)
                y = y_all[rows]
                if scores is not None:
                    correct += hits(logits, y)
                    scores.append(logits.float().cpu())
                else:   # one arg-max gives both the count and the per-class tally
                    right = logits.argmax(1).cpu() == y
                    correct += int(right.sum())
                    right_all.append(right)
                    per_class = _per_class(per_class, y, right, logits.shape[1])
                last = last_forward(model) if state is not None else None
                t = last.tokens if last is not None else None
                m = model_macs(model, t)
                macs.append(m.expand(len(x)) if m.numel() == 1 else m)
                if t is not None:
                    tokens.append(t[..., 0].float())
                    empty += last.n_empty  # intensity_range clips left with no patch token
        finally:
            model.train(was_training)
    n = len(x_all)
    out = {"accuracy": correct / n, "n_clips": n, "n_correct": correct,
           "gmacs_per_clip": torch.cat(macs).mean().item() / 1e9,
           "method": state.method if state else None, "keep_rate": state.keep_rate if state else 1.0,
           "drop_loc": list(state.drop_loc) if state else list(drop_loc),
           "split": split if split is not None else getattr(features, "split", None) or None,
           "n_empty": empty}
    if scores is not None:
        out.update(multilabel_metrics(_in_feature_order(torch.cat(scores), order), y_all))
    else:   # per-class accuracy = correct / clips (a class with no test clip has 0 clips)
        out.update(per_class_correct=per_class[0].tolist(), per_class_clips=per_class[1].tolist())
        # per clip, row-aligned with the features ("1" right, "0" wrong): for intervals over test clips
        right = _in_feature_order(torch.cat(right_all), order).tolist()
        out["correct_per_clip"] = "".join("1" if r else "0" for r in right)
    if tokens:
        out["tokens_per_block"] = torch.cat(tokens).mean(0).tolist()
    return out


def _model_input(model, x: torch.Tensor, device) -> torch.Tensor:
    """Clips as the model reads them: float, their first ``model.frames`` frames, on ``device``."""
    return crop_frames(x.float(), model.frames, random=False).to(device)


def _similar_counts_order(model, x_all, setting: PruneSettings, device) -> torch.Tensor | None:
    """Clip order for a per-clip method whose kept counts the input decides (``pruning.first_drop_counts``): by
    count, so each batch is padded to little more than its own clips' counts; None keeps the feature order. Results
    are put back in feature order; only a random draw (matched controls) depends on which clips share a batch."""
    counts = []
    for i in range(0, len(x_all), 256):
        c = first_drop_counts(model, _model_input(model, x_all[i:i + 256], device), setting)
        if c is None:
            return None
        counts.append(c.cpu())
    return torch.argsort(torch.cat(counts), stable=True)


def _shared_prefix(shared: dict, model, features, start: int, batch_size: int, precision: str, device):
    """The tokens entering block ``start`` for every clip of ``features`` (unpruned blocks 0..start-1, computed in
    feature-order batches once per model, features, batch size, precision and start), rows in feature order."""
    key = (id(features), batch_size, precision, start)
    if key not in shared:
        x_all, parts = features.x, []
        for i in range(0, len(x_all), batch_size):
            with autocast(device, precision):
                parts.append(hidden_before(model, _model_input(model, x_all[i:i + batch_size], device), start))
        shared[key] = torch.cat(parts)
    return shared[key]


def _in_feature_order(values: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    if order is None:
        return values
    out = torch.empty_like(values)
    out[order] = values
    return out


def _per_class(counts, y: torch.Tensor, right: torch.Tensor, num_classes: int):
    """Running (correct, clips) per class: per-class accuracy = correct / clips (classes never seen have 0 clips)."""
    if counts is None:
        counts = (torch.zeros(num_classes, dtype=torch.long), torch.zeros(num_classes, dtype=torch.long))
    return (counts[0] + torch.bincount(y[right], minlength=num_classes),
            counts[1] + torch.bincount(y, minlength=num_classes))
