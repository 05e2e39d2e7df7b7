"""One look for every figure of the book: a fixed colour per method and per family, labelled axes with units."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from ..rules import registered_methods

# One colour per method throughout the book (colour-blind-safe palette; each method's record picks its index).
_PALETTE = sns.color_palette("colorblind", 10)


def method_colors() -> dict:
    """Colour of every registered method that names one, and of the two settings that are not methods."""
    colors = {m.name: _PALETTE[m.color] for m in registered_methods() if m.color is not None}
    return {**colors, "topk (fine-tuned)": _PALETTE[9], "unpruned": (0.2, 0.2, 0.2)}


METHOD_COLORS = method_colors()
FAMILY_COLORS = {"ast": _PALETTE[0], "audiomae": _PALETTE[3]}
FAMILY_LABELS = {"ast": "AST-style (supervised)", "audiomae": "AudioMAE-style (MAE pretrained)"}
DATASET_LABELS = {"urbansound8k": "UrbanSound8K (general audio)", "speechcommands": "Speech Commands (speech)",
                  "esc50": "ESC-50", "synthetic": "synthetic"}


def setup():
    """Seaborn theme for the book; call once per chapter."""
    sns.set_theme(context="notebook", style="whitegrid")
    plt.rcParams.update({"figure.dpi": 110, "savefig.bbox": "tight", "axes.titleweight": "bold"})


def ci_err(mean, lo, hi):
    """[below, above] error-bar lengths from CI bounds; an infinite CI (one seed) draws no bar, not an endless one."""
    mean, lo, hi = (np.asarray(v, dtype=float) for v in (mean, lo, hi))
    below, above = np.clip(mean - lo, 0, None), np.clip(hi - mean, 0, None)
    return [np.where(np.isfinite(below), below, 0), np.where(np.isfinite(above), above, 0)]


def errorbar_lines(ax, df, x, y, hue, lo=None, hi=None, colors=None, marker="o", label_fmt=str):
    """Lines of ``y`` over ``x`` per ``hue`` with CI error bars from columns ``lo``/``hi`` (default y_lo/y_hi)."""
    lo, hi = lo or f"{y}_lo", hi or f"{y}_hi"
    colors = colors or method_colors()
    for key, g in df.groupby(hue, sort=False):
        g = g.sort_values(x)
        err = ci_err(g[y], g[lo], g[hi]) if lo in g and hi in g else None
        ax.errorbar(g[x].to_numpy(), g[y].to_numpy(), yerr=err, marker=marker, ms=4, capsize=2, lw=1.4,
                    color=colors.get(key), label=label_fmt(key))
    return ax
