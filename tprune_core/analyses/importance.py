"""Which patches matter: the computations behind the "intensity buckets", "what attention sees" and "speech vs
general audio" chapters, built on the cached grids and records of ``experiments``.

Patch intensity = mean of a 16x16 patch of the normalized fbank; variation = its standard deviation. Buckets C1
(quietest) .. C5 come from 1-D k-means on the *training* split's patch means; the std levels of the reference's
tau on patch std come the same way from the training patch stds.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import analysis, experiments

# Bucket sets dropped in the intensity-bucket experiments (1-based: C1 = quietest).
DROPS = {"drop C4-C5": (4, 5), "drop C1-C2": (1, 2), "drop C1": (1,), "drop C2": (2,), "drop C3": (3,),
         "drop C4": (4,), "drop C5": (5,)}


def buckets(entry, k: int = 5, seed: int = 0, stat: str = "mean") -> dict:
    """k-means buckets of one dataset, fitted on the training patch ``stat`` ("mean": the intensity buckets C1..Ck;
    "std": the variation levels the reference's tau on patch std uses) of ``entry``'s dataset. The values come back
    under "means" or "stds"."""
    values = experiments.train_patch_values(entry, stat)
    centres, edges = analysis.kmeans_buckets(values, k=k, seed=seed)
    levels = analysis.rank_levels(values, edges)
    share = np.bincount(levels, minlength=k) / len(levels)
    return {"dataset": entry["dataset"], "stat": stat, "centres": centres, "edges": edges, "share": share,
            f"{stat}s": values}


def bucket_table(b: dict) -> pd.DataFrame:
    k = len(b["centres"])
    lo = [-np.inf, *b["edges"]]
    hi = [*b["edges"], np.inf]
    return pd.DataFrame({"dataset": b["dataset"], "bucket": [f"C{i + 1}" for i in range(k)], "centre": b["centres"],
                         "from": lo, "to": hi, "share of training patches": b["share"]})


CONTROL = " (random, same count)"   # label suffix of a bucket drop's matched-budget control
CONTROLLED = ("drop C1-C2", "drop C4-C5")   # the drops the verdicts compare: each gets its control by default


def bucket_settings(edges, after_blocks=(0, 3, 6, 9), drops=None, controls=CONTROLLED, seed: int | None = None) -> list:
    """intensity_range settings: after block b keep every patch outside the dropped buckets; for the drops named
    in ``controls``, beside each its matched-budget control (every clip drops as many tokens, drawn at random
    among all its patches), so a bucket is judged against the same number of tokens dropped anywhere. ``seed``
    None: each model's control draws with the model's own seed (``experiments.evaluate_grid``)."""
    drops = drops or DROPS
    out = []
    for b in after_blocks:
        for name, d in drops.items():
            ranges = analysis.bucket_ranges(edges, d)
            out.append(experiments.setting("intensity_range", 1.0, (b,), label=f"{name} @ block {b}",
                                           keep_ranges=ranges))
            if name in controls:
                out.append(experiments.setting("intensity_range", 1.0, (b,), label=f"{name}{CONTROL} @ block {b}",
                                               keep_ranges=ranges, matched="random",
                                               **({} if seed is None else {"seed": seed})))
    return out


def bucket_accuracy(entries, bucket_by_dataset: dict, after_blocks=(0, 3, 6, 9), drops=None, split="test",
                    controls=CONTROLLED):
    """Accuracy, GMACs and clips left without a patch token, for every entry x (block, bucket set), and for the
    drops named in ``controls`` their matched random drop (column ``control``; ``bucket_set`` names the drop both share)."""
    frames = []
    for ds, b in bucket_by_dataset.items():
        sel = [e for e in entries if e["dataset"] == ds]
        settings = bucket_settings(b["edges"], after_blocks, drops, controls)
        grid = experiments.evaluate_grid(sel, settings, split=split)
        grid["setting"] = grid.label.str.split(" @ ").str[0]
        grid["after_block"] = grid.drop_loc.astype(int)
        frames.append(grid)
    out = pd.concat(frames, ignore_index=True)
    out["control"] = out.setting.str.endswith(CONTROL)
    out["bucket_set"] = out.setting.str.replace(CONTROL, "", regex=False)
    out["empty_fraction"] = out.n_empty / out.n_clips
    return out


def matched_bucket_effects(acc, metric: str = "accuracy") -> pd.DataFrame:
    """Per (family, dataset, bucket set, block, seed): the bucket drop's accuracy, its matched random control's,
    and ``excess`` = control - bucket (how much more the bucket's tokens matter than as many random ones; > 0:
    the bucket matters more). Both evaluated by the same model on the same clips: a paired, per-seed number."""
    keys = ["family", "dataset", "bucket_set", "after_block", "seed"]
    real = acc[~acc.control].set_index(keys)
    ctrl = acc[acc.control].set_index(keys)
    out = pd.DataFrame({"bucket": real[metric], "control": ctrl[metric]}).dropna()
    out["excess"] = out.control - out.bucket
    out["gmacs_bucket"] = real.gmacs
    out["gmacs_control"] = ctrl.gmacs
    return out.reset_index()


# ------------------------------------------------------------------------------------------ attention records

def tau_profile(rec: dict, mean_edges, std_edges, blocks=None) -> pd.DataFrame:
    """Per block and clip, the rank agreement between each token's attention score and its input patch.

    Columns: ``block``, ``clip``;
    ``tau_b_mean`` / ``tau_b_std``: Kendall's tau-b of the score with the patch mean / std (NaN for a constant);
    ``tau_ref_mean`` / ``tau_ref_std``: the reference's statistic (``analysis.reference_tau``): the raw scores
    against the patch's global level, i.e. its bucket among the k-means clusters of the training patch means
    (``mean_edges``) or stds (``std_edges``), with pairs tied in either counted as agreeing.
    ``importance.buckets(entry, stat=...)["edges"]`` gives both sets of edges.
    """
    rows = []
    blocks = sorted(rec["scores"]) if blocks is None else blocks
    for b in blocks:
        for c, (scores, positions) in enumerate(zip(rec["scores"][b], rec["positions"][b])):
            valid = positions >= 0           # evit's fused token has no patch
            s = scores[valid].numpy()
            pos = positions[valid]
            mean, std = rec["mean"][c][pos].numpy(), rec["std"][c][pos].numpy()
            rows.append({"block": b, "clip": c,
                         "tau_b_mean": analysis.kendall_tau_b(s, mean), "tau_b_std": analysis.kendall_tau_b(s, std),
                         "tau_ref_mean": analysis.reference_tau(s, analysis.rank_levels(mean, mean_edges)),
                         "tau_ref_std": analysis.reference_tau(s, analysis.rank_levels(std, std_edges))})
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


def drop_map(rec: dict, block: int) -> np.ndarray:
    """Fraction of the recorded clips whose patch at each grid cell was dropped at ``block``, as a (frequency, time)
    array with frequency rows from low to high whatever the family's token order (AST: frequency-major,
    AudioMAE: time-major)."""
    rows, cols = rec["grid"]
    dropped = np.zeros(rows * cols)
    for pos, kept in zip(rec["positions"][block], rec["kept"][block]):
        pos = pos.numpy()
        np.add.at(dropped, pos[~np.isin(pos, kept.numpy())], 1)
    grid = (dropped / len(rec["kept"][block])).reshape(rows, cols)
    return grid if rec["family"] == "ast" else grid.T
