"""Multi-label sets: AP / mAP on hand-made scores, the metadata.csv `labels` and AudioSet layouts (bad rows named by
file and line), multi-hot caching, BCE training on generated two-source mixtures, and the command line."""
import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import MIX_SOURCES, make_mixtures, mixture, write_tone
from tprune_core import analysis, targets
from tprune_core import train as T
from tprune_core.cache import load_features
from tprune_core.cli import main
from tprune_core.datasets import find_datasets, load_dataset
from tprune_core.errors import DatasetError
from tprune_core.evaluation import evaluate
from tprune_core.models import create_model
from tprune_core.runtime import run_dir_for


def quiet(name, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_dataset(name, **kw)


# ------------------------------------------------------------------ average precision and mAP

def test_average_precision_of_a_hand_computed_ranking():
    # ranked: + - + - + ; precision at the positives 1/1, 2/3, 3/5
    ap = targets.average_precision([0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 0, 1])
    assert ap == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    assert targets.average_precision([0.1, 0.4, 0.2], [0, 1, 0]) == 1.0          # perfect ranking
    assert targets.average_precision([3, 2, 1], [0, 0, 1]) == pytest.approx(1 / 3)  # worst ranking
    assert math.isnan(targets.average_precision([0.3, 0.2], [0, 0]))              # no positive: undefined


def test_tied_scores_enter_together():
    # the positive shares its score with two negatives: precision is taken after the whole tie (1/3), not 1/1
    assert targets.average_precision([0.5, 0.5, 0.5, 0.1], [0, 1, 0, 0]) == pytest.approx(1 / 3)
    # ranked: {+, -} tied, then +: precision 1/2 for the first positive, 2/3 for the second
    assert targets.average_precision([0.8, 0.8, 0.3], [1, 0, 1]) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert targets.average_precision([1.0, 1.0, 1.0], [1, 1, 0]) == pytest.approx(2 / 3)  # all tied: the share


def test_map_skips_classes_without_a_positive_and_perfect_scores_give_one():
    y = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.float32)
    assert targets.mean_average_precision(y * 5 - 1, y) == (1.0, 2)     # class 2 has no positive: not scored
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.8, 0.7, 0.4], [0.2, 0.6, 0.3], [0.1, 0.2, 0.9]])
    ap0 = targets.average_precision(scores[:, 0], y[:, 0])              # + - + -: (1 + 2/3) / 2
    ap1 = targets.average_precision(scores[:, 1], y[:, 1])              # + + - -: 1
    assert ap0 == pytest.approx(5 / 6) and ap1 == 1.0
    assert targets.mean_average_precision(scores, y) == (pytest.approx((5 / 6 + 1) / 2), 2)
    m, n = targets.mean_average_precision(scores, torch.zeros(4, 3))
    assert math.isnan(m) and n == 0


def test_average_precision_matches_sklearn_with_ties():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(100):
        n = int(rng.integers(2, 40))
        scores = rng.integers(0, 6, n) / 5 if trial % 2 else rng.standard_normal(n)   # many ties, then none
        truth = rng.integers(0, 2, n)
        if truth.any():
            assert targets.average_precision(scores, truth) == pytest.approx(
                sklearn.average_precision_score(truth, scores), abs=1e-12)
    s, y = rng.standard_normal((50, 6)), (rng.random((50, 6)) < 0.3).astype(float)
    y[:, 4] = 0                                                          # sklearn's macro mean would include it
    kept = [c for c in range(6) if y[:, c].any()]
    ref = np.mean([sklearn.average_precision_score(y[:, c], s[:, c]) for c in kept])
    assert targets.mean_average_precision(torch.tensor(s), torch.tensor(y)) == (pytest.approx(ref), 5)


def test_multi_hot_loss_and_hits():
    y = targets.multi_hot([(0, 2), (1,), ()], 3)
    assert y.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]] and y.dtype == torch.float32
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.3, 0.2], [1.0, 0.0, 0.0]])
    assert targets.hits(logits, y) == 2                      # arg-max 0 in {0, 2}, 1 in {1}, 0 not in {}
    assert targets.hits(logits, torch.tensor([0, 2, 0])) == 2
    assert targets.criterion(y) is targets.multilabel_loss and targets.criterion(torch.tensor([0, 1])) is F.cross_entropy
    by_hand = -(y * F.logsigmoid(logits) + (1 - y) * F.logsigmoid(-logits)).mean()
    assert targets.multilabel_loss(logits, y) == pytest.approx(by_hand.item())
    smoothed = y * 0.9 + 0.05
    assert targets.multilabel_loss(logits, y, label_smoothing=0.1) == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, smoothed).item())
    with pytest.raises(Exception, match="0..2"):
        targets.multi_hot([(3,)], 3)
