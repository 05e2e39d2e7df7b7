"""The verdict rules (tprune_core/verdicts.py): each test is a case the rule could get wrong.

Expected numbers are worked out by hand from the Student-t quantile with 2 degrees of freedom (3 seeds):
t = 4.302653, so the half-width of a 95% CI over 3 values with standard deviation s is 4.302653 * s / sqrt(3)
= 2.484138 * s. The two-level bootstrap is checked on simulated test sets whose true difference is known.
"""
import math
import time
from pathlib import Path

import numpy as np
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


# ------------------------------------------------------------------------------------------------ one cell

# Cells over 3 seeds. UP: centre 0.02, half-width 0.005, so se = 0.005 / 4.302653 and t = 17.2: p = 0.0017 per
# side, under 0.05 / 8 (Holm's first step over 4 cells). BARELY: half-width 0.018, t = 4.78: p = 0.0205, under
# 0.025 (reproduced alone) but over 0.05 / 6 (Holm's first step over 3 cells).
UP, DOWN, FLAT = v.SeedCI(0.02, 0.015, 0.025, 3), v.SeedCI(-0.02, -0.025, -0.015, 3), v.SeedCI(0.0, -0.01, 0.01, 3)
BARELY = v.SeedCI(0.02, 0.002, 0.038, 3)


def test_the_vocabulary_is_four_words_and_the_rule_is_printable():
    assert v.VERDICTS == ("reproduced", "contradicted", "inconclusive", "not testable here")
    assert (v.REPRODUCED, v.CONTRADICTED, v.INCONCLUSIVE, v.NOT_TESTABLE) == v.VERDICTS
    for phrase in ("Holm-Bonferroni", "2m one-sided p-values", "5%", "primary cell", "cells disagree",
                   "not testable here"):
        assert phrase in v.VERDICT_RULE
    source = Path(v.__file__).read_text()
    assert "not reproduced" not in source and "mixed" not in source.lower()


@pytest.mark.parametrize("lo, hi, side, tolerance, expected", [
    (0.01, 0.03, 1, None, "reproduced"),            # wholly above 0, the claim says above
    (-0.03, -0.01, 1, None, "contradicted"),        # wholly below
    (-0.01, 0.01, 1, None, "inconclusive"),         # contains 0
    (0.0, 0.02, 1, None, "inconclusive"),           # touching the boundary is not beyond it
    (-0.03, -0.01, -1, None, "reproduced"),         # the claim says below
    (0.01, 0.03, -1, None, "contradicted"),
    (0.002, 0.008, -1, 0.01, "reproduced"),         # "drop < 1 pt": the whole CI under the tolerance
    (0.012, 0.020, -1, 0.01, "contradicted"),       # the whole CI above it
    (0.005, 0.015, -1, 0.01, "inconclusive"),
    (0.005, 0.015, 1, 0.01, "inconclusive"),        # "better by more than 1 pt"
    (0.012, 0.020, 1, 0.01, "reproduced"),
    (0.002, 0.008, 1, 0.01, "contradicted"),        # better, but by less than the tolerance
    (-math.inf, math.inf, 1, None, "inconclusive"),  # one seed
    (math.nan, math.nan, 1, None, "not testable here"),
])
def test_classify_cell_every_branch(lo, hi, side, tolerance, expected):
    assert v.classify_cell(lo, hi, side, tolerance) == expected


def test_classify_cell_refuses_a_side_that_is_not_plus_or_minus_one():
    with pytest.raises(ConfigError, match="side"):
        v.classify_cell(0.1, 0.2, 0)


def test_t_pvalues_match_scipy_one_sample_t_tests():
    values = [0.011, 0.020, 0.032]
    ci = v.seed_ci(values)
    for boundary in (0.0, 0.01, 0.05):
        above, below = v.t_pvalues(ci, boundary)
        assert above == pytest.approx(stats.ttest_1samp(values, boundary, alternative="greater").pvalue)
        assert below == pytest.approx(stats.ttest_1samp(values, boundary, alternative="less").pvalue)
    # the p-values agree with the interval: lo > boundary exactly when p("above") < 0.025
    assert v.t_pvalues(ci, ci.lo - 1e-9)[0] < 0.025 < v.t_pvalues(ci, ci.lo + 1e-9)[0]
    assert v.t_pvalues(UP)[0] == pytest.approx(stats.t.sf(0.02 / (0.005 / T2), 2)) == pytest.approx(0.00168, 0.01)
    assert v.t_pvalues(BARELY)[0] == pytest.approx(0.0205, abs=1e-4)
    assert v.t_pvalues((0.02, 0.015, 0.025, 3)) == v.t_pvalues(UP)


