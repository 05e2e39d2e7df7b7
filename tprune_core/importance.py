"""Which patches matter: the computations behind the "intensity buckets", "what attention sees" and "speech vs
general audio" chapters, built on the cached grids and records of ``experiments``.

Patch intensity = mean of a 16x16 patch of the normalized fbank; variation = its standard deviation. Buckets C1
(quietest) .. C5 come from 1-D k-means on the *training* split's patch means.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import analysis, experiments

# Bucket sets dropped in the intensity-bucket experiments (1-based: C1 = quietest).
DROPS = {"drop C4-C5": (4, 5), "drop C1-C2": (1, 2), "drop C1": (1,), "drop C2": (2,), "drop C3": (3,),
         "drop C4": (4,), "drop C5": (5,)}


def buckets(entry, k: int = 5, seed: int = 0) -> dict:
    """k-means buckets of one dataset, fitted on the training patch means of ``entry``'s dataset."""
    means = experiments.train_patch_means(entry)
    centres, edges = analysis.kmeans_buckets(means, k=k, seed=seed)
    levels = analysis.rank_levels(means, edges)
    share = np.bincount(levels, minlength=k) / len(levels)
    return {"dataset": entry["dataset"], "centres": centres, "edges": edges, "share": share, "means": means}


def bucket_table(b: dict) -> pd.DataFrame:
    k = len(b["centres"])
    lo = [-np.inf, *b["edges"]]
    hi = [*b["edges"], np.inf]
    return pd.DataFrame({"dataset": b["dataset"], "bucket": [f"C{i + 1}" for i in range(k)], "centre": b["centres"],
                         "from": lo, "to": hi, "share of training patches": b["share"]})


def bucket_settings(edges, after_blocks=(0, 3, 6, 9), drops=None) -> list:
    """intensity_range settings: after block b keep every patch outside the dropped buckets."""
    drops = drops or DROPS
    return [experiments.setting("intensity_range", 1.0, (b,), label=f"{name} @ block {b}",
                                keep_ranges=analysis.bucket_ranges(edges, d))
            for b in after_blocks for name, d in drops.items()]


def bucket_accuracy(entries, bucket_by_dataset: dict, after_blocks=(0, 3, 6, 9), drops=None, split="test"):
    """Accuracy, GMACs and clips left without a patch token, for every entry x (block, bucket set)."""
    frames = []
    for ds, b in bucket_by_dataset.items():
        sel = [e for e in entries if e["dataset"] == ds]
        settings = bucket_settings(b["edges"], after_blocks, drops)
        grid = experiments.evaluate_grid(sel, settings, split=split)
        grid["setting"] = grid.label.str.split(" @ ").str[0]
        grid["after_block"] = grid.drop_loc.astype(int)
        frames.append(grid)
    out = pd.concat(frames, ignore_index=True)
    out["empty_fraction"] = out.n_empty / out.n_clips
    return out


# ------------------------------------------------------------------------------------------ attention records

def kmeans_levels_1d(values, k: int = 5, iters: int = 30) -> np.ndarray:
    """Level 0..k-1 of each value by 1-D k-means (quantile start, Lloyd steps): the reference's rank levels."""
    v = np.asarray(values, dtype=float)
    if v.size <= k or np.ptp(v) == 0:
        return np.zeros(v.size, dtype=int)
    centres = np.quantile(v, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        lab = np.abs(v[:, None] - centres[None]).argmin(1)
        new = np.array([v[lab == j].mean() if np.any(lab == j) else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    order = np.argsort(np.argsort(centres))
    return order[np.abs(v[:, None] - centres[None]).argmin(1)]


def tau_profile(rec: dict, edges, blocks=None, k: int = 5) -> pd.DataFrame:
    """Per block: Kendall's tau-b between each token's attention score and its patch mean / std, per clip; and the
    reference's variant (both on 5 k-means levels, ties counted as agreement) on the patch mean."""
    rows = []
    blocks = sorted(rec["scores"]) if blocks is None else blocks
    for b in blocks:
        for c, (scores, positions) in enumerate(zip(rec["scores"][b], rec["positions"][b])):
            valid = positions >= 0           # evit's fused token has no patch
            s = scores[valid].numpy()
            pos = positions[valid]
            mean, std = rec["mean"][c][pos].numpy(), rec["std"][c][pos].numpy()
            rows.append({"block": b, "clip": c,
                         "tau_mean": analysis.kendall_tau_b(s, mean), "tau_std": analysis.kendall_tau_b(s, std),
                         "reference_mean": analysis.tie_agreement_correlation(
                             kmeans_levels_1d(s, k), analysis.rank_levels(mean, edges))})
    return pd.DataFrame(rows)


def retained_vs_pruned(rec: dict, edges, quiet=(1, 2)) -> pd.DataFrame:
    """At every drop block: each entering patch token with its mean, std, bucket, attention and kept/pruned."""
    rows = []
    for b, kept_lists in rec["kept"].items():
        for c, (positions, scores, kept) in enumerate(zip(rec["positions"][b], rec["scores"][b], kept_lists)):
            valid = positions >= 0
            pos = positions[valid]
            keep = np.isin(pos.numpy(), kept.numpy())
            mean, std = rec["mean"][c][pos].numpy(), rec["std"][c][pos].numpy()
            level = analysis.rank_levels(mean, edges) + 1
            rows.append(pd.DataFrame({"block": b, "clip": c, "mean": mean, "std": std, "bucket": level,
                                      "quiet": np.isin(level, quiet), "score": scores[valid].numpy(),
                                      "kept": keep}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def quiet_share(tokens: pd.DataFrame) -> pd.DataFrame:
    """Per block: share of quiet (C1-C2) tokens among those entering and among those kept; kept fraction of them."""
    g = tokens.groupby("block")
    return pd.DataFrame({
        "quiet_entering": g.quiet.mean(),
        "quiet_among_kept": tokens[tokens.kept].groupby("block").quiet.mean(),
        "quiet_kept_fraction": tokens[tokens.quiet].groupby("block").kept.mean(),
        "loud_kept_fraction": tokens[~tokens.quiet].groupby("block").kept.mean(),
        "score_kept": tokens[tokens.kept].groupby("block").score.mean(),
        "score_pruned": tokens[~tokens.kept].groupby("block").score.mean(),
    }).reset_index()
