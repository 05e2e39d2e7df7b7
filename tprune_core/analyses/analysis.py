"""Numbers the chapters report: MAC tables, confidence intervals, rank correlations, intensity buckets.

Pure functions over tensors / arrays / DataFrames; nothing here trains or plots.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from ..nn.macs import count_macs
from ..nn.models import SIZES
from ..rules import DEFAULT_DROP_LOC
from .verdicts import mean_ci  # the seed interval lives with the verdict rules (torch-free); re-exported

PAPER_INPUTS = {  # patch tokens of the paper's inputs -> (frames at 128 mel bins, what it is)
    64: (128, "SPC-2 (1 s)"),
    256: (512, "ESC-50 (5 s)"),
    512: (1024, "AudioSet / VoxCeleb (10 s)"),
}

# The paper's MAC figures for AudioMAE ViT-B (GMACs per clip): input -> (patch tokens, keep rate -> GMACs).
PAPER_GMACS = {"SPC-2 (1 s)": (64, {1.0: 5.61, 0.5: 2.81}), "ESC-50 (5 s)": (256, {1.0: 23.10, 0.5: 11.36})}


def paper_gmacs_comparison(family="audiomae", drop_loc=DEFAULT_DROP_LOC) -> pd.DataFrame:
    """Our count (ViT-B) beside each of the paper's published GMACs, with the relative difference."""
    rows = []
    for name, (tokens, figures) in PAPER_GMACS.items():
        ours = mac_table([family], "base", [tokens], sorted(figures, reverse=True), drop_loc).set_index("keep_rate")
        for kr, theirs in figures.items():
            mine = float(ours.loc[kr, "gmacs"])
            rows.append({"input": name, "patch_tokens": tokens, "keep_rate": kr, "paper_gmacs": theirs,
                         "ours_gmacs": mine, "rel_diff": mine / theirs - 1})
    return pd.DataFrame(rows)


def headline_metric(grid: pd.DataFrame) -> str:
    """The column an evaluation grid (``experiments.evaluate_grid``) is judged by: "mAP" when every row comes from a
    multi-label set (its ``metric`` column says so), else "accuracy" (for a multi-label row: the top-1 hit rate)."""
    if "metric" in grid.columns and len(grid) and (grid["metric"] == "mAP").all():
        return "mAP"
    return "accuracy"


# --------------------------------------------------------------------------------------------------------------
# MACs

def mac_table(families=("ast", "audiomae"), size="base", tokens=(64, 256, 512),
              keep_rates=(1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3), drop_loc=DEFAULT_DROP_LOC, mel=128,
              num_classes=527) -> pd.DataFrame:
    """GMACs for every family x input size x keep rate, with the reduction against keep rate 1.0."""
    rows = []
    for family in families:
        for n in tokens:
            frames = n * 16 * 16 // mel
            full = count_macs(family, size, frames, 1.0, drop_loc, mel=mel, num_classes=num_classes)["macs"]
            for kr in keep_rates:
                m = count_macs(family, size, frames, kr, drop_loc, mel=mel, num_classes=num_classes)
                rows.append({"family": family, "size": size, "patch_tokens": n, "frames": frames,
                             "keep_rate": kr, "drop_loc": ",".join(map(str, drop_loc)),
                             "gmacs": m["macs"] / 1e9, "reduction": 1 - m["macs"] / full})
    return pd.DataFrame(rows)


def mac_parts(family="audiomae", size="base", tokens=(64, 256, 512), keep_rate=1.0, drop_loc=DEFAULT_DROP_LOC,
              mel=128) -> pd.DataFrame:
    """Where the MACs go: share of patch embedding, qkv + proj, attention matmuls, MLP, head (and drop extras)."""
    rows = []
    for n in tokens:
        frames = n * 16 * 16 // mel
        parts = count_macs(family, size, frames, keep_rate, drop_loc, mel=mel)["parts"]
        total = sum(parts.values())
        merged = {"patch embedding": parts["patch_embed"], "qkv + proj": parts["qkv"] + parts["proj"],
                  "attention matmuls": parts["attn_matmul"], "MLP": parts["mlp"],
                  "head + drop": parts["head"] + parts.get("drop", 0)}
        for part, macs in merged.items():
            rows.append({"family": family, "patch_tokens": n, "part": part, "gmacs": macs / 1e9,
                         "share": macs / total})
    return pd.DataFrame(rows)