def test_t_pvalues_edge_cases():
    three = v.t_pvalues((0.02, 0.015, 0.025))    # no n: read as 2 seeds, the heaviest tails (largest p)
    assert three[0] == pytest.approx(stats.t.sf(0.02 / (0.005 / stats.t.ppf(0.975, 1)), 1)) and three[0] > \
        v.t_pvalues(UP)[0]
    assert v.t_pvalues(v.seed_ci([0.5])) == (1.0, 1.0)            # one seed: infinite interval, no evidence
    assert v.t_pvalues(v.SeedCI(0.01, 0.01, 0.01, 3)) == (0.0, 1.0)   # every seed agrees
    assert v.t_pvalues(v.SeedCI(0.0, 0.0, 0.0, 3)) == (1.0, 1.0)
    assert all(math.isnan(p) for p in v.t_pvalues(v.seed_ci([])))


def test_claim_cell_takes_the_p_values_of_the_claims_side():
    up = v.claim_cell(UP, key="a")
    assert up.outcome == "reproduced" and up.p_reproduced == pytest.approx(v.t_pvalues(UP)[0]) and up.key == "a"
    assert up.p_reproduced + up.p_contradicted == pytest.approx(1.0)
    down = v.claim_cell(UP, -1)
    assert down.outcome == "contradicted" and down.p_contradicted == up.p_reproduced
    tol = v.claim_cell(v.SeedCI(0.004, 0.001, 0.007, 3), -1, 0.01)    # drop < 1 pt
    assert tol.outcome == "reproduced" and tol.boundary == 0.01 and tol.p_reproduced < 0.025
    assert v.claim_cell(UP, testability=WEAK).outcome == "not testable here"
    assert v.claim_cell(up) is up


# ------------------------------------------------------------------------------------------------ the rule

