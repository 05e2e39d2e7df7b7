"""From per-seed (and per-clip) numbers to verdicts: the rules that decide whether a claim is reproduced, in one
place.

Units: every accuracy (or mAP), drop, difference and tolerance is a fraction in 0..1 (0.01 = the paper's
"1 point"); every MAC reduction is a fraction too (0.30 = "30% fewer MACs"). Evidence strings print them as
% and pt.

Two intervals. `mean_ci` and the paired/unpaired differences are Student-t intervals over per-seed values (the
trained model is the unit; one seed gives an infinitely wide interval, so no CI rule can pass on one model).
`paired_bootstrap` also counts the test set: it resamples seeds and speaker groups of clips, the same draws for
both methods, and reports the seed-only t interval beside it.

Four verdicts (`VERDICTS`), decided per cell by `classify_cell` and per claim by `combine_cells` under the one rule
in `VERDICT_RULE` (Holm-Bonferroni over the cells, or a pre-declared primary cell).

Pure functions, no torch, no pandas: `tprune_core.book` imports `VERDICTS` from here and must stay cheap to
import, so numpy and scipy are only imported when an interval is computed.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import ConfigError

REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE = ("reproduced", "contradicted", "inconclusive",
                                                        "not testable here")
VERDICTS = (REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE)
SOURCES = ("paper", "ours")          # a claim of the paper, or one we added
PAPER_TOLERANCE = 0.01               # the paper's "< 1 point", in accuracy fractions
RELATIVE_TOLERANCE = 0.01            # 1% of the unpruned model's own accuracy
FAMILY_ALPHA = 0.05                  # family-wise error rate of one claim's cells (Holm-Bonferroni)
NO_DIFFERENCE = "no difference the seeds support"

VERDICT_RULE = (
    "Each cell of a claim (a model, dataset or keep rate) gets a 95% interval for the quantity the claim is about "
    "and two one-sided p-values from the same t statistic or bootstrap distribution: one for the claim's side of "
    "its boundary (0, or the tolerance the claim states) and one for the other side. A cell is reproduced when its "
    "interval lies wholly on the claim's side of the boundary, contradicted when it lies wholly on the other side, "
    "inconclusive otherwise. A claim over m testable cells is judged by Holm-Bonferroni over all 2m one-sided "
    "p-values at a family-wise error rate of 5%: reproduced when at least one cell is reproduced after the "
    "correction and none is contradicted; contradicted when at least one is contradicted and none reproduced; "
    "inconclusive when no cell is either, or when cells disagree (the evidence says which). When a primary cell was "
    "declared before the numbers were seen, the verdict is that cell's alone, uncorrected; the other cells are "
    "shown but not counted. A claim of \"X% fewer MACs for < 1 point\" walks the keep rates down from 1.0: "
    "reproduced when every keep rate down to X% has its whole drop interval under the tolerance, contradicted when "
    "one of them has its whole interval above it; models fine-tuned with pruning at one keep rate near the claimed "
    "cut are instead one cell each (drop under the tolerance) and combined by the Holm rule above. A model whose "
    "unpruned accuracy is not clearly above chance "
    "(lower 95% bound under 3 x chance) makes its claims not testable here, never reproduced.")


@dataclass(frozen=True)
class SeedCI:
    """Mean and 95% Student-t interval over `n` per-seed values."""
    mean: float
    lo: float
    hi: float
    n: int


@dataclass(frozen=True)
class Testability:
    """Whether the unpruned model is clearly above chance (`ok`), with the numbers and a sentence saying why."""
    ok: bool
    mean: float
    lo: float
    hi: float
    n: int
    threshold: float
    reason: str


@dataclass(frozen=True)
class Tolerances:
    """The paper's absolute tolerance and one relative to the unpruned accuracy (fractions)."""
    absolute: float
    relative: float


@dataclass(frozen=True)
class Cut:
    """One keep rate's MAC reduction and its paired accuracy drop over seeds."""
    keep_rate: float
    mac_reduction: float
    drop: SeedCI


@dataclass(frozen=True)
class Cuts:
    """The largest contiguous cut under `tolerance`: by the mean drop, and by the whole CI (None: none holds).
    `by_lo`: the largest contiguous cut the data still allow (no drop CI wholly above the tolerance on the way);
    `excluded`: the first keep rate whose whole drop CI lies above the tolerance (None: none, or not walked)."""
    tolerance: float
    by_mean: Cut | None
    by_ci: Cut | None
    by_lo: Cut | None = None
    excluded: Cut | None = None


