"""The verdict rules (tprune_core/verdicts.py): each test is a case the rule could get wrong.

Expected numbers are worked out by hand from the Student-t quantile with 2 degrees of freedom (3 seeds):
t = 4.302653, so the half-width of a 95% CI over 3 values with standard deviation s is 4.302653 * s / sqrt(3)
= 2.484138 * s.
"""
import math

import pandas as pd
import pytest
from scipy import stats

from tprune_core import verdicts as v
from tprune_core.errors import ConfigError

T2 = stats.t.ppf(0.975, 2)
HALF = T2 / math.sqrt(3)      # half-width per unit of standard deviation, 3 seeds


def test_t_quantile_used_in_the_hand_computations():
    assert T2 == pytest.approx(4.302653) and HALF == pytest.approx(2.484138)


# ------------------------------------------------------------------------------------------------ intervals

def test_mean_ci_is_a_student_t_interval_over_seeds():
    m, lo, hi = v.mean_ci({0: 0.38, 1: 0.40, 2: 0.42})           # s = 0.02
    assert m == pytest.approx(0.40) and lo == pytest.approx(0.40 - 0.02 * HALF) and hi == pytest.approx(
        0.40 + 0.02 * HALF)
    assert v.mean_ci([0.5])[1:] == (-math.inf, math.inf)          # one model: no honest interval
    assert all(math.isnan(x) for x in v.mean_ci([]))
    # a Series with a repeated index keeps every value (summaries over rows, not seeds)
    assert v.seed_ci(pd.Series([0.1, 0.3], index=[0, 0])) == v.SeedCI(0.2, *v.mean_ci([0.1, 0.3])[1:], n=2)


# ------------------------------------------------------------------------------------------------ testability

def test_chance_level_is_one_over_the_classes():
    assert v.chance_level(35) == pytest.approx(1 / 35)
    with pytest.raises(ConfigError, match="at least 2"):
        v.chance_level(1)


def test_testable_needs_the_ci_lower_bound_above_three_times_chance():
    chance = v.chance_level(10)                                   # threshold 3 x 10% = 30%
    weak = v.testable({0: 0.34, 1: 0.40, 2: 0.46}, chance)        # s = 0.06: lo = 0.40 - 0.149 = 0.251
    assert weak.mean == pytest.approx(0.40) and weak.mean > weak.threshold   # the mean alone would pass
    assert not weak.ok and weak.lo == pytest.approx(0.40 - 0.06 * HALF) and weak.threshold == pytest.approx(0.30)
    assert "not clearly above chance" in weak.reason and "25.1%" in weak.reason and "30.0%" in weak.reason
    steady = v.testable({0: 0.36, 1: 0.40, 2: 0.44}, chance)      # s = 0.04: lo = 0.40 - 0.09937 = 0.30063
    assert steady.ok and steady.lo == pytest.approx(0.3006345, abs=1e-7) and steady.n == 3
    assert "is clearly above chance" in steady.reason and "3 seeds" in steady.reason
    assert not v.testable([0.99], chance).ok                      # one seed never passes
    assert v.testable({0: 0.36, 1: 0.40, 2: 0.44}, chance, factor=2.0).threshold == pytest.approx(0.20)


def test_testable_refuses_no_seeds_and_chance_outside_zero_one():
    with pytest.raises(ConfigError, match="no per-seed"):
        v.testable([], 0.1)
    with pytest.raises(ConfigError, match="chance"):
        v.testable([0.5, 0.6], 10)                                # points, not a fraction


def test_tolerances_absolute_and_relative_to_the_model():
    weak, strong = v.tolerances(0.40), v.tolerances(0.95)
    assert weak == v.Tolerances(absolute=0.01, relative=pytest.approx(0.004))
    assert strong.relative == pytest.approx(0.0095) and strong.absolute == 0.01
    with pytest.raises(ConfigError, match="fraction"):
        v.tolerances(95.0)                                        # points are refused: one unit convention


# ------------------------------------------------------------------------------------------------ contiguous cuts

def _rows(drops_by_keep):
    reduction = {1.0: 0.0, 0.9: 0.1, 0.7: 0.3, 0.5: 0.5}
    return [{"keep_rate": k, "mac_reduction": reduction[k], "drops": d} for k, d in drops_by_keep.items()]


