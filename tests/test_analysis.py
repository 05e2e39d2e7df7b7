"""Statistics and patch-importance helpers the chapters rely on."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from tprune_core import analysis, experiments, importance, zoo
from tprune_core.models import create_model, patch_pixels


def test_mean_ci_matches_student_t():
    v = [0.80, 0.82, 0.79, 0.85]
    m, lo, hi = analysis.mean_ci(v)
    half = stats.t.ppf(0.975, 3) * np.std(v, ddof=1) / 2
    assert m == pytest.approx(np.mean(v)) and hi - m == pytest.approx(half) and m - lo == pytest.approx(half)
    assert analysis.mean_ci([0.5])[1:] == (-math.inf, math.inf)   # one seed: no honest interval


def test_per_seed_then_ci_takes_the_model_as_the_unit():
    # 3 models x 400 clips: the models disagree (+0.5, -0.2, +0.3) and the clips scatter little around their model.
    rng = np.random.default_rng(0)
    seed_means = {0: 0.5, 1: -0.2, 2: 0.3}
    df = pd.DataFrame([{"block": 3, "seed": s, "clip": c, "tau": m + rng.normal(0, 0.1)}
                       for s, m in seed_means.items() for c in range(400)])
    df.loc[5, "tau"] = np.nan                                       # e.g. tau-b of a constant clip: skipped
    per_clip = analysis.summarize(df, ["block"], "tau").iloc[0]
    assert per_clip.tau_lo > 0                                      # 1,199 "samples": a falsely tight interval
    out = analysis.per_seed_then_ci(df, ["block"], "tau")
    assert list(out.columns) == ["block", "tau", "tau_lo", "tau_hi", "n_seeds", "n_rows"]
    r = out.iloc[0]
    assert r.n_seeds == 3 and r.n_rows == 1199
    per_model = df.groupby("seed").tau.mean()
    m, lo, hi = analysis.mean_ci(per_model)
    assert (r.tau, r.tau_lo, r.tau_hi) == pytest.approx((m, lo, hi))
    assert r.tau_lo < 0 < r.tau_hi and r.tau_hi - r.tau_lo > 10 * (per_clip.tau_hi - per_clip.tau_lo)


def test_per_seed_then_ci_keeps_groups_and_counts_only_models_with_a_value():
    df = pd.DataFrame({"dataset": ["a", "a", "a", "b", "b", "b"], "seed": [0, 0, 1, 0, 1, 2],
                       "v": [1.0, 3.0, 4.0, np.nan, 2.0, 4.0]})
    out = analysis.per_seed_then_ci(df, "dataset", "v").set_index("dataset")
    assert out.loc["a", "v"] == pytest.approx(3.0) and out.loc["a", "n_seeds"] == 2   # seeds 0 (mean 2) and 1 (4)
    assert out.loc["b", "v"] == pytest.approx(3.0) and out.loc["b", "n_seeds"] == 2   # seed 0 has no value
    assert out.loc["b", "n_rows"] == 2
    one = analysis.per_seed_then_ci(df[df.seed == 0], "dataset", "v").set_index("dataset")
    assert one.loc["a", "v_lo"] == -math.inf and math.isnan(one.loc["b", "v"]) and one.loc["b", "n_seeds"] == 0


def test_kendall_tau_b_handles_ties_and_constants():
    assert analysis.kendall_tau_b([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert analysis.kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(analysis.kendall_tau_b([1, 2, 3], [5, 5, 5]))
    x, y = [1, 1, 2, 3], [1, 2, 2, 3]
    assert analysis.kendall_tau_b(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)


def test_reference_tau_on_a_hand_counted_example():
    # scores [0.4, 0.1, 0.3, 0.2], levels [2, 0, 2, 1]; the 6 pairs (i, j):
    #   (0,1) 0.4>0.1, 2>0 concordant    (0,2) 0.4>0.3, 2=2 tied in levels -> agrees
    #   (0,3) 0.4>0.2, 2>1 concordant    (1,2) 0.1<0.3, 0<2 concordant
    #   (1,3) 0.1<0.2, 0<1 concordant    (2,3) 0.3>0.2, 2>1 concordant
    # tau_ref = (5 concordant + 1 tied - 0 discordant) / 6 = 1, although the orderings differ;
    # tau-b = (5 - 0) / sqrt(6 * (6 - 1)) = 5 / sqrt(30)
    scores, levels = [0.4, 0.1, 0.3, 0.2], [2, 0, 2, 1]
    assert analysis.reference_tau(scores, levels) == pytest.approx(1.0)
    assert analysis.kendall_tau_b(scores, levels) == pytest.approx(5 / math.sqrt(30))


def test_reference_tau_differs_from_tau_b_when_pairs_disagree():
    # scores [0.4, 0.1, 0.3, 0.2], levels [2, 0, 1, 2]:
    #   (0,1) concordant  (0,2) concordant  (0,3) 0.4>0.2, 2=2 tied -> agrees
    #   (1,2) concordant  (1,3) concordant  (2,3) 0.3>0.2, 1<2 discordant
    # tau_ref = (4 + 1 - 1) / 6 = 2/3; tau-b = (4 - 1) / sqrt(6 * 5) = 3 / sqrt(30) ~ 0.548
    scores, levels = [0.4, 0.1, 0.3, 0.2], [2, 0, 1, 2]
    assert analysis.reference_tau(scores, levels) == pytest.approx(2 / 3)
    assert analysis.kendall_tau_b(scores, levels) == pytest.approx(3 / math.sqrt(30))
    # a tie in the scores counts as agreement too: (0,1) tied -> agrees, (0,2) and (1,2) discordant
    assert analysis.reference_tau([0.5, 0.5, 0.1], [0, 1, 2]) == pytest.approx((1 - 2) / 3)


def test_reference_tau_is_one_when_every_patch_shares_a_level():
    # The reference's tie rule: every pair is tied in the levels, so every pair "agrees" and the clip scores +1
    # whatever its attention does, where tau-b has no value. A quiet clip whose patches all fall in C1 therefore
    # pulls the reference's average towards 1: the statistic is inflated by construction.
    assert analysis.reference_tau([0.9, 0.1, 0.5, 0.3], [1, 1, 1, 1]) == 1.0
    assert math.isnan(analysis.kendall_tau_b([0.9, 0.1, 0.5, 0.3], [1, 1, 1, 1]))
    assert math.isnan(analysis.reference_tau([0.3], [2])) and math.isnan(analysis.reference_tau([], []))


def test_reference_tau_inflates_unrelated_orderings():
    rng = np.random.default_rng(0)
    # independent orderings; 1 in 5 pairs tied in the levels, so tau_ref ~ 0.2 + 0.8 * 0 (sd ~ 0.014 at n = 1500)
    scores, levels = rng.random(1500), rng.integers(0, 5, 1500)
    assert abs(analysis.kendall_tau_b(scores, levels)) < 0.06
    assert analysis.reference_tau(scores, levels) == pytest.approx(0.2, abs=0.05)


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
    levels = analysis.rank_levels(v, edges)
    assert (np.bincount(levels) == 500).all() and levels[0] == 0 and levels[-1] == 4


def test_tau_profile_and_retained_vs_pruned_read_records_by_position():
    # Two clips, one block; scores rise with the patch mean in clip 0 and fall in clip 1.
    mean = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]])
    rec = {"mean": mean, "std": mean.flip(1),
           "scores": {3: [torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.4, 0.3, 0.2, 0.1])]},
           "positions": {3: [torch.arange(4), torch.arange(4)]},
           "kept": {3: [torch.tensor([2, 3]), torch.tensor([0, 1])]}}
    tau = importance.tau_profile(rec, mean_edges=[1.5], std_edges=[0.5, 2.5])
    assert list(tau.columns) == ["block", "clip", "tau_b_mean", "tau_b_std", "tau_ref_mean", "tau_ref_std"]
    assert tau.tau_b_mean.tolist() == pytest.approx([1.0, -1.0])
    assert tau.tau_b_std.tolist() == pytest.approx([-1.0, 1.0])
    # mean levels [0, 0, 1, 1]: clip 0 has 4 concordant + 2 tied pairs -> 1; clip 1: 4 discordant + 2 tied -> -1/3
    assert tau.tau_ref_mean.tolist() == pytest.approx([1.0, -1 / 3])
    # std = [3, 2, 1, 0] -> levels [2, 1, 1, 0]: clip 0 has 5 discordant + 1 tied -> -2/3, clip 1 has 5
    # concordant + 1 tied -> 1 (the tie rule lifts one sign and not the other)
    assert tau.tau_ref_std.tolist() == pytest.approx([-2 / 3, 1.0])
    toks = importance.retained_vs_pruned(rec, edges=[0.5, 1.5, 2.5, 3.5])
    assert toks.kept.sum() == 4 and toks[(toks["clip"] == 0) & toks.kept]["mean"].tolist() == [2.0, 3.0]
    share = importance.quiet_share(toks)
    # quiet = buckets 1-2 = means 0 and 1: kept in clip 1 only -> half of the quiet tokens survive
    assert share.quiet_kept_fraction.iloc[0] == pytest.approx(0.5)


def test_buckets_fit_the_requested_training_patch_statistic(monkeypatch):
    # A tiny random model and a fake training split stand in for a zoo entry: no checkpoint or features needed.
    torch.manual_seed(0)
    model = create_model("ast", "tiny", 32, 3, mel=32)
    x = torch.randn(6, 32, 32) * torch.linspace(0.2, 3.0, 6)[:, None, None]   # clips of rising variation
    monkeypatch.setattr(zoo, "load_zoo_model", lambda entry: (model, {"config": {}}))
    monkeypatch.setattr(experiments, "_features_of", lambda meta, split: type("F", (), {"x": x})())
    px = patch_pixels(model, x)
    assert np.allclose(experiments.train_patch_values({}, "mean"), px.mean(-1).flatten().numpy())
    assert np.allclose(experiments.train_patch_values({}, "std"), px.std(-1).flatten().numpy())
    with pytest.raises(ValueError):
        experiments.train_patch_values({}, "max")
    b = importance.buckets({"dataset": "toy"}, k=3, stat="std")
    assert b["stat"] == "std" and "stds" in b and "means" not in b and len(b["edges"]) == 2
    assert np.allclose(b["edges"], analysis.kmeans_buckets(px.std(-1).flatten().numpy(), k=3)[1])


def test_at_matched_macs_interpolates_along_the_other_methods_curve():
    import pandas as pd
    grid = pd.DataFrame([
        # topk: 1.0 GMACs at keep 0.5, 2.0 at keep 0.9; evit spends 10% more MACs at every keep rate
        {"family": "ast", "dataset": "d", "seed": 0, "method": "topk", "keep_rate": 0.5, "gmacs": 1.0, "accuracy": 0.7},
        {"family": "ast", "dataset": "d", "seed": 0, "method": "topk", "keep_rate": 0.9, "gmacs": 2.0, "accuracy": 0.8},
        {"family": "ast", "dataset": "d", "seed": 0, "method": "evit_fuse", "keep_rate": 0.5, "gmacs": 1.1,
         "accuracy": 0.60},
        {"family": "ast", "dataset": "d", "seed": 0, "method": "evit_fuse", "keep_rate": 0.9, "gmacs": 2.2,
         "accuracy": 0.82},
    ])
    out = analysis.at_matched_macs(grid, "topk", "evit_fuse").set_index("keep_rate")
    assert np.isnan(out.loc[0.5, "accuracy"])                   # 1.0 GMACs: below the cheapest EViT point
    assert out.loc[0.9, "accuracy"] == pytest.approx(0.60 + (2.0 - 1.1) / (2.2 - 1.1) * 0.22)
    assert out.loc[0.9, "gmacs"] == 2.0 and set(out.method) == {"evit_fuse"}


@pytest.mark.parametrize("family", ["ast", "audiomae"])
def test_drop_map_puts_dropped_patches_on_the_frequency_time_grid(family):
    """A patch whose image is far louder than the rest is never dropped by mean pruning; the map's rows are
    frequency (low to high) and its columns time, for both token orders."""
    from tprune_core import pruning
    model = create_model(family, "tiny", 96, 5).eval()
    pruning.apply_pruning(model, "mean", 0.5, (3, 6, 9))
    x = torch.randn(3, 96, 128) * 0.01
    x[:, 32:48, 112:128] += 10.0          # time patch 2, the highest frequency patch (mel bins 112-127)
    with torch.no_grad(), pruning.record(model) as rec:
        model(x)
    record = {"family": family, "grid": tuple(model.patch_embed.grid_size), "positions": rec.positions,
              "kept": rec.kept}
    m = importance.drop_map(record, 3)
    assert m.shape == (8, 6)                                   # 8 frequency rows x 6 time columns
    assert m[7, 2] == 0.0                                      # the loud patch: kept in every clip
    assert m.sum() == pytest.approx(48 - 24)                   # 24 of 48 tokens dropped per clip, 3 clips averaged