def test_holm_step_down_by_hand():
    # sorted: 0.005 <= 0.05/4, 0.01 <= 0.05/3, 0.03 > 0.05/2 stops the walk (0.04 is never reached)
    assert v.holm([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]
    assert v.holm([0.04], alpha=0.05) == [True] and v.holm([]) == []
    assert v.holm([0.02, 0.02]) == [True, True] and v.holm([0.03, 0.03]) == [False, False]   # vs 0.05 / 2
    with pytest.raises(ConfigError, match="NaN"):
        v.holm([0.01, math.nan])


def _verdict(*cis, **kw):
    return v.combine_cells([v.claim_cell(ci, key=k) for k, ci in enumerate(cis)], **kw)


def test_holm_changes_an_outcome_the_uncorrected_intervals_would_give():
    assert _verdict(BARELY).verdict == "reproduced"               # one cell: Holm over 2 tests is the CI itself
    three = _verdict(BARELY, BARELY, BARELY)
    assert [c.outcome for c in three.cells] == ["reproduced"] * 3  # each interval alone excludes 0 ...
    assert three.verdict == "inconclusive" and three.corrected == ("inconclusive",) * 3   # ... not after Holm
    assert "after Holm over 6 one-sided tests (family-wise 5%): reproduced in 0 of 3 cells" in three.evidence
    partial = _verdict(UP, BARELY)                                # 0.0017 <= 0.05/4; then 0.0205 > 0.05/3
    assert partial.verdict == "reproduced" and partial.corrected == ("reproduced", "inconclusive")
    assert "reproduced in 1 of 2 cells (0)" in partial.evidence


@pytest.mark.parametrize("cis, verdict", [
    ((UP, UP, FLAT), "reproduced"),
    ((DOWN, FLAT), "contradicted"),
    ((FLAT, FLAT), "inconclusive"),                 # nothing shown either way: not a contradiction
    ((UP, DOWN), "inconclusive"),                   # the cells disagree
    ((UP, UP, UP, DOWN), "inconclusive"),
])
def test_combine_cells_overall_rule(cis, verdict):
    got = _verdict(*cis)
    assert got.verdict == verdict
    assert ("the cells disagree" in got.evidence) == (UP in cis and DOWN in cis)


def test_combine_cells_leaves_untestable_cells_out():
    cells = [v.claim_cell(UP, key="ok"), v.claim_cell(DOWN, key="weak", testability=WEAK)]
    got = v.combine_cells(cells)
    assert got.verdict == "reproduced" and got.corrected == ("reproduced", "not testable here")
    assert "1 cells not testable, left out" in got.evidence
    none = v.combine_cells([v.claim_cell(UP, testability=WEAK), v.claim_cell((math.nan,) * 3)])
    assert none.verdict == "not testable here" and none.evidence == "no testable cell among 2"
    with pytest.raises(ConfigError, match="no cells"):
        v.combine_cells([])


def test_a_pre_declared_primary_cell_decides_alone_uncorrected():
    three = [v.claim_cell(ci, key=k) for k, ci in (("kr 0.7", BARELY), ("kr 0.5", BARELY), ("kr 0.3", DOWN))]
    assert v.combine_cells(three).verdict == "contradicted"       # Holm keeps only the DOWN cell
    got = v.combine_cells(three, primary="kr 0.7")
    assert got.verdict == "reproduced" and got.corrected == ("reproduced", "not counted", "not counted")
    assert got.evidence.startswith("verdict of the pre-declared primary cell kr 0.7 alone, uncorrected: CI 0.20 pt "
                                   "to 3.80 pt against 0.00 pt, reproduced")
    assert "the other 2 cells, not counted: 1 reproduced, 1 contradicted" in got.evidence
    assert v.combine_cells(three, primary="kr 0.3").verdict == "contradicted"
    assert _verdict(FLAT, UP, primary=0).verdict == "inconclusive"                  # keys 0, 1: by key
    assert v.combine_cells([v.claim_cell(FLAT), v.claim_cell(UP)], primary=1).verdict == "reproduced"  # by position
    weak = [v.claim_cell(UP, key="w", testability=WEAK), v.claim_cell(UP, key="s")]
    assert v.combine_cells(weak, primary="w").verdict == "not testable here"
    with pytest.raises(ConfigError, match="primary cell 'kr 0.9' must match exactly one"):
        v.combine_cells(three, primary="kr 0.9")


def test_claim_from_cells_with_a_tolerance_and_names():
    drops = {"ast": v.SeedCI(0.004, 0.001, 0.007, 3), "mae": v.SeedCI(0.03, 0.02, 0.04, 3)}
    row = v.claim_from_cells(STEADY, drops, -1, 0.01, claim="drop < 1 pt", source="paper")
    assert row["verdict"] == "inconclusive" and "the cells disagree" in row["evidence"]
    assert row["evidence"].startswith("CI wholly on the claim's side of 1.00 pt in 1 of 2 cells, wholly on the "
                                      "other side in 1; after Holm over 4")
    assert "reproduced in 1 of 2 cells (ast), contradicted in 1 (mae)" in row["evidence"]
    assert v.claim_from_cells(STEADY, drops, -1, 0.01, claim="c", source="ours", primary="ast")["verdict"] == \
        "reproduced"
    assert v.claim_from_cells(WEAK, drops, -1, 0.01, claim="c", source="ours")["verdict"] == "not testable here"
    with pytest.raises(ConfigError, match="no cells"):
        v.claim_from_cells(None, [], claim="c", source="ours")


# ------------------------------------------------------------------------------------------------ claim rows

STEADY = v.testable({0: 0.36, 1: 0.40, 2: 0.44}, 0.1)
WEAK = v.testable({0: 0.34, 1: 0.40, 2: 0.46}, 0.1)
ROW = dict(claim="TopK beats random", source="paper", where="Table 2")


def test_claim_row_refuses_reproduced_when_not_testable():
    with pytest.raises(ConfigError, match="cannot be 'reproduced'.*not clearly above chance"):
        v.claim_row("c", "paper", "reproduced", "e", testability=WEAK)
    assert v.claim_row("c", "ours", "not testable here", "e", testability=WEAK)["verdict"] == "not testable here"
    assert v.claim_row("c", "ours", "contradicted", "e", testability=STEADY)["verdict"] == "contradicted"
    assert v.claim_row("c", "ours", "reproduced", "e", "Fig. 1", STEADY) == {
        "claim": "c", "source": "ours", "verdict": "reproduced", "evidence": "e", "where": "Fig. 1"}


@pytest.mark.parametrize("args, match", [
    (("c", "authors", "inconclusive", "e"), "source"),
    (("c", "paper", "mixed", "e"), "verdict"),                    # the old words are gone
    (("c", "paper", "not reproduced", "e"), "verdict"),
    (("c", "paper", "inconclusive", " "), "empty"),
])
def test_claim_row_refuses_bad_fields(args, match):
    with pytest.raises(ConfigError, match=match):
        v.claim_row(*args)


@pytest.mark.parametrize("diffs, verdict", [
    ([UP, UP, FLAT], "reproduced"),                 # better after Holm, never worse
    ([UP, UP, FLAT, FLAT], "reproduced"),           # no majority needed: one cell after Holm, none against
    ([UP, UP, UP, DOWN], "inconclusive"),           # better and worse: the cells disagree
    ([FLAT, DOWN], "contradicted"),                 # worse after Holm, never better
    ([FLAT, FLAT], "inconclusive"),                 # no difference shown: not evidence against the claim
    ([BARELY, BARELY, BARELY], "inconclusive"),     # each CI excludes 0, Holm does not
])
def test_better_claim_rule(diffs, verdict):
    row = v.better_claim(STEADY, diffs, **ROW)
    assert row["verdict"] == verdict and row["source"] == "paper" and row["where"] == "Table 2"
    k, m = sum(d in (UP, BARELY) for d in diffs), sum(d is DOWN for d in diffs)
    assert f"better than B (CI excludes 0) in {k} of {len(diffs)} settings, worse in {m}; after Holm" in \
        row["evidence"]


def test_better_claim_names_settings_and_takes_a_primary_setting():
    row = v.better_claim(STEADY, {"kr 0.7": UP, "kr 0.5": FLAT}, **ROW)
    assert row["verdict"] == "reproduced" and "reproduced in 1 of 2 cells (kr 0.7)" in row["evidence"]
    assert v.better_claim(STEADY, {"kr 0.7": UP, "kr 0.5": FLAT}, **ROW, primary="kr 0.5")["verdict"] == \
        "inconclusive"
    assert v.better_claim(STEADY, [FLAT, UP], **ROW, primary=1)["verdict"] == "reproduced"


def test_better_claim_is_not_testable_on_a_weak_model_even_when_every_diff_is_positive():
    row = v.better_claim(WEAK, [UP, UP, UP], **ROW, names=("TopK", "random"))
    assert row["verdict"] == "not testable here"
    assert row["evidence"].startswith("unpruned accuracy 40.0%") and "TopK better than random" in row["evidence"]
    assert row["evidence"].count("40.0%") == 1                    # the unpruned accuracy quoted once
    with pytest.raises(ConfigError, match="no settings"):
        v.better_claim(STEADY, [], **ROW)


def test_tuples_without_n_are_read_conservatively():
    up = (0.02, 0.01, 0.03)                         # as 2 seeds: p = 0.0125 per side
    assert v.better_claim(STEADY, [up], **ROW)["verdict"] == "reproduced"          # one cell: the CI decides
    assert v.better_claim(STEADY, [up, up], **ROW)["verdict"] == "inconclusive"    # 0.0125 > 0.05 / 4
    assert v.better_claim(STEADY, [(*up, 3), (*up, 3)], **ROW)["verdict"] == "reproduced"


def test_sign_claim_counts_cells_on_the_expected_side():
    cells = [UP, UP, v.SeedCI(0.1, 0.05, 0.15, 3), FLAT]
    row = v.sign_claim(None, cells, claim="tau > 0", source="ours")
    assert row["verdict"] == "reproduced"
    assert row["evidence"].startswith("CI above 0 in 3 of 4 cells, below 0 in 0; after Holm over 8 one-sided")
    assert v.sign_claim(None, cells, -1, claim="tau < 0", source="ours")["verdict"] == "contradicted"
    assert v.sign_claim(None, [DOWN, DOWN, UP], -1, claim="tau < 0", source="ours")["verdict"] == "inconclusive"
    assert v.sign_claim(None, [DOWN, FLAT], -1, claim="tau < 0", source="ours")["verdict"] == "reproduced"
    assert v.sign_claim(None, [DOWN, UP], -1, claim="t", source="ours", primary=0)["verdict"] == "reproduced"
    assert v.sign_claim(WEAK, cells, claim="tau > 0", source="ours")["verdict"] == "not testable here"
    assert v.sign_claim(STEADY, cells, claim="tau > 0", source="ours")["evidence"].endswith("3 seeds)")
    with pytest.raises(ConfigError, match="expected_sign"):
        v.sign_claim(None, cells, 0, claim="tau", source="ours")


def _cuts(tolerance, by_mean, by_ci, by_lo=None, excluded=None):
    def cut(reduction, drop=v.SeedCI(0.004, 0.001, 0.007, 3)):
        return None if reduction is None else v.Cut(round(1 - reduction, 2), reduction, drop)
    far = v.SeedCI(0.03, 0.02, 0.04, 3)
    return v.Cuts(tolerance, cut(by_mean), cut(by_ci), cut(by_lo), cut(excluded, far))


@pytest.mark.parametrize("absolute, relative, verdict", [
    ((0.40, 0.35), (0.10, 0.0), "reproduced"),       # the whole CI under 1 pt up to a 35% cut
    ((0.40, 0.20), (0.10, 0.0), "inconclusive"),     # only the mean rule reaches 30%
    ((0.20, 0.10), (0.30, 0.30), "inconclusive"),    # only the relative tolerance reaches it
    ((0.25, 0.10), (0.10, None), "inconclusive"),    # no keep rate excluded (a Cuts without by_lo/excluded)
    ((None, None), (None, None), "inconclusive"),
    ((0.10, 0.10, 0.20, 0.50), (None, None), "contradicted"),   # excluded at 50% before any cut reaches 30%
    ((None, None, None, 0.10), (None, None), "contradicted"),   # the first keep rate is already excluded
    ((0.25, 0.10, 0.35, 0.50), (None, None), "inconclusive"),   # a 35% cut is still allowed before it
])
def test_cut_claim_rules(absolute, relative, verdict):
    row = v.cut_claim(STEADY, _cuts(0.01, *absolute), _cuts(0.004, *relative), claim="30-40% for < 1 pt",
                      source="paper", where="Fig. 3")
    assert row["verdict"] == verdict


def test_cut_claim_evidence_quotes_cuts_tolerances_and_the_unpruned_model():
    row = v.cut_claim(STEADY, _cuts(0.01, 0.40, 0.35), _cuts(0.004, 0.10, None), claim="c", source="paper")
    ev = row["evidence"]
    assert "target 30%" in ev and "absolute tolerance 1.00 pt: 40% at keep rate 0.6" in ev
    assert "35% at keep rate 0.65 (drop 0.40 pt, CI 0.10 pt to 0.70 pt) with the whole CI under it" in ev
    assert "relative tolerance 0.40 pt: 10% at keep rate 0.9" in ev and "none with the whole CI under it" in ev
    assert ev.endswith("; unpruned 40.0% (95% CI 30.1% to 49.9%, 3 seeds)")
    weak = v.cut_claim(WEAK, _cuts(0.01, 0.40, 0.35), _cuts(0.004, 0.40, 0.35), claim="c", source="paper")
    assert weak["verdict"] == "not testable here" and "not clearly above chance" in weak["evidence"]
    bad = v.cut_claim(STEADY, _cuts(0.01, 0.1, 0.1, 0.2, 0.5), _cuts(0.004, None, None), claim="c", source="paper")
    assert "the whole CI above it from 50% at keep rate 0.5 (drop 3.00 pt, CI 2.00 pt to 4.00 pt) on" in \
        bad["evidence"]


def test_largest_contiguous_cut_finds_where_the_claim_is_excluded():
    rows = _rows({1.0: ZERO, 0.9: SMALL,
                  0.7: {0: 0.0, 1: 0.008, 2: 0.016},             # CI contains 1 pt: allowed, not shown
                  0.5: {0: 0.03, 1: 0.04, 2: 0.05}})             # CI 1.5 to 6.5 pt: excluded
    cuts = v.largest_contiguous_cut(rows, 0.01)
    assert cuts.by_lo.keep_rate == 0.7 and cuts.excluded.keep_rate == 0.5 and cuts.by_ci.keep_rate == 0.9
    row = v.cut_claim(STEADY, cuts, cuts, claim="c", source="paper")
    assert row["verdict"] == "inconclusive"                       # 30% is allowed at keep rate 0.7
    assert v.cut_claim(STEADY, cuts, cuts, claim="c", source="paper", target=0.4)["verdict"] == "contradicted"
    clean = v.largest_contiguous_cut(_rows({1.0: ZERO, 0.9: SMALL}), 0.01)
    assert clean.excluded is None and clean.by_lo.keep_rate == 0.9


def test_unpaired_difference_is_welch_over_seeds():
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
    cells = {("ast", "a", 0.7): (0.05, 0.01, 0.09, 3), ("ast", "a", 0.5): (0.06, 0.02, 0.10, 3),
             ("mae", "b", 0.7): (-0.05, -0.09, -0.01, 3)}
    row = v.over_models({("ast", "a"): good, ("mae", "b"): weak}, cells, "better", claim="c", source="paper")
    # the weak model's loss does not count: 2 of 2 testable cells are wins
    assert row["verdict"] == "reproduced" and "2 of 2" in row["evidence"] and "('mae', 'b')" in row["evidence"]
    assert "reproduced in 2 of 2 cells (('ast', 'a', 0.7), ('ast', 'a', 0.5))" in row["evidence"]
    none = v.over_models({("ast", "a"): weak, ("mae", "b"): weak}, cells, "sign", claim="c", source="ours")
    assert none["verdict"] == "not testable here"
    with pytest.raises(ConfigError, match="kind"):
        v.over_models({}, {}, "worse", claim="c", source="ours")


def test_over_models_bound_judges_a_drop_under_the_tolerance_once_over_models():
    """The fine-tuned cut claim: one cell per model (drop control - pruned), "< 1 pt" = below 0.01, one verdict."""
    good, weak = v.testable([0.80, 0.82, 0.81], chance=0.1), v.testable([0.20, 0.35, 0.25], chance=0.1)
    models = {("ast", "a"): good, ("mae", "a"): good, ("mae", "b"): weak}
    under = {("ast", "a"): (0.002, -0.004, 0.006, 3), ("mae", "a"): (0.0, -0.003, 0.003, 3),
             ("mae", "b"): (0.2, 0.15, 0.25, 3)}
    row = v.over_models(models, under, "bound", side=-1, tolerance=v.PAPER_TOLERANCE, claim="c", source="paper")
    assert row["verdict"] == "reproduced" and "left out" in row["evidence"]    # the weak model's loss is not counted
    over = {**under, ("mae", "a"): (0.12, 0.10, 0.14, 3)}
    assert v.over_models(models, over, "bound", side=-1, tolerance=0.01, claim="c", source="paper")["verdict"] == \
        "inconclusive"                                                          # one under, one over: they disagree
    both_over = {("ast", "a"): (0.05, 0.03, 0.07, 3), ("mae", "a"): (0.12, 0.10, 0.14, 3)}
    assert v.over_models(models, both_over, "bound", side=-1, tolerance=0.01, claim="c", source="paper")[
        "verdict"] == "contradicted"
    wide = {("ast", "a"): (0.01, -0.05, 0.07, 3)}
    assert v.over_models(models, wide, "bound", side=-1, tolerance=0.01, claim="c", source="paper")["verdict"] == \
        "inconclusive"


def test_over_models_primary_cell():
    good, weak = v.testable([0.80, 0.82, 0.81], chance=0.1), v.testable([0.20, 0.35, 0.25], chance=0.1)
    cells = {("ast", "a"): FLAT, ("ast", "b"): UP, ("mae", "a"): UP}
    models = {("ast", "a"): good, ("ast", "b"): good, ("mae", "a"): weak}
    assert v.over_models(models, cells, "better", claim="c", source="ours")["verdict"] == "reproduced"
    assert v.over_models(models, cells, "better", claim="c", source="ours", primary=("ast", "a"))["verdict"] == \
        "inconclusive"
    row = v.over_models(models, cells, "sign", claim="c", source="ours", primary=("mae", "a"))
    assert row["verdict"] == "not testable here" and row["evidence"].startswith("the primary cell ('mae', 'a')")


# ------------------------------------------------------------------------------------------------ two-level bootstrap

def _simulate(rng, delta, n_seeds=3, n_clips=1900, n_groups=250, sd_seed=0.005, sd_group=0.02, flip=0.2):
    """Per-clip correctness (0/1) of methods A and B, (n_seeds, n_clips), and a speaker per clip, from a model
    whose population difference A - B is exactly `delta`: B's accuracy per clip lies in 0.07..0.93 (speaker and
    clip difficulty, a seed's overall quality); A adds delta, a speaker effect (sd `sd_group`) and a seed effect
    (sd `sd_seed`), both uniform with mean 0 and small enough never to leave 0..1. Within a seed, A and B share
    their coin flip except on a share `flip` of the clips, so most clips agree, as a model and its pruned self
    do (about 8% of the clips differ)."""
    speaker = rng.integers(0, n_groups, n_clips)
    base = 0.1 + 0.8 / (1 + np.exp(-(1.5 + rng.normal(0, 0.8, n_groups)[speaker] + rng.normal(0, 1, n_clips))))
    p_b = base[None, :] + rng.uniform(-0.03, 0.03, (n_seeds, 1))
    p_a = p_b + delta + math.sqrt(3) * (sd_group * rng.uniform(-1, 1, n_groups)[speaker][None, :]
                                        + sd_seed * rng.uniform(-1, 1, (n_seeds, 1)))
    u = rng.random((n_seeds, n_clips))
    u_a = np.where(rng.random((n_seeds, n_clips)) < flip, rng.random((n_seeds, n_clips)), u)
    return (u_a < p_a).astype(float), (u < p_b).astype(float), speaker


def test_paired_bootstrap_on_data_with_a_known_answer():
    a = np.array([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    same = v.paired_bootstrap(a + 0.25, a, seed=3)               # the same shift on every clip: nothing to resample
    assert (same.mean, same.lo, same.hi) == pytest.approx((0.25, 0.25, 0.25))
    assert same.p_values(0.0) == (0.0, 1.0) and same.p_values(0.25) == (1.0, 1.0)
    assert (same.n_seeds, same.n_clips, same.n_groups, same.n_resamples) == (2, 4, 4, 2000)
    assert same.seed_only == v.SeedCI(0.25, 0.25, 0.25, 2)


def test_paired_bootstrap_is_paired_deterministic_and_reports_both_intervals():
    rng = np.random.default_rng(7)
    a, b, speaker = _simulate(rng, 0.02)
    r = v.paired_bootstrap(a, b, speaker, seed=11)
    assert r == v.paired_bootstrap(a, b, speaker, seed=11) and r != v.paired_bootstrap(a, b, speaker, seed=12)
    assert r.mean == pytest.approx((a - b).mean()) and r.lo < r.mean < r.hi
    assert (r.n_seeds, r.n_clips, r.n_groups) == (3, 1900, len(set(speaker)))
    assert r.seed_only == v.seed_ci(list((a - b).mean(axis=1)))
    assert r.p_above == pytest.approx(np.mean(r.draws <= 0)) and r.p_below == pytest.approx(np.mean(r.draws >= 0))
    assert r.summary()["seed_lo"] == r.seed_only.lo and r.summary()["n_groups"] == r.n_groups
    # paired: a shared per-clip difficulty added to both methods changes nothing
    shift = rng.normal(0, 1, a.shape[1])
    assert v.paired_bootstrap(a + shift, b + shift, speaker, seed=11).lo == pytest.approx(r.lo)
    # speakers, not clips, are the unit: a speaker effect widens the grouped interval over the per-clip one
    d_group = rng.normal(0, 0.3, 250)[speaker]
    assert v.paired_bootstrap(a + d_group, b, speaker).hi - v.paired_bootstrap(a + d_group, b, speaker).lo > \
        1.5 * (v.paired_bootstrap(a + d_group, b).hi - v.paired_bootstrap(a + d_group, b).lo)
    cell = v.claim_cell(r, -1, 0.05)                             # p-values recomputed at the cell's boundary
    assert cell.p_reproduced == pytest.approx(np.mean(r.draws >= 0.05)) and cell.outcome == "reproduced"
    assert v.beats(r) == (r.lo > 0)


@pytest.mark.parametrize("a, b, groups, kw, match", [
    (np.zeros((3, 5)), np.zeros((3, 4)), None, {}, "one shape"),
    (np.zeros(5), np.zeros(5), None, {}, "one shape"),
    (np.zeros((1, 5)), np.zeros((1, 5)), None, {}, "at least 2 seeds"),
    (np.full((2, 5), np.nan), np.zeros((2, 5)), None, {}, "NaN"),
    (np.zeros((2, 5)), np.zeros((2, 5)), [0, 1], {}, "one group id per clip"),
    (np.zeros((2, 5)), np.zeros((2, 5)), None, {"n_resamples": 10}, "at least 100"),
])
def test_paired_bootstrap_refuses_bad_input(a, b, groups, kw, match):
    with pytest.raises(ConfigError, match=match):
        v.paired_bootstrap(a, b, groups, **kw)


@pytest.mark.parametrize("sd_seed, upper", [
    (0.01, 0.99),     # a seed spread of the paired difference of 1 pt, about what this project's 3-seed drops show
    (0.005, 1.0),     # clip coin-flip noise dominates: counted at both levels, the interval is conservative
])
def test_two_level_interval_covers_the_true_difference_near_95_percent(sd_seed, upper):
    # 200 simulated test sets with seed-level and speaker-level random effects on the difference (true: 1 pt)
    rng = np.random.default_rng(2024)
    covered = 0
    for i in range(200):
        a, b, speaker = _simulate(rng, 0.01, sd_seed=sd_seed)
        r = v.paired_bootstrap(a, b, speaker, n_resamples=1000, seed=i)
        covered += r.lo <= 0.01 <= r.hi
    assert 0.88 <= covered / 200 <= upper


def _verdict_of(a, b, speaker, seed):
    cell = v.claim_cell(v.paired_bootstrap(a, b, speaker, n_resamples=1000, seed=seed))
    return v.combine_cells([cell]).verdict


def test_a_two_point_gain_is_reproduced_and_no_gain_is_inconclusive():
    # the check: 3 seeds, 1,900 clips from 250 speakers (seed spread 0.5 pt, speaker spread 2 pt)
    rng = np.random.default_rng(32)
    better = [_verdict_of(*_simulate(rng, 0.02), seed=i) for i in range(40)]
    assert set(better) <= {"reproduced", "inconclusive"} and better.count("reproduced") >= 0.8 * len(better)
    equal = [_verdict_of(*_simulate(rng, 0.0), seed=i) for i in range(100)]
    assert equal.count("inconclusive") >= 90


def test_no_rule_returns_the_retired_words():
    outputs = [v.better_claim(STEADY, d, **ROW)["verdict"] for d in ([UP], [DOWN], [FLAT], [UP, DOWN])]
    outputs += [v.sign_claim(None, d, s, claim="c", source="ours")["verdict"] for d in ([UP], [FLAT]) for s in (1, -1)]
    outputs += [v.cut_claim(STEADY, _cuts(0.01, *x), _cuts(0.004, None, None), claim="c", source="paper")["verdict"]
                for x in ((0.4, 0.35), (0.4, 0.2), (None, None), (None, None, None, 0.1))]
    outputs += [_verdict(*c).verdict for c in ((UP,), (DOWN,), (FLAT,), (UP, DOWN))]
    outputs += [v.classify_cell(*x) for x in ((0.1, 0.2), (-0.2, -0.1), (-0.1, 0.1), (math.nan, 0.1))]
    assert set(outputs) == set(v.VERDICTS)
