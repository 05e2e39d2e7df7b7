"""From per-seed numbers to verdicts: the rules that decide whether a claim is reproduced, in one place.

Units: every accuracy (or mAP), drop, difference and tolerance is a fraction in 0..1 (0.01 = the paper's
"1 point"); every MAC reduction is a fraction too (0.30 = "30% fewer MACs"). Evidence strings print them as
% and pt.

The unit of a confidence interval is the trained model: each seed gives one value (computed on the same clips for
every method), and the Student-t interval (`mean_ci`) is taken over those per-seed values. One seed gives an
infinitely wide interval, so no CI rule can pass on one model.

Pure functions, no torch, no pandas: `tprune_core.book` imports `VERDICTS` from here and must stay cheap to
import, so numpy and scipy are only imported when an interval is computed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import ConfigError

VERDICTS = ("reproduced", "not reproduced", "mixed", "not testable here")
SOURCES = ("paper", "ours")          # a claim of the paper, or one we added
PAPER_TOLERANCE = 0.01               # the paper's "< 1 point", in accuracy fractions
RELATIVE_TOLERANCE = 0.01            # 1% of the unpruned model's own accuracy
NO_DIFFERENCE = "no difference the seeds support"


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
    """The largest contiguous cut under `tolerance`: by the mean drop, and by the whole CI (None: none holds)."""
    tolerance: float
    by_mean: Cut | None
    by_ci: Cut | None


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
    """(lo, hi) of a SeedCI or a (mean, lo, hi[, n]) tuple."""
    return (ci.lo, ci.hi) if isinstance(ci, SeedCI) else (float(ci[1]), float(ci[2]))


def beats(diff) -> bool:
    """A beats B when the CI of the paired difference a - b lies wholly above 0 (lo > 0)."""
    return _bounds(diff)[0] > 0


def loses(diff) -> bool:
    """A loses to B when the CI of a - b lies wholly below 0 (hi < 0)."""
    return _bounds(diff)[1] < 0


def outcome(diff) -> str:
    """"beats", "loses" or NO_DIFFERENCE (the CI of a - b contains 0)."""
    return "beats" if beats(diff) else "loses" if loses(diff) else NO_DIFFERENCE


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
    `by_mean`: mean drop < tolerance; `by_ci`, stricter: the CI's upper bound < tolerance."""
    rows = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
    if not rows:
        raise ConfigError("largest_contiguous_cut: no keep rates")
    cuts = sorted((_cut(r) for r in rows), key=lambda c: -c.keep_rate)
    return Cuts(tolerance,
                by_mean=_last_contiguous(cuts, lambda c: c.drop.mean < tolerance),
                by_ci=_last_contiguous(cuts, lambda c: c.drop.hi < tolerance))


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


def _majority_verdict(agree: int, against: int, n: int) -> str:
    """Reproduced: agrees in a majority and disagrees in none; not reproduced: agrees in none; else mixed."""
    if agree > n / 2 and against == 0:
        return "reproduced"
    return "not reproduced" if agree == 0 else "mixed"


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
    """The paper's "30-40% fewer MACs for < 1 pt". Reproduced: the contiguous cut with the whole drop CI under the
    absolute tolerance (`cut_abs.by_ci`) reaches `target`; mixed: only the mean rule or only the relative
    tolerance (`cut_rel`) reaches it; not reproduced: none does; not testable here: the model failed `testable`."""
    reach = {name: c is not None and c.mac_reduction >= target for name, c in
             (("abs_ci", cut_abs.by_ci), ("abs_mean", cut_abs.by_mean),
              ("rel_ci", cut_rel.by_ci), ("rel_mean", cut_rel.by_mean))}
    verdict = ("reproduced" if reach["abs_ci"] else "mixed" if any(reach.values()) else "not reproduced")
    evidence = (f"largest contiguous cut, target {_pct(target, 0)}: {_cuts_text(cut_abs, 'absolute')}; "
                f"{_cuts_text(cut_rel, 'relative')}")
    verdict, evidence = _gated(testability, verdict, evidence)
    return claim_row(claim, source, verdict, evidence, where, testability)