ZERO = {0: 0.0, 1: 0.0, 2: 0.0}
SMALL = {0: 0.002, 1: 0.004, 2: 0.006}       # mean 0.004, s 0.002: hi = 0.004 + 0.00497 = 0.00897 < 0.01


def test_contiguous_cut_stops_at_a_failing_keep_rate_even_if_a_smaller_one_passes_again():
    rows = _rows({0.5: {0: 0.0, 1: 0.002, 2: 0.004},             # passes again (given first: order is not trusted)
                  1.0: ZERO, 0.9: SMALL,
                  0.7: {0: 0.010, 1: 0.014, 2: 0.018}})          # mean 0.014: fails both rules
    cuts = v.largest_contiguous_cut(rows, 0.01)
    assert cuts.by_mean.keep_rate == 0.9 and cuts.by_ci.keep_rate == 0.9 and cuts.by_mean.mac_reduction == 0.1
    assert cuts.by_ci.drop.mean == pytest.approx(0.004) and cuts.by_ci.drop.hi == pytest.approx(0.004 + 0.002 * HALF)
    assert cuts.by_ci.drop.n == 3 and cuts.tolerance == 0.01


def test_the_ci_rule_is_stricter_than_the_mean_rule():
    rows = _rows({1.0: ZERO, 0.9: SMALL,
                  0.7: {0: 0.0, 1: 0.008, 2: 0.016},             # mean 0.008 < 0.01, hi = 0.008 + 0.0199 > 0.01
                  0.5: {0: 0.03, 1: 0.04, 2: 0.05}})
    cuts = v.largest_contiguous_cut(pd.DataFrame(rows), 0.01)
    assert cuts.by_mean.keep_rate == 0.7 and cuts.by_mean.mac_reduction == 0.3
    assert cuts.by_ci.keep_rate == 0.9
    assert cuts.by_mean.drop.hi == pytest.approx(0.008 + 0.008 * HALF)


def test_no_cut_when_even_the_first_keep_rate_fails():
    cuts = v.largest_contiguous_cut(_rows({0.9: {0: 0.02, 1: 0.03, 2: 0.04}, 0.7: SMALL}), 0.01)
    assert cuts.by_mean is None and cuts.by_ci is None
    one_seed = v.largest_contiguous_cut(_rows({0.9: [0.001]}), 0.01)   # one model: the mean rule only
    assert one_seed.by_mean.keep_rate == 0.9 and one_seed.by_ci is None
    with pytest.raises(ConfigError, match="no keep rates"):
        v.largest_contiguous_cut([], 0.01)


def test_relative_and_absolute_tolerance_differ_on_a_weak_model():
    tol = v.tolerances(0.40)                                      # absolute 0.01, relative 0.004
    rows = _rows({1.0: ZERO, 0.7: {0: 0.005, 1: 0.006, 2: 0.007}})   # mean 0.006, hi = 0.006 + 0.0025 = 0.0085
    absolute, relative = (v.largest_contiguous_cut(rows, t) for t in (tol.absolute, tol.relative))
    assert absolute.by_ci.mac_reduction == 0.3
    assert relative.by_mean.mac_reduction == 0.0 and relative.by_ci.mac_reduction == 0.0


# ------------------------------------------------------------------------------------------------ paired differences

def test_paired_difference_pairs_by_seed_where_unpaired_intervals_overlap():
    a = {0: 0.50, 1: 0.70, 2: 0.90}
    b = {2: 0.876, 1: 0.678, 0: 0.480}                            # a - b = 0.020, 0.022, 0.024 (other key order)
    d = v.paired_difference(a, b)
    assert d.mean == pytest.approx(0.022) and d.n == 3
    assert d.lo == pytest.approx(0.022 - 0.002 * HALF) and d.lo > 0      # 0.0170: paired, A is better
    assert v.mean_ci(b)[2] > v.mean_ci(a)[1]                      # unpaired, the two intervals overlap widely
    assert v.paired_difference(pd.Series(a), pd.Series(b)) == d   # a Series' index is the seed


