"""Statistics and patch-importance helpers the chapters rely on."""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from tprune_core import analysis, importance


def test_mean_ci_matches_student_t():
    v = [0.80, 0.82, 0.79, 0.85]
    m, lo, hi = analysis.mean_ci(v)
    half = stats.t.ppf(0.975, 3) * np.std(v, ddof=1) / 2
    assert m == pytest.approx(np.mean(v)) and hi - m == pytest.approx(half) and m - lo == pytest.approx(half)
    assert analysis.mean_ci([0.5])[1:] == (-math.inf, math.inf)   # one seed: no honest interval


def test_kendall_tau_b_handles_ties_and_constants():
    assert analysis.kendall_tau_b([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert analysis.kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(analysis.kendall_tau_b([1, 2, 3], [5, 5, 5]))
    x, y = [1, 1, 2, 3], [1, 2, 2, 3]
    assert analysis.kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)


def test_tie_counting_variant_inflates_unrelated_orderings():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 400), rng.integers(0, 5, 400)   # independent levels
    assert abs(analysis.kendall_tau_b(a, b)) < 0.1
    assert analysis.tie_agreement_correlation(a, b) == pytest.approx(1 - 0.8 ** 2, abs=0.05)


def test_bucket_ranges_cover_everything_but_the_dropped_buckets():
    edges = [1.0, 2.0, 3.0, 4.0]                       # C1 < 1 <= C2 < 2 <= C3 < 3 <= C4 < 4 <= C5
    assert analysis.bucket_ranges(edges, (4, 5)) == [(-math.inf, 3.0)]
    assert analysis.bucket_ranges(edges, (1, 2)) == [(2.0, math.inf)]
    assert analysis.bucket_ranges(edges, (3,)) == [(-math.inf, 2.0), (3.0, math.inf)]
    values = np.array([0.5, 1.5, 2.5, 3.5, 4.5])
    levels = analysis.rank_levels(values, edges)
    assert levels.tolist() == [0, 1, 2, 3, 4]


def test_kmeans_buckets_are_ordered_and_edges_are_midpoints():
    rng = np.random.default_rng(1)
    v = np.concatenate([rng.normal(c, 0.05, 500) for c in (-2, -1, 0, 1, 2)])
    centres, edges = analysis.kmeans_buckets(v, k=5, seed=0)
    assert np.allclose(centres, [-2, -1, 0, 1, 2], atol=0.05)
    assert np.allclose(edges, (centres[1:] + centres[:-1]) / 2)
    levels = importance.kmeans_levels_1d(v, 5)
    assert (np.bincount(levels) == 500).all() and levels[0] == 0 and levels[-1] == 4


def test_tau_profile_and_retained_vs_pruned_read_records_by_position():
    # Two clips, one block; scores rise with the patch mean in clip 0 and fall in clip 1.
    mean = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]])
    rec = {"mean": mean, "std": mean.flip(1),
           "scores": {3: [torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.4, 0.3, 0.2, 0.1])]},
           "positions": {3: [torch.arange(4), torch.arange(4)]},
           "kept": {3: [torch.tensor([2, 3]), torch.tensor([0, 1])]}}
    tau = importance.tau_profile(rec, edges=[1.5])
    assert tau.tau_mean.tolist() == pytest.approx([1.0, -1.0])
    assert tau.tau_std.tolist() == pytest.approx([-1.0, 1.0])
    toks = importance.retained_vs_pruned(rec, edges=[0.5, 1.5, 2.5, 3.5])
    assert toks.kept.sum() == 4 and toks[(toks["clip"] == 0) & toks.kept]["mean"].tolist() == [2.0, 3.0]
    share = importance.quiet_share(toks)
    # quiet = buckets 1-2 = means 0 and 1: kept in clip 1 only -> half of the quiet tokens survive
    assert share.quiet_kept_fraction.iloc[0] == pytest.approx(0.5)