def keep_rate_for_reduction(target: float, family="audiomae", size="base", frames=512, drop_loc=DEFAULT_DROP_LOC,
                            method="topk", mel=128, step=0.01) -> float:
    """Largest keep rate (on a ``step`` grid) whose MAC reduction reaches ``target`` (e.g. 0.3 for 30%)."""
    full = count_macs(family, size, frames, 1.0, drop_loc, method, mel)["macs"]
    for i in range(int(round(1 / step)), 0, -1):
        kr = i * step
        if 1 - count_macs(family, size, frames, kr, drop_loc, method, mel)["macs"] / full >= target:
            return round(kr, 6)
    return float("nan")


def check_against_flop_counter(family: str, size: str, frames: int, keep_rate: float, drop_loc=DEFAULT_DROP_LOC,
                               method="topk", mel=128, num_classes=527, seed=0) -> dict:
    """The analytic count next to FlopCounterMode on a real forward pass of a random-weight model."""
    import torch

    from ..nn.macs import flop_counter_macs, model_macs
    from ..nn.models import create_model
    from ..nn.pruning import apply_pruning

    torch.manual_seed(seed)
    model = create_model(family, size, frames, num_classes, mel=mel).eval()
    apply_pruning(model, method, keep_rate, drop_loc)
    x = torch.randn(1, frames, mel)
    measured = flop_counter_macs(model, x)
    analytic = int(model_macs(model)[0].item())
    table = count_macs(family, size, frames, keep_rate, drop_loc, method, mel, num_classes)["macs"]
    return {"family": family, "size": size, "frames": frames, "keep_rate": keep_rate, "method": method,
            "flop_counter_macs": measured, "analytic_macs": table, "from_forward_tokens": analytic,
            "equal": measured == table == analytic}


# --------------------------------------------------------------------------------------------------------------
# Statistics

def at_matched_macs(grid: pd.DataFrame, reference: str, other: str, value: str = "accuracy") -> pd.DataFrame:
    """``other``'s ``value`` at ``reference``'s MACs, per (family, dataset, seed, keep rate of the reference):
    linear interpolation along ``other``'s own accuracy-GMACs curve of that model (its keep rates, sorted by GMACs),
    so methods that spend a few more MACs per keep rate (EViT's fused token, ToMe's similarity product) are compared
    at equal cost. NaN where the reference's GMACs fall outside the range ``other`` was evaluated at."""
    rows = []
    for (fam, ds, seed), g in grid.groupby(["family", "dataset", "seed"]):
        ref, oth = g[g.method == reference], g[g.method == other].sort_values("gmacs")
        if ref.empty or len(oth) < 1:
            continue
        x, y = oth.gmacs.to_numpy(float), oth[value].to_numpy(float)
        for r in ref.itertuples():
            inside = x.min() - 1e-9 <= r.gmacs <= x.max() + 1e-9
            at = float(np.interp(r.gmacs, x, y)) if inside else float("nan")
            rows.append({"family": fam, "dataset": ds, "seed": seed, "keep_rate": r.keep_rate, "gmacs": r.gmacs,
                         "method": other, value: at})
    return pd.DataFrame(rows)


def summarize(df: pd.DataFrame, by: list, value: str = "accuracy", level: float = 0.95) -> pd.DataFrame:
    """Mean, CI and count of ``value`` over the rows of each group, each row one sample: right when a row is one
    model (e.g. an evaluation grid, one row per seed); for per-clip rows use ``per_seed_then_ci``."""
    rows = []
    for key, g in df.groupby(by, sort=False, dropna=False):
        m, lo, hi = mean_ci(g[value], level)
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), value: m, f"{value}_lo": lo, f"{value}_hi": hi, "n": len(g)})
    return pd.DataFrame(rows)


