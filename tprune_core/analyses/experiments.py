"""The chapters' heavy computations over zoo models, each result cached on disk and resumable.

- ``evaluate_grid``: accuracy and GMACs of zoo models under many pruning settings (one cached JSON per
  checkpoint x split x setting; a rerun computes only what is missing); models of multi-label sets add the columns
  ``metric`` ("mAP") and ``mAP`` (``analysis.headline_metric`` picks the column a chapter plots).
- ``token_records``: what a pruned forward kept, with the attention score and the patch statistics of every token,
  per clip and block (for the "which patches matter" chapters).
- ``train_patch_values``: patch means (or stds) of a training split, for the k-means buckets.

Keys hash the checkpoint's bytes, the split's feature-cache identity and every setting, plus ``EVAL_VERSION``.
"""
from __future__ import annotations

import hashlib
import json
import sys

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ..data.cache import cache_root
from ..data.targets import score_fields
from ..fsio import atomic_write, atomic_write_json, sha256_file
from ..nn.models import patch_pixels
from ..nn.pruning import PruneSettings, patched, record
from ..rules import DEFAULT_DROP_LOC

EVAL_VERSION = 5  # bump when evaluation results change for the same checkpoint and setting (3: random pruning draws
# from an on-device hash; 4: results carry correct_per_clip; 5: bucket drops run clips sorted by kept count, which
# changes the clips a matched random control draws beside)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _file_digest(path) -> str:
    """A checkpoint's sha256, cut to the 20 hex digits the cache keys have always used (fsio reads it once)."""
    return sha256_file(path)[:20]


def setting(method=None, keep_rate=1.0, drop_loc=DEFAULT_DROP_LOC, label=None, **options) -> dict:
    """One pruning setting of a grid. ``method=None``: the model as trained (with the run's own pruning)."""
    return {"method": method, "keep_rate": float(keep_rate), "drop_loc": list(drop_loc), "options": options,
            "label": label or (method or "as trained")}


def _eval_key(ck_digest: str, split: str, s: dict, batch_size: int, precision: str) -> str:
    # batch_size is part of the key: random pruning draws one stream per forward call (i.e. per batch)
    return _digest({"ckpt": ck_digest, "split": split, "setting": {k: s[k] for k in s if k != "label"},
                    "batch_size": batch_size, "precision": precision, "version": EVAL_VERSION})


def with_model_seed(s: dict, entry: dict) -> dict:
    """The setting a model is evaluated under: a random draw that fixes no seed uses the model's seed, so the
    seeds of a table are independent draws too (one shared draw would make three seeds one draw)."""
    draws = s["method"] == "random" or s["options"].get("matched") == "random"
    if draws and "seed" not in s["options"]:
        return dict(s, options=dict(s["options"], seed=int(entry["seed"])))
    return s


def _features_of(meta, split):
    from ..training.train import TrainConfig, load_split
    return load_split(TrainConfig.from_dict(meta["config"]), split, progress=False)


def evaluate_grid(entries, settings, split: str = "test", batch_size: int = 128, precision: str | None = None,
                  progress: bool = True) -> pd.DataFrame:
    """Every zoo entry under every setting on ``split``: one row each, cached per (checkpoint, split, setting,
    batch size, precision). ``precision=None``: each model's training precision, as its zoo test accuracy was
    measured (the laptop zoo trains with bf16 autocast, about 1.5x faster than fp32 on a CPU with AVX512-BF16)."""
    from ..training.evaluation import evaluate
    from ..training.train import run_pruning
    from ..training.zoo import load_zoo_model

    root = cache_root() / "evals"
    rows = []
    # Bars only on a terminal: in an executed chapter every refresh would become an output block of the page.
    outer = tqdm(entries, desc=f"models ({split})", unit="model", file=sys.stderr,
                 disable=not (progress and sys.stderr.isatty()))
    for entry in outer:
        ckpt = entry["checkpoint"]
        model = feats = None
        ck_digest = _file_digest(ckpt)
        prec = precision or entry.get("config", {}).get("precision", "fp32")
        for s in (with_model_seed(s, entry) for s in settings):
            path = root / f"{_eval_key(ck_digest, split, s, batch_size, prec)}.json"
            if path.is_file():
                res = json.loads(path.read_text())
            else:
                if model is None:
                    model, meta = load_zoo_model(entry)
                    feats = _features_of(meta, split)
                    shared = {}   # hidden states before the first drop block, computed once for all settings
                    outer.set_postfix_str(f"{entry['family']}/{entry['dataset']}/s{entry['seed']}")
                if s["method"] is None:   # the model as trained (a pruning-aware fine-tune keeps its setting)
                    with patched(model, run_pruning(meta)):
                        res = evaluate(model, feats, batch_size=batch_size, split=split, precision=prec)
                else:
                    res = evaluate(model, feats, s["method"], s["keep_rate"], tuple(s["drop_loc"]),
                                   batch_size=batch_size, options=s["options"], split=split, precision=prec,
                                   shared=shared)
                res["source"] = getattr(feats, "source", None)
                atomic_write_json(path, res, sort_keys=True)
            rows.append({"family": entry["family"], "dataset": entry["dataset"], "seed": entry["seed"],
                         "trained_keep_rate": entry.get("keep_rate", 1.0),
                         "trained_method": entry.get("method") or "none", "label": s["label"],
                         "method": res["method"] or "none", "keep_rate": res["keep_rate"],
                         "drop_loc": ",".join(map(str, res["drop_loc"])), "accuracy": res["accuracy"],
                         "gmacs": res["gmacs_per_clip"], "n_clips": res["n_clips"],
                         "n_empty": res.get("n_empty", 0), "split": split, "precision": prec,
                         "source": res.get("source") or "", **score_fields(res)})
    return pd.DataFrame(rows)