@dataclass(frozen=True)
class PairedBootstrap:
    """Two-level paired bootstrap of a - b (see `paired_bootstrap`): mean difference, percentile interval,
    one-sided bootstrap p-values against `boundary` (`p_above` for "a - b > boundary", `p_below` for "<"),
    the sizes, and the seed-only t interval over per-seed means of the same data, for a side-by-side table."""
    mean: float
    lo: float
    hi: float
    p_above: float
    p_below: float
    boundary: float
    n_seeds: int
    n_clips: int
    n_groups: int
    n_resamples: int
    seed_only: SeedCI
    draws: object = field(default=None, repr=False, compare=False)   # the resampled differences (numpy)

    def p_values(self, boundary: float = 0.0) -> tuple[float, float]:
        """(p for a - b > boundary, p for a - b < boundary): the share of resamples on the other side."""
        return _shares(self.draws, boundary)

    def summary(self) -> dict:
        """One table row: both intervals side by side, the p-values and the counts."""
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "seed_lo": self.seed_only.lo,
                "seed_hi": self.seed_only.hi, "p_above": self.p_above, "p_below": self.p_below,
                "n_seeds": self.n_seeds, "n_clips": self.n_clips, "n_groups": self.n_groups}


@dataclass(frozen=True)
class Cell:
    """One cell of a claim: its interval, the two one-sided p-values (for the claim's side of `boundary` and for
    the other side) and its own outcome, uncorrected (`classify_cell`)."""
    key: object
    mean: float
    lo: float
    hi: float
    p_reproduced: float
    p_contradicted: float
    outcome: str
    side: int = 1
    boundary: float = 0.0


@dataclass(frozen=True)
class ClaimVerdict:
    """A claim's verdict, the sentence that explains it, and each cell's outcome after the rule (Holm, or the
    primary cell's own outcome for that cell and "not counted" for the others)."""
    verdict: str
    evidence: str
    cells: tuple
    corrected: tuple


# ------------------------------------------------------------------------------------------------ per-seed values

def _by_seed(values) -> dict:
    """seed -> value from a dict or a pandas Series (its index is the seed), or position -> value from a list.
    A seed given twice is an error (it would silently count one model twice, or drop one)."""
    pairs = [(seed, float(v)) for seed, v in (values.items() if hasattr(values, "items") else enumerate(values))]
    found = dict(pairs)
    if len(found) < len(pairs):
        raise ConfigError(f"a seed appears more than once in {[s for s, _ in pairs]}")
    return found


def _values(values) -> list[float]:
    """The values of a dict, a Series, an array or a list, duplicates kept (mean_ci counts every value)."""
    if isinstance(values, dict):
        values = values.values()
    elif hasattr(values, "to_numpy"):
        values = values.to_numpy()
    return [float(v) for v in values]


