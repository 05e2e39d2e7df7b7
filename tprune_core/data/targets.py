"""Targets of single- and multi-label sets, the loss each is trained with, and the metrics each is scored by.

    y = multi_hot([(0, 2), (1,)], num_classes=3)     # (N, C) float32 rows of 0/1
    loss_fn = criterion(y)                             # F.cross_entropy for class ids, multilabel_loss for rows
    average_precision(scores, positives)               # one class; NaN without a positive
    mean_average_precision(scores, y)                  # (mAP, classes scored): macro mean over classes with a positive

A single-label set's targets are class ids, `(N,)` int64, scored by accuracy. A multi-label set's targets are
multi-hot rows, `(N, C)` float32 (1 for every class of the clip), trained with a sigmoid per class (binary
cross-entropy on the logits) and scored by mAP: the mean over classes of the average precision of ranking every clip
by that class's logit, over the classes with at least one positive clip in the split (a class without one has no
defined AP; AS-20K evaluations skip them the same way). Their "accuracy" is the top-1 hit rate: the share of clips
whose highest-scoring class is one of their labels.

An evaluation result (``evaluation.evaluate``) of a multi-label set carries ``metric: "mAP"`` and ``mAP``;
``headline`` reads the metric a result is judged by ("accuracy" when it names none).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError


def is_multilabel(y) -> bool:
    """True for multi-hot rows (N, C), False for class ids (N,)."""
    return torch.as_tensor(y).dim() == 2


def multi_hot(label_lists, num_classes: int) -> torch.Tensor:
    """(N, C) float32: row i is 1 at the classes of ``label_lists[i]`` (ints in 0..C-1), 0 elsewhere."""
    y = torch.zeros(len(label_lists), num_classes, dtype=torch.float32)
    for i, labels in enumerate(label_lists):
        bad = [c for c in labels if not 0 <= int(c) < num_classes]
        if bad:
            raise ConfigError(f"multi_hot: row {i} holds class ids {bad}; expected ints in 0..{num_classes - 1}")
        y[i, list(labels)] = 1.0
    return y


def multilabel_loss(logits: torch.Tensor, target: torch.Tensor, weight=None, label_smoothing: float = 0.0):
    """Binary cross-entropy on the logits, one sigmoid per class, mean over clips and classes. ``weight`` (C,)
    scales each class's term; ``label_smoothing`` eps moves each 0/1 target to eps/2 / 1 - eps/2 (smoothing each
    class's two outcomes, as F.cross_entropy smooths its C)."""
    target = target.float()
    if label_smoothing:
        target = target * (1 - label_smoothing) + label_smoothing / 2
    return F.binary_cross_entropy_with_logits(logits, target, weight=weight)


def criterion(y):
    """The loss for targets like ``y``: F.cross_entropy for class ids, multilabel_loss for multi-hot rows; both
    take (logits, target, weight=None, label_smoothing=0.0)."""
    return multilabel_loss if is_multilabel(y) else F.cross_entropy


def hits(logits: torch.Tensor, y: torch.Tensor) -> int:
    """Clips whose arg-max class is right: equals the class id, or is one of the clip's labels (multi-hot y)."""
    pred = logits.argmax(1).to(y.device)
    if is_multilabel(y):
        return int((y.gather(1, pred[:, None]) > 0).sum().item())
    return int((pred == y).sum().item())


def average_precision(scores, positives) -> float:
    """Average precision of ranking by ``scores`` (higher first) for the 0/1 ``positives``: the mean, over the
    positives, of the precision at the score threshold that admits them. Tied scores enter together (precision is
    taken after the whole tie), as sklearn.metrics.average_precision_score does. NaN when nothing is positive."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(positives, dtype=np.float64).ravel() > 0
    if s.shape != t.shape:
        raise ConfigError(f"average_precision: {s.size} scores but {t.size} targets")
    if not t.any():
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], t[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]          # each distinct score: its last (lowest-ranked) clip
    true_pos = np.cumsum(t)[last_of_tie]
    admitted = np.flatnonzero(last_of_tie) + 1
    new_pos = np.diff(np.r_[0, true_pos])                # positives each threshold admits
    return float(np.sum(new_pos * true_pos / admitted) / true_pos[-1])


def mean_average_precision(scores, y) -> tuple[float, int]:
    """(mAP, classes scored): the mean of ``average_precision`` over the classes (columns) of the multi-hot ``y``
    that have at least one positive; (NaN, 0) when none has."""
    s = torch.as_tensor(scores).double().cpu().numpy()
    t = torch.as_tensor(y).cpu().numpy()
    if s.shape != t.shape or s.ndim != 2:
        raise ConfigError(f"mean_average_precision: scores {s.shape} and targets {t.shape} must both be (N, C)")
    aps = [average_precision(s[:, c], t[:, c]) for c in range(t.shape[1]) if (t[:, c] > 0).any()]
    return (float(np.mean(aps)) if aps else math.nan), len(aps)


def multilabel_metrics(scores, y) -> dict:
    """What an evaluation adds for a multi-label set: the metric it is judged by, mAP, the classes mAP covers."""
    m, n = mean_average_precision(scores, y)
    return {"metric": "mAP", "mAP": m, "n_scored_classes": n}


def headline(result: dict) -> str:
    """The metric an evaluation result (or a training summary row) is judged by: "mAP" or "accuracy"."""
    return result.get("metric") or "accuracy"


def score_fields(result: dict, prefix: str = "") -> dict:
    """The metric fields a multi-label result adds to a row (``{prefix}mAP``, and ``metric`` without a prefix);
    nothing for a single-label one, so single-label rows stay as they were."""
    if headline(result) != "mAP":
        return {}
    return {f"{prefix}mAP": result["mAP"]} if prefix else {"metric": "mAP", "mAP": result["mAP"]}