def per_seed_then_ci(df: pd.DataFrame, by: list, value: str, seed_col: str = "seed",
                     level: float = 0.95) -> pd.DataFrame:
    """Mean and CI of ``value`` per ``by`` group with the trained model as the unit of the interval.

    Rows from one model (e.g. ~1,200 clips) are not independent samples of the claim: averaged first per
    (``by`` + ``seed_col``) they give one value per model, then ``mean_ci`` runs over those seeds (each model weighs the
    same). Three seeds give
    an honest, wide interval (t with 2 degrees of freedom) where a per-clip interval would look falsely tight.
    NaN rows (e.g. tau-b of a constant clip) are skipped. Columns: ``by``..., ``value``, ``value_lo``,
    ``value_hi``, ``n_seeds`` (models with a value), ``n_rows`` (non-NaN rows behind them).
    """
    by = [by] if isinstance(by, str) else list(by)
    # mean and count skip NaN; a model with no value at all gives a NaN mean, which mean_ci drops
    per_seed = df.groupby(by + [seed_col], sort=False, dropna=False)[value].agg(["mean", "count"]).reset_index()
    rows = []
    for key, g in per_seed.groupby(by, sort=False, dropna=False):
        m, lo, hi = mean_ci(g["mean"], level)
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), value: m, f"{value}_lo": lo, f"{value}_hi": hi,
                     "n_seeds": int(g["mean"].notna().sum()), "n_rows": int(g["count"].sum())})
    return pd.DataFrame(rows)


def kendall_tau_b(x, y) -> float:
    """Kendall's tau-b (ties in either variable handled by scipy's tau-b); NaN when a variable is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(stats.kendalltau(x, y, variant="b").statistic)


def reference_tau(scores, levels) -> float:
    """The reference's Kendall statistic: each token's raw attention score against its patch's global level.

    tau_ref = (concordant + pairs tied in either variable - discordant) / all pairs. ``scores`` are compared as they
    are (no binning); ``levels`` are integer buckets shared by every clip (``rank_levels`` on the k-means edges of
    the training patches). Counting ties as agreement inflates the value: coarse levels tie many pairs, and a clip
    whose patches all sit in one level scores exactly 1 whatever its attention does (tau-b is undefined there).
    NaN for fewer than 2 tokens.
    """
    x, y = np.asarray(scores, dtype=float), np.asarray(levels, dtype=float)
    if x.size != y.size:
        raise ValueError(f"reference_tau: {x.size} scores but {y.size} levels")
    i, j = np.triu_indices(x.size, 1)      # every unordered pair once: O(n^2) memory, fine for a clip's tokens
    if not i.size:
        return float("nan")
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    agree = (dx * dy > 0) | (dx == 0) | (dy == 0)   # a tie in either variable counts as agreement
    return float(2 * agree.mean() - 1)             # (agree - disagree) / pairs


def rank_levels(values, edges) -> np.ndarray:
    """Level 0..len(edges) of each value, given sorted inner bucket edges."""
    return np.searchsorted(np.asarray(edges), np.asarray(values), side="right")


def kmeans_buckets(patch_means, k: int = 5, seed: int = 0, max_points: int = 200_000):
    """k-means (1-D) on training patch means, clusters ordered C1 (quietest) .. Ck.

    Returns (centres sorted ascending, inner edges = midpoints between neighbouring centres) so that bucket
    ``i`` is ``[edges[i-1], edges[i])`` — exactly the nearest-centre assignment in 1-D.
    """
    from sklearn.cluster import KMeans

    v = np.asarray(patch_means, dtype=np.float64).reshape(-1, 1)
    if v.shape[0] > max_points:
        v = v[np.random.default_rng(seed).choice(v.shape[0], max_points, replace=False)]
    km = KMeans(n_clusters=k, random_state=seed, n_init=10).fit(v)
    centres = np.sort(km.cluster_centers_[:, 0])
    return centres, (centres[1:] + centres[:-1]) / 2


def bucket_ranges(edges, drop) -> list[tuple[float, float]]:
    """Half-open intervals covering every bucket except those in ``drop`` (1-based: C1 = 1)."""
    bounds = [-math.inf, *map(float, edges), math.inf]
    keep = [i for i in range(1, len(bounds)) if i not in set(drop)]
    ranges = []
    for i in keep:  # merge neighbouring buckets into one interval
        lo, hi = bounds[i - 1], bounds[i]
        if ranges and ranges[-1][1] == lo:
            ranges[-1] = (ranges[-1][0], hi)
        else:
            ranges.append((lo, hi))
    return ranges


__all__ = ["PAPER_INPUTS", "PAPER_GMACS", "paper_gmacs_comparison", "SIZES", "mac_table", "mac_parts", "keep_rate_for_reduction",
           "check_against_flop_counter", "mean_ci", "summarize", "per_seed_then_ci", "kendall_tau_b",
           "reference_tau", "rank_levels", "kmeans_buckets", "bucket_ranges"]