def test_paired_difference_uses_only_shared_seeds_and_names_what_is_missing():
    d = v.paired_difference({0: 0.5, 1: 0.6, 2: 0.7, 3: 0.9}, {0: 0.4, 1: 0.5, 2: 0.6})
    assert d.n == 3 and d.mean == pytest.approx(0.1)
    with pytest.raises(ConfigError, match=r"shared: \[2\], only in topk: \[0, 1\], only in random: \[3\]"):
        v.paired_difference({0: 0.5, 1: 0.6, 2: 0.7}, {2: 0.4, 3: 0.5}, names=("topk", "random"))
    with pytest.raises(ConfigError, match="more than once"):
        v.paired_difference(pd.Series([0.5, 0.6], index=[0, 0]), {0: 0.4, 1: 0.5})


def test_beats_and_loses_need_the_whole_interval_on_one_side():
    better, worse, unclear = v.SeedCI(0.02, 0.001, 0.04, 3), (-0.02, -0.03, -0.001), v.SeedCI(0.03, -0.001, 0.06, 3)
    assert v.beats(better) and not v.loses(better) and v.outcome(better) == "beats"
    assert v.loses(worse) and not v.beats(worse) and v.outcome(worse) == "loses"
    assert v.outcome(unclear) == v.NO_DIFFERENCE == "no difference the seeds support"


# ------------------------------------------------------------------------------------------------ claim rows

STEADY = v.testable({0: 0.36, 1: 0.40, 2: 0.44}, 0.1)
WEAK = v.testable({0: 0.34, 1: 0.40, 2: 0.46}, 0.1)
UP, DOWN, FLAT = (0.02, 0.01, 0.03), (-0.02, -0.03, -0.01), (0.0, -0.01, 0.01)
ROW = dict(claim="TopK beats random", source="paper", where="Table 2")


def test_claim_row_refuses_reproduced_when_not_testable():
    with pytest.raises(ConfigError, match="cannot be 'reproduced'.*not clearly above chance"):
        v.claim_row("c", "paper", "reproduced", "e", testability=WEAK)
    assert v.claim_row("c", "ours", "not testable here", "e", testability=WEAK)["verdict"] == "not testable here"
    assert v.claim_row("c", "ours", "reproduced", "e", "Fig. 1", STEADY) == {
        "claim": "c", "source": "ours", "verdict": "reproduced", "evidence": "e", "where": "Fig. 1"}


@pytest.mark.parametrize("args, match", [
    (("c", "authors", "mixed", "e"), "source"),
    (("c", "paper", "inconclusive", "e"), "verdict"),
    (("c", "paper", "mixed", " "), "empty"),
])
def test_claim_row_refuses_bad_fields(args, match):
    with pytest.raises(ConfigError, match=match):
        v.claim_row(*args)


@pytest.mark.parametrize("diffs, verdict", [
    ([UP, UP, FLAT], "reproduced"),                 # majority better, never worse
    ([UP, UP, FLAT, FLAT], "mixed"),                # better in half: no majority
    ([UP, UP, UP, DOWN], "mixed"),                  # majority better but worse once
    ([FLAT, DOWN], "not reproduced"),               # never better
    ([FLAT, FLAT], "not reproduced"),
])
def test_better_claim_majority_rule(diffs, verdict):
    row = v.better_claim(STEADY, diffs, **ROW)
    assert row["verdict"] == verdict and row["source"] == "paper" and row["where"] == "Table 2"
    k, m = sum(d is UP for d in diffs), sum(d is DOWN for d in diffs)
    assert f"better than B (CI excludes 0) in {k} of {len(diffs)} settings, worse in {m}" in row["evidence"]


def test_better_claim_is_not_testable_on_a_weak_model_even_when_every_diff_is_positive():
    row = v.better_claim(WEAK, [UP, UP, UP], **ROW, names=("TopK", "random"))
    assert row["verdict"] == "not testable here"
    assert row["evidence"].startswith("unpruned accuracy 40.0%") and "TopK better than random" in row["evidence"]
    assert row["evidence"].count("40.0%") == 1                    # the unpruned accuracy quoted once
    with pytest.raises(ConfigError, match="no settings"):
        v.better_claim(STEADY, [], **ROW)