def better_claim(testability: Testability, diffs, *, claim: str, source: str, where: str = "",
                 names=("A", "B")) -> dict:
    """"A better than B" over settings, each a paired difference a - b (SeedCI or (mean, lo, hi)). Reproduced: A
    beats B (CI above 0) in a majority of settings and loses (CI below 0) in none; not reproduced: A beats B in
    none; mixed otherwise; not testable here: the model failed `testable`."""
    diffs = list(diffs)
    if not diffs:
        raise ConfigError(f"claim {claim!r}: no settings to compare")
    k, m = sum(map(beats, diffs)), sum(map(loses, diffs))
    evidence = (f"{names[0]} better than {names[1]} (CI excludes 0) in {k} of {len(diffs)} settings, "
                f"worse in {m}")
    verdict, evidence = _gated(testability, _majority_verdict(k, m, len(diffs)), evidence)
    return claim_row(claim, source, verdict, evidence, where, testability)


def sign_claim(testability: Testability | None, per_cell_cis, expected_sign: int = +1, *, claim: str,
               source: str, where: str = "") -> dict:
    """A claim on the sign of a quantity (e.g. tau > 0) over cells, each a SeedCI or (mean, lo, hi). Reproduced:
    the CI lies on the expected side of 0 in a majority of cells and on the other side in none; not reproduced:
    in no cell on the expected side; mixed otherwise. `testability` None: the claim does not rest on a model's
    accuracy."""
    if expected_sign not in (1, -1):
        raise ConfigError(f"expected_sign must be +1 or -1, got {expected_sign}")
    cells = list(per_cell_cis)
    if not cells:
        raise ConfigError(f"claim {claim!r}: no cells")
    above, below = sum(map(beats, cells)), sum(map(loses, cells))
    agree, against = (above, below) if expected_sign == 1 else (below, above)
    evidence = f"CI above 0 in {above} of {len(cells)} cells, below 0 in {below}"
    verdict, evidence = _gated(testability, _majority_verdict(agree, against, len(cells)), evidence)
    return claim_row(claim, source, verdict, evidence, where, testability)


def over_models(testabilities: dict, cells: dict, kind: str, *, claim: str, source: str, where: str = "",
                names=("A", "B"), expected_sign: int = +1) -> dict:
    """One verdict for a claim judged on several models: ``cells`` maps a key (e.g. (family, dataset) or
    (family, dataset, keep rate)) to its per-seed CI, ``testabilities`` maps the same key, or its first
    ``len(model key)`` items, to the model's `Testability`. Only cells of testable models count; with none the
    verdict is "not testable here". ``kind``: "better" (`better_claim`) or "sign" (`sign_claim`)."""
    if kind not in ("better", "sign"):
        raise ConfigError(f"over_models: kind must be 'better' or 'sign', got {kind!r}")

    def model_of(key):
        for k in (key, key[:2] if isinstance(key, tuple) else key):
            if k in testabilities:
                return testabilities[k]
        raise ConfigError(f"over_models: no testability for {key!r}")

    kept = [ci for key, ci in cells.items() if model_of(key).ok]
    untestable = sorted({str(k[:2] if isinstance(k, tuple) else k) for k in cells if not model_of(k).ok})
    note = f"; left out, not clearly above chance: {', '.join(untestable)}" if untestable else ""
    if not kept:
        reasons = "; ".join(t.reason for t in testabilities.values() if not t.ok)
        return claim_row(claim, source, "not testable here", f"no model clearly above chance ({reasons})", where)
    if kind == "better":
        row = better_claim(None, kept, claim=claim, source=source, where=where, names=names)
    else:
        row = sign_claim(None, kept, expected_sign, claim=claim, source=source, where=where)
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
    return (f"{kind} tolerance {_pt(cuts.tolerance)}: {_cut_text(cuts.by_mean)} by mean drop, "
            f"{_cut_text(cuts.by_ci)} with the whole CI under it")


def _unpruned_text(t: Testability) -> str:
    return f"unpruned {_pct(t.mean)} (95% CI {_pct(t.lo)} to {_pct(t.hi)}, {_seeds(t.n)})"