def mean_ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval (lo, hi) over per-seed values (NaN ignored). One value gives an
    infinitely wide interval, honestly; none gives NaNs."""
    import numpy as np              # lazily: see the module docstring
    from scipy import stats

    v = np.asarray(_values(values), dtype=float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if v.size == 1:
        return m, -math.inf, math.inf
    half = stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return m, float(m - half), float(m + half)


def seed_ci(values) -> SeedCI:
    """`mean_ci` as a SeedCI, counting the seeds that have a value."""
    m, lo, hi = mean_ci(values)
    n = sum(not math.isnan(v) for v in _values(values))
    return SeedCI(m, lo, hi, n)


def seed_differences(a_per_seed, b_per_seed, names=("a", "b")) -> dict:
    """seed -> a - b over the seeds both have (paired by seed: the same model evaluates both on the same clips).
    Fewer than 2 shared seeds is a ConfigError naming the seeds each side lacks."""
    a, b = _by_seed(a_per_seed), _by_seed(b_per_seed)
    shared = [s for s in a if s in b and not (math.isnan(a[s]) or math.isnan(b[s]))]
    if len(shared) < 2:
        raise ConfigError(
            f"paired difference {names[0]} - {names[1]} needs at least 2 seeds with a value on both sides; "
            f"shared: {shared}, only in {names[0]}: {[s for s in a if s not in b]}, "
            f"only in {names[1]}: {[s for s in b if s not in a]}")
    return {s: a[s] - b[s] for s in shared}


def paired_difference(a_per_seed, b_per_seed, names=("a", "b")) -> SeedCI:
    """Mean, 95% t-interval and n of the per-seed differences a - b, paired by seed: the same model evaluates
    both methods on the same clips, so the model-to-model spread cancels. Only seeds both sides have are used;
    fewer than 2 is a ConfigError."""
    return seed_ci(seed_differences(a_per_seed, b_per_seed, names))


def unpaired_difference(a_per_seed, b_per_seed) -> SeedCI:
    """a - b for two groups of DIFFERENT models (e.g. AudioMAE vs AST seeds, speech vs general-audio models): mean
    difference with a Welch t-interval over the two sets of per-seed values; `n` is the smaller group's size.
    Not paired: nothing ties seed 0 of one group to seed 0 of the other."""
    a, b = _values(a_per_seed), _values(b_per_seed)
    if len(a) < 2 or len(b) < 2:
        raise ConfigError(f"unpaired_difference: need at least 2 per-seed values per group, got {len(a)} and {len(b)}")
    import numpy as np
    from scipy import stats
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    diff = float(np.mean(a) - np.mean(b))
    se = math.sqrt(va + vb)
    if se == 0:
        return SeedCI(diff, diff, diff, min(len(a), len(b)))
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = float(stats.t.ppf(0.975, dof)) * se
    return SeedCI(diff, diff - half, diff + half, min(len(a), len(b)))


def _bounds(ci) -> tuple[float, float]:
    """(lo, hi) of a SeedCI, PairedBootstrap or Cell, or of a (mean, lo, hi[, n]) tuple."""
    return (float(ci.lo), float(ci.hi)) if hasattr(ci, "lo") else (float(ci[1]), float(ci[2]))


def beats(diff) -> bool:
    """A beats B when the CI of the paired difference a - b lies wholly above 0 (lo > 0)."""
    return _bounds(diff)[0] > 0


def loses(diff) -> bool:
    """A loses to B when the CI of a - b lies wholly below 0 (hi < 0)."""
    return _bounds(diff)[1] < 0


def outcome(diff) -> str:
    """"beats", "loses" or NO_DIFFERENCE (the CI of a - b contains 0)."""
    return "beats" if beats(diff) else "loses" if loses(diff) else NO_DIFFERENCE


# ------------------------------------------------------------------------------------------------ two-level bootstrap

def _shares(draws, boundary: float) -> tuple[float, float]:
    """(share of draws <= boundary, share >= boundary): the one-sided p-values for "above" and "below". A
    percentile interval whose lower end is above the boundary has the first at most (1 - level) / 2."""
    import numpy as np
    return float(np.mean(draws <= boundary)), float(np.mean(draws >= boundary))


def _multiplicities(rng, n_rows: int, n: int):
    """(n_rows, n) counts: how often each of n units is drawn when n are drawn with replacement, per row.
    Counting (not gathering) lets one matrix product apply a draw to every seed at once."""
    import numpy as np
    idx = rng.integers(0, n, size=(n_rows, n)) + (np.arange(n_rows) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=n_rows * n).reshape(n_rows, n)


def _per_clip(a, b, groups):
    """Checked (d = a - b, group index per clip, group sizes) from (n_seeds, n_clips) arrays."""
    import numpy as np
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 2 or a.shape != b.shape:
        raise ConfigError(f"paired_bootstrap: a and b must be (n_seeds, n_clips) arrays of one shape, got "
                          f"{a.shape} and {b.shape}")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ConfigError("paired_bootstrap: NaN in the per-clip values (every seed must score every clip)")
    if a.shape[0] < 2 or a.shape[1] < 2:
        raise ConfigError(f"paired_bootstrap: need at least 2 seeds and 2 clips, got {a.shape} (one model says "
                          "nothing about the seed level)")
    groups = np.arange(a.shape[1]) if groups is None else np.asarray(groups)
    if groups.shape != (a.shape[1],):
        raise ConfigError(f"paired_bootstrap: one group id per clip expected ({a.shape[1]}), got {groups.shape}")
    _, inv, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    return a - b, inv.ravel(), sizes


def paired_bootstrap(a, b, groups=None, *, n_resamples: int = 2000, boundary: float = 0.0, level: float = 0.95,
                     seed: int = 0) -> PairedBootstrap:
    """Paired two-level bootstrap of the mean of a - b. `a`, `b`: per-clip correctness (0/1) or a per-clip metric,
    shaped (n_seeds, n_clips), the same clips in the same order for both methods; `groups`: a group id per clip
    (speaker, source recording; None: every clip its own group). Each resample draws the seeds with replacement
    and the groups with replacement (clips travel with their group), the same draws for a and b, and takes the
    mean difference over the drawn seeds x clips. Percentile interval at `level`, one-sided p-values against
    `boundary`, deterministic given `seed`. Seeds and clips are crossed, so per-clip coin-flip noise is counted at
    both levels: conservative when it dominates. Three resampled seeds under-count the seed level: optimistic
    when it dominates. Simulated with 3 seeds, 1,900 0/1 clips, 250 speakers (tests/test_verdicts.py), a 95%
    interval covered 0.93-0.96 with a 1 pt seed spread of the difference, 0.97-1.0 with 0.5 pt, about 0.91 with
    1.5 pt; so the seed-only t interval comes along (`seed_only`) to be shown beside it."""
    import numpy as np
    d, inv, sizes = _per_clip(a, b, groups)
    n_seeds, n_clips = d.shape
    n_groups = sizes.size
    if int(n_resamples) < 100:
        raise ConfigError(f"paired_bootstrap: n_resamples must be at least 100, got {n_resamples}")
    # per group: each seed's sum of d, then the clip count: a resample is two count vectors, never a copy of clips
    cell = (inv[None, :] * (n_seeds + 1) + np.arange(n_seeds)[:, None]).ravel()
    per_group = np.bincount(cell, weights=d.ravel(), minlength=n_groups * (n_seeds + 1))
    per_group = per_group.reshape(n_groups, n_seeds + 1)
    per_group[:, n_seeds] = sizes
    rng = np.random.default_rng(seed)
    draws = np.empty(int(n_resamples))
    for start in range(0, draws.size, 500):              # blocks bound the memory of the count matrices
        rows = min(500, draws.size - start)
        w_seed, w_group = _multiplicities(rng, rows, n_seeds), _multiplicities(rng, rows, n_groups)
        # einsum, not BLAS: single-threaded, so a loaded machine does not oversubscribe its cores
        drawn = np.einsum("rg,gk->rk", w_group, per_group)
        draws[start:start + rows] = (w_seed * drawn[:, :n_seeds]).sum(axis=1) / (n_seeds * drawn[:, n_seeds])
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    p_above, p_below = _shares(draws, boundary)
    return PairedBootstrap(float(d.mean()), float(lo), float(hi), p_above, p_below, float(boundary), n_seeds,
                           n_clips, n_groups, draws.size, seed_ci(list(d.mean(axis=1))), draws)


# ------------------------------------------------------------------------------------------------ cells and the rule

def _side(side) -> int:
    if side not in (1, -1):
        raise ConfigError(f"side must be +1 (the claim predicts above the boundary) or -1 (below), got {side}")
    return int(side)


def classify_cell(lo: float, hi: float, side: int = 1, tolerance: float | None = None) -> str:
    """One cell's outcome from its interval. The claim says the quantity lies above (`side` +1) or below (-1) its
    boundary: `tolerance` on the quantity's own scale, 0 when None (e.g. "drop < 1 pt": side -1, tolerance
    0.01). Reproduced: the interval lies wholly on the claim's side; contradicted: wholly on the other side;
    inconclusive: it contains the boundary; not testable here: no interval (NaN)."""
    side, b = _side(side), 0.0 if tolerance is None else float(tolerance)
    if math.isnan(lo) or math.isnan(hi):
        return NOT_TESTABLE
    above, below = lo > b, hi < b
    if above or below:
        return REPRODUCED if above == (side == 1) else CONTRADICTED
    return INCONCLUSIVE


def t_pvalues(ci, boundary: float = 0.0, level: float = 0.95) -> tuple[float, float]:
    """(p for "above boundary", p for "below") from a Student-t interval: a SeedCI, or a (mean, lo, hi, n)
    tuple. The standard error is recovered from the interval's half-width, so the p-values agree with it: p for
    "above" is under (1 - level) / 2 exactly when lo > boundary. A (mean, lo, hi) tuple without n is read as 2
    seeds, the heaviest tails a finite t interval has (the largest p-values: conservative). An infinite interval
    (one seed) gives 1.0 for both; a NaN one gives NaN."""
    from scipy import stats
    lo, hi = _bounds(ci)
    n = ci.n if hasattr(ci, "n") else int(ci[3]) if len(ci) > 3 else 2
    if math.isnan(lo) or math.isnan(hi):
        return float("nan"), float("nan")
    if math.isinf(lo) or math.isinf(hi) or n < 2:
        return 1.0, 1.0
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    if half == 0:                                          # every seed agrees: certain unless on the boundary
        return float(centre <= boundary), float(centre >= boundary)
    t = (centre - boundary) / (half / stats.t.ppf(0.5 + level / 2, n - 1))
    return float(stats.t.sf(t, n - 1)), float(stats.t.cdf(t, n - 1))


def claim_cell(ci, side: int = 1, tolerance: float | None = None, *, key=None,
               testability: Testability | None = None) -> Cell:
    """One cell of a claim from its interval: a SeedCI or (mean, lo, hi[, n]) tuple (t p-values, `t_pvalues`) or
    a PairedBootstrap (its bootstrap p-values, recomputed against `tolerance`). `side`, `tolerance`: as in
    `classify_cell`. A cell of a model that failed `testable` is not testable here; a Cell is taken as it is."""
    side, b = _side(side), 0.0 if tolerance is None else float(tolerance)
    if isinstance(ci, Cell):
        return ci
    if isinstance(ci, PairedBootstrap):
        mean, (p_above, p_below) = ci.mean, ci.p_values(b)
    else:
        mean, (p_above, p_below) = (ci.mean if hasattr(ci, "mean") else float(ci[0])), t_pvalues(ci, b)
    lo, hi = _bounds(ci)
    outcome = classify_cell(lo, hi, side, b)
    if testability is not None and not testability.ok:
        outcome = NOT_TESTABLE
    p_rep, p_con = (p_above, p_below) if side == 1 else (p_below, p_above)
    return Cell(key, float(mean), lo, hi, p_rep, p_con, outcome, side, b)


def holm(pvalues, alpha: float = FAMILY_ALPHA) -> list[bool]:
    """Holm-Bonferroni step-down: which hypotheses are rejected at family-wise error rate `alpha`. The k-th
    smallest p-value (k from 0) must be <= alpha / (m - k), and the first that is not stops the walk."""
    p = [float(x) for x in pvalues]
    if any(math.isnan(x) for x in p):
        raise ConfigError("holm: a p-value is NaN (leave untestable cells out first)")
    rejected = [False] * len(p)
    for k, i in enumerate(sorted(range(len(p)), key=p.__getitem__)):
        if p[i] > alpha / (len(p) - k):
            break
        rejected[i] = True
    return rejected


def _names(cells) -> str:
    named = [str(c.key) for c in cells if c.key is not None]
    return f" ({', '.join(named)})" if named else ""


def _primary_verdict(cells: list, primary) -> ClaimVerdict:
    """The pre-declared primary cell decides alone, uncorrected; the others are reported, not counted."""
    keyed = any(c.key is not None for c in cells)
    found = [i for i, c in enumerate(cells) if (c.key if keyed else i) == primary]
    if len(found) != 1:
        raise ConfigError(f"primary cell {primary!r} must match exactly one of the cells "
                          f"{[c.key for c in cells] if keyed else list(range(len(cells)))}")
    main = cells[found[0]]
    others = [c.outcome for i, c in enumerate(cells) if i != found[0]]
    evidence = (f"verdict of the pre-declared primary cell {primary} alone, uncorrected: CI {_pt(main.lo)} to "
                f"{_pt(main.hi)} against {_pt(main.boundary)}, {main.outcome}; the other {len(others)} cells, "
                f"not counted: {others.count(REPRODUCED)} reproduced, {others.count(CONTRADICTED)} contradicted")
    corrected = tuple(c.outcome if i == found[0] else "not counted" for i, c in enumerate(cells))
    return ClaimVerdict(main.outcome, evidence, tuple(cells), corrected)


def combine_cells(cells, *, primary=None, alpha: float = FAMILY_ALPHA) -> ClaimVerdict:
    """One verdict for a claim from its cells (`claim_cell`), by the rule in `VERDICT_RULE`. Holm-Bonferroni
    over the 2m one-sided p-values of the m testable cells at family-wise `alpha`: reproduced when at least one
    cell is reproduced after the correction and none contradicted, contradicted when the reverse, inconclusive
    when neither or both (the evidence names the cells that disagree). A cell counts as reproduced or
    contradicted after Holm only if its own interval says so too. `primary`: the key (position, when the cells
    have no keys) of a cell declared primary in advance: its uncorrected outcome is the verdict."""
    cells = list(cells)
    if not cells:
        raise ConfigError("combine_cells: no cells")
    if primary is not None:
        return _primary_verdict(cells, primary)
    live = [c for c in cells if c.outcome != NOT_TESTABLE]
    if not live:
        return ClaimVerdict(NOT_TESTABLE, f"no testable cell among {len(cells)}", tuple(cells),
                            tuple(NOT_TESTABLE for _ in cells))
    rejected = holm([c.p_reproduced for c in live] + [c.p_contradicted for c in live], alpha)
    after = [REPRODUCED if rejected[i] and c.outcome == REPRODUCED
             else CONTRADICTED if rejected[len(live) + i] and c.outcome == CONTRADICTED else INCONCLUSIVE
             for i, c in enumerate(live)]
    rep = [c for c, o in zip(live, after) if o == REPRODUCED]
    con = [c for c, o in zip(live, after) if o == CONTRADICTED]
    verdict = (REPRODUCED if rep and not con else CONTRADICTED if con and not rep else INCONCLUSIVE)
    evidence = (f"after Holm over {2 * len(live)} one-sided tests (family-wise {100 * alpha:g}%): reproduced in "
                f"{len(rep)} of {len(live)} cells{_names(rep)}, contradicted in {len(con)}{_names(con)}")
    if rep and con:
        evidence += ": the cells disagree, so inconclusive"
    if len(live) < len(cells):
        evidence += f"; {len(cells) - len(live)} cells not testable, left out"
    it = iter(after)
    return ClaimVerdict(verdict, evidence, tuple(cells),
                        tuple(next(it) if c.outcome != NOT_TESTABLE else NOT_TESTABLE for c in cells))


# ------------------------------------------------------------------------------------------------ testability

def chance_level(n_classes: int) -> float:
    """Chance accuracy of a single-label task: 1 / n_classes. For multi-label mAP there is no such formula:
    pass `testable` the chance level yourself (an uninformed ranking's mAP is about the positive rate)."""
    if int(n_classes) < 2:
        raise ConfigError(f"n_classes must be at least 2, got {n_classes}")
    return 1.0 / int(n_classes)


def testable(unpruned_per_seed, chance: float, factor: float = 3.0) -> Testability:
    """A claim is testable only when the unpruned model is clearly above chance: the lower bound of the 95%
    t-interval over seeds of its accuracy is >= factor x chance. One seed never passes (its interval is
    infinite). `chance`: `chance_level(n_classes)` for single-label accuracy, the positive rate for mAP."""
    if not 0 < chance < 1:
        raise ConfigError(f"chance must be a fraction in (0, 1), got {chance}")
    ci = seed_ci(unpruned_per_seed)
    if ci.n == 0:
        raise ConfigError("testable: no per-seed accuracy of the unpruned model")
    threshold = factor * chance
    ok = ci.lo >= threshold
    verdict = "clearly above chance" if ok else "not clearly above chance"
    reason = (f"unpruned accuracy {_pct(ci.mean)} (95% CI {_pct(ci.lo)} to {_pct(ci.hi)}, {_seeds(ci.n)}) is "
              f"{verdict}: CI lower bound {_pct(ci.lo)} {'>=' if ok else '<'} {factor:g} x chance "
              f"{_pct(chance)} = {_pct(threshold)}")
    return Testability(ok, ci.mean, ci.lo, ci.hi, ci.n, threshold, reason)


def tolerances(unpruned_mean_acc: float) -> Tolerances:
    """The paper's absolute 1 point (0.01) and 1% of the unpruned accuracy (0.01 x acc): on a weak model a
    1-point drop is a large share of what it gets right, so the relative tolerance is the stricter one there."""
    if not 0 <= unpruned_mean_acc <= 1:
        raise ConfigError(f"unpruned accuracy must be a fraction in 0..1 (not points), got {unpruned_mean_acc}")
    return Tolerances(PAPER_TOLERANCE, RELATIVE_TOLERANCE * unpruned_mean_acc)


# ------------------------------------------------------------------------------------------------ contiguous cuts

def _cut(row) -> Cut:
    drops = row["drops"]
    ci = seed_ci(drops)
    if ci.n == 0:
        raise ConfigError(f"keep rate {row['keep_rate']}: no per-seed drops")
    return Cut(float(row["keep_rate"]), float(row["mac_reduction"]), ci)


def _last_contiguous(cuts: list[Cut], holds) -> Cut | None:
    """The last cut of the run that holds from the top; the first failing keep rate ends the walk."""
    best = None
    for cut in cuts:
        if not holds(cut):
            break
        best = cut
    return best


def largest_contiguous_cut(rows, tolerance: float) -> Cuts:
    """The largest MAC cut for which "cuts X% of MACs for < tolerance" holds. `rows`: one per keep rate (dicts
    or a DataFrame) with `keep_rate`, `mac_reduction` and `drops` (seed -> acc_unpruned - acc_pruned, paired on
    the same clips); walked from the largest keep rate down. The claim holds at a keep rate only if it also holds
    at every larger one: the first failing keep rate stops the walk, even if a smaller keep rate passes again.
    `by_mean`: mean drop < tolerance; `by_ci`, stricter: the CI's upper bound < tolerance; `by_lo`, looser: no
    CI's lower bound > tolerance on the way, and `excluded`, the keep rate that ends that walk (None: none)."""
    rows = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
    if not rows:
        raise ConfigError("largest_contiguous_cut: no keep rates")
    cuts = sorted((_cut(r) for r in rows), key=lambda c: -c.keep_rate)

    def excluded(c):      # the whole drop CI above the tolerance: this keep rate contradicts the claim
        return classify_cell(c.drop.lo, c.drop.hi, -1, tolerance) == CONTRADICTED

    return Cuts(tolerance,
                by_mean=_last_contiguous(cuts, lambda c: c.drop.mean < tolerance),
                by_ci=_last_contiguous(cuts, lambda c: c.drop.hi < tolerance),
                by_lo=_last_contiguous(cuts, lambda c: not excluded(c)),
                excluded=next((c for c in cuts if excluded(c)), None))


# ------------------------------------------------------------------------------------------------ claim rows

def claim_row(claim: str, source: str, verdict: str, evidence: str, where: str = "",
              testability: Testability | None = None) -> dict:
    """One findings row. Refuses an unknown verdict or source, an empty claim or evidence, and a "reproduced"
    verdict on a model that failed `testable`: nothing is reproduced that could not be tested."""
    if verdict not in VERDICTS:
        raise ConfigError(f"verdict {verdict!r} not in {list(VERDICTS)}")
    if source not in SOURCES:
        raise ConfigError(f"source {source!r} not in {list(SOURCES)} (a claim of the paper, or one of ours)")
    if not str(claim).strip() or not str(evidence).strip():
        raise ConfigError(f"claim {claim!r}: claim and evidence must not be empty")
    if verdict == "reproduced" and testability is not None and not testability.ok:
        raise ConfigError(f"claim {claim!r} cannot be 'reproduced': not testable here ({testability.reason})")
    return {"claim": claim, "source": source, "verdict": verdict, "evidence": evidence, "where": where}


def _gated(testability: Testability | None, verdict: str, evidence: str) -> tuple[str, str]:
    """The verdict with the unpruned model's accuracy appended to the evidence, or "not testable here" with the
    reason first when the model failed `testable` (None: no model to test, evidence unchanged)."""
    if testability is None:
        return verdict, evidence
    if not testability.ok:
        return "not testable here", f"{testability.reason}; {evidence}"
    return verdict, f"{evidence}; {_unpruned_text(testability)}"


def cut_claim(testability: Testability, cut_abs: Cuts, cut_rel: Cuts, *, claim: str, source: str,
              where: str = "", target: float = 0.30) -> dict:
    """The paper's "30-40% fewer MACs for < 1 pt", judged on the absolute tolerance (`cut_abs`). Reproduced: the
    contiguous cut with the whole drop CI under it (`by_ci`) reaches `target`; contradicted: walking down, a keep
    rate before any that reaches `target` has its whole drop CI above it (`excluded`, `by_lo` short of `target`);
    inconclusive otherwise (e.g. only the mean rule or only the relative tolerance `cut_rel` reaches `target`:
    the evidence quotes both); not testable here: the model failed `testable`. A Cuts built without `by_lo` and
    `excluded` is never contradicted."""
    def reaches(cut):
        return cut is not None and cut.mac_reduction >= target

    verdict = (REPRODUCED if reaches(cut_abs.by_ci)
               else CONTRADICTED if cut_abs.excluded is not None and not reaches(cut_abs.by_lo) else INCONCLUSIVE)
    evidence = (f"largest contiguous cut, target {_pct(target, 0)}: {_cuts_text(cut_abs, 'absolute')}; "
                f"{_cuts_text(cut_rel, 'relative')}")
    verdict, evidence = _gated(testability, verdict, evidence)
    return claim_row(claim, source, verdict, evidence, where, testability)


def _items(cells) -> list:
    """(key, interval) pairs: a mapping's items, or (None, interval) for a list (cells then go by position)."""
    return list(cells.items()) if isinstance(cells, Mapping) else [(None, c) for c in cells]


def _judged_row(testability, items, side, tolerance, lead, primary, claim, source, where) -> dict:
    """The findings row of a claim over cells: `combine_cells`, then the model's testability gate."""
    judged = combine_cells([claim_cell(ci, side, tolerance, key=key) for key, ci in items], primary=primary)
    verdict, evidence = _gated(testability, judged.verdict, f"{lead}; {judged.evidence}")
    return claim_row(claim, source, verdict, evidence, where, testability)


def claim_from_cells(testability: Testability | None, cells, side: int = 1, tolerance: float | None = None, *,
                     claim: str, source: str, where: str = "", primary=None) -> dict:
    """A findings row for any claim over cells, by the rule in VERDICT_RULE. `cells`: a list, or a mapping key ->
    interval (the keys name cells in the evidence), each a SeedCI, (mean, lo, hi[, n]) tuple, PairedBootstrap or
    Cell; `side`, `tolerance`: the claim's side of its boundary (`classify_cell`); `primary`: the key (or
    position) of a cell declared primary in advance. `testability` None: the claim rests on no model's accuracy."""
    items = _items(cells)
    if not items:
        raise ConfigError(f"claim {claim!r}: no cells")
    own = [classify_cell(*_bounds(ci), side, tolerance) for _, ci in items]
    lead = (f"CI wholly on the claim's side of {_pt(0.0 if tolerance is None else tolerance)} in "
            f"{own.count(REPRODUCED)} of {len(items)} cells, wholly on the other side in {own.count(CONTRADICTED)}")
    return _judged_row(testability, items, side, tolerance, lead, primary, claim, source, where)


def better_claim(testability: Testability, diffs, *, claim: str, source: str, where: str = "",
                 names=("A", "B"), primary=None) -> dict:
    """"A better than B" over settings, each a paired difference a - b (SeedCI, (mean, lo, hi[, n]) or
    PairedBootstrap; a list, or a mapping setting -> difference). The rule of VERDICT_RULE with boundary 0:
    reproduced when A beats B in at least one setting after Holm and loses in none, contradicted when it loses in
    at least one and beats in none, inconclusive otherwise; `primary`: a setting declared primary in advance
    decides alone; not testable here: the model failed `testable`."""
    items = _items(diffs)
    if not items:
        raise ConfigError(f"claim {claim!r}: no settings to compare")
    k, m = sum(beats(ci) for _, ci in items), sum(loses(ci) for _, ci in items)
    lead = f"{names[0]} better than {names[1]} (CI excludes 0) in {k} of {len(items)} settings, worse in {m}"
    return _judged_row(testability, items, 1, None, lead, primary, claim, source, where)


def sign_claim(testability: Testability | None, per_cell_cis, expected_sign: int = +1, *, claim: str,
               source: str, where: str = "", primary=None) -> dict:
    """A claim on the sign of a quantity (e.g. tau > 0) over cells, each a SeedCI, (mean, lo, hi[, n]) or
    PairedBootstrap (a list, or a mapping cell -> interval). The rule of VERDICT_RULE with boundary 0 on the
    expected side: reproduced, contradicted (a cell wholly on the other side after Holm, none on the expected
    side) or inconclusive. `testability` None: the claim does not rest on a model's accuracy."""
    if expected_sign not in (1, -1):
        raise ConfigError(f"expected_sign must be +1 or -1, got {expected_sign}")
    items = _items(per_cell_cis)
    if not items:
        raise ConfigError(f"claim {claim!r}: no cells")
    above, below = sum(beats(ci) for _, ci in items), sum(loses(ci) for _, ci in items)
    lead = f"CI above 0 in {above} of {len(items)} cells, below 0 in {below}"
    return _judged_row(testability, items, expected_sign, None, lead, primary, claim, source, where)


def over_models(testabilities: dict, cells: dict, kind: str, *, claim: str, source: str, where: str = "",
                names=("A", "B"), expected_sign: int = +1, primary=None, side: int = 1,
                tolerance: float | None = None) -> dict:
    """One verdict for a claim judged on several models: ``cells`` maps a key (e.g. (family, dataset) or
    (family, dataset, keep rate)) to its interval, ``testabilities`` maps the same key, or its first
    ``len(model key)`` items, to the model's `Testability`. Only cells of testable models count; with none the
    verdict is "not testable here". ``kind``: "better" (`better_claim`), "sign" (`sign_claim`) or "bound" (the
    quantity lies on ``side`` of ``tolerance``, e.g. a drop under 1 pt: `claim_from_cells`); ``primary``: the key
    of a cell declared primary in advance (not testable here when its model is not)."""
    if kind not in ("better", "sign", "bound"):
        raise ConfigError(f"over_models: kind must be 'better', 'sign' or 'bound', got {kind!r}")

    def model_of(key):
        for k in (key, key[:2] if isinstance(key, tuple) else key):
            if k in testabilities:
                return testabilities[k]
        raise ConfigError(f"over_models: no testability for {key!r}")

    kept = {key: ci for key, ci in cells.items() if model_of(key).ok}
    untestable = sorted({str(k[:2] if isinstance(k, tuple) else k) for k in cells if not model_of(k).ok})
    note = f"; left out, not clearly above chance: {', '.join(untestable)}" if untestable else ""
    if primary is not None and primary in cells and primary not in kept:
        return claim_row(claim, source, NOT_TESTABLE, f"the primary cell {primary} is on a model not clearly "
                                                      f"above chance ({model_of(primary).reason})", where)
    if not kept:
        reasons = "; ".join(t.reason for t in testabilities.values() if not t.ok)
        return claim_row(claim, source, NOT_TESTABLE, f"no model clearly above chance ({reasons})", where)
    if kind == "better":
        row = better_claim(None, kept, claim=claim, source=source, where=where, names=names, primary=primary)
    elif kind == "bound":
        row = claim_from_cells(None, kept, side, tolerance, claim=claim, source=source, where=where, primary=primary)
    else:
        row = sign_claim(None, kept, expected_sign, claim=claim, source=source, where=where, primary=primary)
    row["evidence"] += note
    return row


# ------------------------------------------------------------------------------------------------ evidence text

def _pct(x: float, digits: int = 1) -> str:
    return f"{'-' if x < 0 else ''}inf%" if math.isinf(x) else f"{100 * x:.{digits}f}%"


def _pt(x: float) -> str:
    return f"{'-' if x < 0 else ''}inf pt" if math.isinf(x) else f"{100 * x:.2f} pt"


def _seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def _cut_text(cut: Cut | None) -> str:
    if cut is None:
        return "none"
    d = cut.drop
    return (f"{_pct(cut.mac_reduction, 0)} at keep rate {cut.keep_rate:g} "
            f"(drop {_pt(d.mean)}, CI {_pt(d.lo)} to {_pt(d.hi)})")


def _cuts_text(cuts: Cuts, kind: str) -> str:
    above = f", the whole CI above it from {_cut_text(cuts.excluded)} on" if cuts.excluded is not None else ""
    return (f"{kind} tolerance {_pt(cuts.tolerance)}: {_cut_text(cuts.by_mean)} by mean drop, "
            f"{_cut_text(cuts.by_ci)} with the whole CI under it{above}")


def _unpruned_text(t: Testability) -> str:
    return f"unpruned {_pct(t.mean)} (95% CI {_pct(t.lo)} to {_pct(t.hi)}, {_seeds(t.n)})"