def clip_correctness(entries, s: dict, split: str = "test", batch_size: int = 128) -> dict:
    """Per-clip correctness of models of one dataset under setting ``s`` (evaluated through ``evaluate_grid``'s
    cache): ``{"correct": (n_models, n_clips) 0/1 array, "seeds": [...], "ids": clip ids, "groups": the clip's
    group (speaker, source recording)}``, row order of the entries; for intervals that resample test clips by group
    (``verdicts.paired_bootstrap``). Single-label datasets only."""
    if len({e["dataset"] for e in entries}) != 1:
        raise ValueError("clip_correctness: entries of one dataset only (their test clips are paired)")
    evaluate_grid(entries, [s], split=split, batch_size=batch_size, progress=False)
    root = cache_root() / "evals"
    rows = []
    for entry in entries:
        prec = entry.get("config", {}).get("precision", "fp32")
        key = _eval_key(_file_digest(entry["checkpoint"]), split, with_model_seed(s, entry), batch_size, prec)
        res = json.loads((root / f"{key}.json").read_text())
        rows.append(np.frombuffer(res["correct_per_clip"].encode(), dtype=np.uint8) - ord("0"))
    ids, groups = _clip_groups(entries[0], split)
    return {"correct": np.stack(rows), "seeds": [e["seed"] for e in entries], "ids": ids, "groups": groups}


def _clip_groups(entry, split):
    """Clip ids of the split, row-aligned with its features, and each clip's group."""
    from ..data.datasets import load_dataset
    from ..training.train import TrainConfig
    cfg = TrainConfig.from_dict(entry["config"])
    feats = _features_of({"config": entry["config"]}, split)
    group_of = {c.clip_id: c.group for c in load_dataset(cfg.dataset, split=split, **cfg.protocol).clips}
    return list(feats.ids), [group_of[i] for i in feats.ids]


def token_records(entry, method="topk", keep_rate=0.5, drop_loc=DEFAULT_DROP_LOC, split="test", max_clips=None,
                  batch_size=64, **options) -> dict:
    """Per clip: the patch mean/std of every patch (model token order), and per block the positions, scores and
    kept positions from a recorded pruned forward. Cached as a .pt file."""
    from ..training.zoo import load_zoo_model

    ck_digest = _file_digest(entry["checkpoint"])
    key = _digest({"ckpt": ck_digest, "split": split, "method": method, "keep_rate": keep_rate,
                   "drop_loc": list(drop_loc), "options": options, "max_clips": max_clips, "version": EVAL_VERSION})
    path = cache_root() / "records" / f"{key}.pt"
    if path.is_file():
        return torch.load(path, weights_only=False)
    model, meta = load_zoo_model(entry)
    feats = _features_of(meta, split)
    x_all = feats.x[:, : model.frames]
    n = len(x_all) if max_clips is None else min(max_clips, len(x_all))
    means, stds, preds = [], [], []
    with torch.no_grad(), patched(model, PruneSettings(method, keep_rate, tuple(drop_loc), options)), \
            record(model) as rec:
        for i in range(0, n, batch_size):
            x = x_all[i:i + batch_size][: n - i].float()
            px = patch_pixels(model, x)
            means.append(px.mean(-1))
            stds.append(px.std(-1))
            preds.append(model(x).argmax(1))
    out = {"family": entry["family"], "dataset": entry["dataset"], "seed": entry["seed"], "grid": tuple(
        model.patch_embed.grid_size), "mean": torch.cat(means), "std": torch.cat(stds),
        "pred": torch.cat(preds), "label": torch.as_tensor(feats.y[:n]), "ids": list(feats.ids[:n]),
        "scores": {b: v for b, v in rec.scores.items()}, "positions": {b: v for b, v in rec.positions.items()},
        "kept": {b: v for b, v in rec.kept.items()}, "tokens": rec.tokens, "classes": list(feats.classes),
        "x": x_all[:n].half(), "source": getattr(feats, "source", "")}
    atomic_write(path, lambda f: torch.save(out, f))
    return out


PATCH_STATS = ("mean", "std")   # the per-patch statistics the buckets and rankings use


def train_patch_values(entry, stat: str = "mean") -> np.ndarray:
    """``stat`` ("mean" or "std") of every 16x16 patch of the entry's TRAINING split: the k-means buckets of that
    statistic are fitted on these. Not cached on disk (recomputed from the cached features on every call)."""
    from ..training.zoo import load_zoo_model

    if stat not in PATCH_STATS:
        raise ValueError(f"train_patch_values: stat must be one of {PATCH_STATS}, not {stat!r}")
    model, meta = load_zoo_model(entry)
    feats = _features_of(meta, "train")
    x = feats.x[:, : model.frames].float()
    reduce = torch.mean if stat == "mean" else torch.std   # torch.std: unbiased, as token_records' patch std
    return torch.cat([reduce(patch_pixels(model, x[i:i + 256]), -1).flatten()
                      for i in range(0, len(x), 256)]).numpy()
