"""Evaluation: accuracy and MACs under a pruning setting, the shared unpruned prefix, the model state put back."""
import pytest
import torch

from conftest import toy_set
from tprune_core.errors import ConfigError
from tprune_core.evaluation import evaluate
from tprune_core.models import create_model
from tprune_core.pruning import PruneSettings, first_drop_counts, is_pruned, settings
from tprune_core.nn.models import patch_pixels


def test_evaluate_shared_prefix_changes_nothing():
    """Settings evaluated with a shared prefix give the results of independent evaluations, and the prefix is
    computed once per first drop block (for every clip)."""
    model = create_model("ast", "tiny", 32, 3)
    fs = toy_set(10, 3)
    shared = {}
    for method, rate, loc in [("topk", 0.5, (3, 6, 9)), ("mean", 0.7, (3, 6, 9)), ("adaptive", 0.5, (3, 6, 9)),
                              ("random", 0.5, (6,)), ("std", 0.3, (0, 5))]:
        alone = evaluate(model, fs, method, rate, loc, batch_size=4)
        reused = evaluate(model, fs, method, rate, loc, batch_size=4, shared=shared)
        assert reused == alone, method
    assert sorted(k[-1] for k in shared) == [3, 6]
    assert all(v.shape[0] == 10 for v in shared.values())     # every clip's tokens, computed once


def test_bucket_drops_run_clips_sorted_by_count_and_report_them_in_feature_order():
    """intensity_range pads a batch to its largest count, so clips run sorted by their kept count: the per-clip
    results equal those of clips run one at a time (no padding), in feature order, with or without a shared prefix."""
    torch.manual_seed(0)
    model = create_model("audiomae", "tiny", 32, 3, depth=3, embed_dim=32, num_heads=2)
    fs = toy_set(12, 3)
    patch_means = patch_pixels(model, fs.x.float()).mean(-1)
    opts = {"lo": float(patch_means.median()), "hi": 1e9}
    sorted_run = evaluate(model, fs, "intensity_range", 1.0, (1,), batch_size=4, options=opts)
    one_by_one = evaluate(model, fs, "intensity_range", 1.0, (1,), batch_size=1, options=opts)
    assert sorted_run["correct_per_clip"] == one_by_one["correct_per_clip"]
    assert sorted_run["gmacs_per_clip"] == pytest.approx(one_by_one["gmacs_per_clip"])
    counts = first_drop_counts(model, fs.x.float(), PruneSettings("intensity_range", 1.0, (1,), opts))
    assert counts.min() < counts.max()                       # the clips differ, so the order matters
    reused = evaluate(model, fs, "intensity_range", 1.0, (1,), batch_size=4, options=opts, shared={})
    assert reused["correct_per_clip"] == sorted_run["correct_per_clip"]
    assert first_drop_counts(model, fs.x.float(), PruneSettings("topk", 0.5, (3, 6, 9))) is None   # fixed budgets: no order


def test_evaluate_reports_macs_and_restores_model_state():
    model = create_model("audiomae", "tiny", 32, 3)
    fs = toy_set(10, 3)
    full = evaluate(model, fs, split="val")
    half = evaluate(model, fs, method="topk", keep_rate=0.5, batch_size=4)
    for key in ("accuracy", "n_clips", "gmacs_per_clip", "method", "keep_rate", "split", "drop_loc"):
        assert key in full and key in half
    assert full["n_clips"] == 10 and full["method"] is None and full["keep_rate"] == 1.0
    assert half["method"] == "topk" and half["keep_rate"] == 0.5
    assert half["gmacs_per_clip"] < 0.8 * full["gmacs_per_clip"]
    assert not is_pruned(model)                          # unpatched again
    from tprune_core.pruning import apply_pruning
    apply_pruning(model, "random", 0.7)
    evaluate(model, fs, method="topk", keep_rate=0.3)
    assert (settings(model).method, settings(model).keep_rate) == ("random", 0.7)   # previous patch restored
    with pytest.raises(ConfigError, match="frames"):
        evaluate(model, toy_set(4, 0, frames=16))


def test_evaluate_counts_clips_left_without_patch_tokens():
    """intensity_range with an empty range: every clip is scored (from its prefix tokens), and reported as empty."""
    torch.manual_seed(0)
    model = create_model("audiomae", "tiny", 48, 3, depth=2, embed_dim=32, num_heads=2)
    data = toy_set(5, seed=1)
    out = evaluate(model, data, "intensity_range", 1.0, (0,), options={"lo": 1e9, "hi": 2e9})
    assert out["n_clips"] == 5 and out["n_empty"] == 5
    kept_all = evaluate(model, data, "intensity_range", 1.0, (0,), options={"lo": -1e9, "hi": 1e9})
    assert kept_all["n_empty"] == 0
    assert out["gmacs_per_clip"] < kept_all["gmacs_per_clip"]