def test_sign_claim_counts_cells_on_the_expected_side():
    cells = [UP, UP, v.SeedCI(0.1, 0.05, 0.15, 3), FLAT]
    row = v.sign_claim(None, cells, claim="tau > 0", source="ours")
    assert row["verdict"] == "reproduced" and row["evidence"] == "CI above 0 in 3 of 4 cells, below 0 in 0"
    assert v.sign_claim(None, cells, -1, claim="tau < 0", source="ours")["verdict"] == "not reproduced"
    assert v.sign_claim(None, [DOWN, DOWN, UP], -1, claim="tau < 0", source="ours")["verdict"] == "mixed"
    assert v.sign_claim(WEAK, cells, claim="tau > 0", source="ours")["verdict"] == "not testable here"
    assert v.sign_claim(STEADY, cells, claim="tau > 0", source="ours")["evidence"].endswith("3 seeds)")
    with pytest.raises(ConfigError, match="expected_sign"):
        v.sign_claim(None, cells, 0, claim="tau", source="ours")


def _cuts(by_mean, by_ci, tolerance):
    def cut(reduction):
        return None if reduction is None else v.Cut(1 - reduction, reduction, v.SeedCI(0.004, 0.001, 0.007, 3))
    return v.Cuts(tolerance, cut(by_mean), cut(by_ci))


@pytest.mark.parametrize("absolute, relative, verdict", [
    ((0.40, 0.35), (0.10, 0.0), "reproduced"),       # the whole CI under 1 pt up to a 35% cut
    ((0.40, 0.20), (0.10, 0.0), "mixed"),            # only the mean rule reaches 30%
    ((0.20, 0.10), (0.30, 0.30), "mixed"),           # only the relative tolerance reaches it
    ((0.25, 0.10), (0.10, None), "not reproduced"),
    ((None, None), (None, None), "not reproduced"),
])
def test_cut_claim_rules(absolute, relative, verdict):
    row = v.cut_claim(STEADY, _cuts(*absolute, 0.01), _cuts(*relative, 0.004), claim="30-40% for < 1 pt",
                      source="paper", where="Fig. 3")
    assert row["verdict"] == verdict


def test_cut_claim_evidence_quotes_cuts_tolerances_and_the_unpruned_model():
    row = v.cut_claim(STEADY, _cuts(0.40, 0.35, 0.01), _cuts(0.10, None, 0.004), claim="c", source="paper")
    ev = row["evidence"]
    assert "target 30%" in ev and "absolute tolerance 1.00 pt: 40% at keep rate 0.6" in ev
    assert "35% at keep rate 0.65 (drop 0.40 pt, CI 0.10 pt to 0.70 pt) with the whole CI under it" in ev
    assert "relative tolerance 0.40 pt: 10% at keep rate 0.9" in ev and "none with the whole CI under it" in ev
    assert ev.endswith("; unpruned 40.0% (95% CI 30.1% to 49.9%, 3 seeds)")
    weak = v.cut_claim(WEAK, _cuts(0.40, 0.35, 0.01), _cuts(0.40, 0.35, 0.004), claim="c", source="paper")
    assert weak["verdict"] == "not testable here" and "not clearly above chance" in weak["evidence"]


def test_unpaired_difference_is_welch_over_seeds():
    from scipy import stats
    a, b = [0.80, 0.82, 0.84], [0.70, 0.75, 0.65]
    d = v.unpaired_difference(a, b)
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    assert d.mean == pytest.approx(0.12) and d.lo == pytest.approx(ci.low) and d.hi == pytest.approx(ci.high)
    assert v.beats(d) and d.n == 3
    with pytest.raises(ConfigError, match="at least 2"):
        v.unpaired_difference([0.5], b)


def test_over_models_counts_only_testable_models():
    good = v.testable([0.80, 0.82, 0.81], chance=0.1)
    weak = v.testable([0.20, 0.35, 0.25], chance=0.1)
    assert good.ok and not weak.ok
    cells = {("ast", "a", 0.7): (0.05, 0.01, 0.09), ("ast", "a", 0.5): (0.06, 0.02, 0.10),
             ("mae", "b", 0.7): (-0.05, -0.09, -0.01)}
    row = v.over_models({("ast", "a"): good, ("mae", "b"): weak}, cells, "better", claim="c", source="paper")
    # the weak model's loss does not count: 2 of 2 testable cells are wins
    assert row["verdict"] == "reproduced" and "2 of 2" in row["evidence"] and "('mae', 'b')" in row["evidence"]
    none = v.over_models({("ast", "a"): weak, ("mae", "b"): weak}, cells, "sign", claim="c", source="ours")
    assert none["verdict"] == "not testable here"
    with pytest.raises(ConfigError, match="kind"):
        v.over_models({}, {}, "worse", claim="c", source="ours")
