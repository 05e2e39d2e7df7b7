"""The laptop-scale model zoo the chapters draw on: its spec as plain data, `build_zoo` and the lookup functions.

    build_zoo("full")                       # train (or find in $TPRUNE_CACHE/zoo) every model, print the total time
    entries = zoo_entries("full")           # one dict per model: family, dataset, seed, keep_rate, hash, val, test...
    model, meta = load_zoo_model(entries[0])
    table = summarize(entries)              # test accuracy mean ± std over seeds per (family, dataset, keep rate)

Profiles (`ZOO`):
- ``full``: {ast, audiomae} x {speechcommands, urbansound8k} at keep rate 1.0 with 3 seeds; AST-style models on
  Speech Commands from scratch (no ImageNet/AudioSet weights can be had here), on UrbanSound8K from the Speech
  Commands AST-style model of the same seed; AudioMAE-style models fine-tuned from one MAE (60 epochs) pretrained on
  the pooled *training* splits of both datasets; then pruning-aware fine-tunes (``topk``, keep rates 0.7 and 0.5,
  drop locations 3,6,9) of every one of those models, each with a keep-rate-1.0 control fine-tuned alike. Speech
  Commands with the pooled speaker protocol and light regularization, UrbanSound8K on whole 4 s clips with the
  regularized recipe. 12 blocks, 16x16 patches, 128 mel bins; ViT-tiny (192-dim) so it trains on 2 CPU cores. Every
  recipe choice and its validation accuracy: DESIGN.md, "Training recipe log".
- ``long``: the same recipe with longer schedules (MAE 100 epochs, 30 epochs each, 5-epoch fine-tunes) and the
  reverse UrbanSound8K direction (train fold 10, test fold 1, its own MAE), for a GPU or a patient CPU.
- ``smoke``: the same structure on a small synthetic set, a few steps per run (under a minute on 2 cores), for the
  book's smoke build.
- ``study-<name>``: a folder of your own audio, written by `tprune study PATH` (``tprune_core.book.study``) as JSON under
  $TPRUNE_CACHE/studies/ and read back on lookup (``ZOO["study-<name>"]``): one dataset (its ``path``), both
  families started from the release (``pretrained``: the MAE encoder, a released AST-style model), no MAE role.

Cost of ``full`` on 2 CPU cores (Intel Xeon with AMX, bf16 autocast, ``--jobs 2``: two one-thread runs at a time),
summed from the runs' own training seconds (2026-12-03): MAE 35, base models 223, 3-epoch fine-tunes 100, controls
61 worker-minutes, 418 in all, i.e. ~3.5 h wall from an empty cache (the 36 fine-tunes and controls alone took 85.9
min); `tprune zoo` prints the total. Training runs the attention explicitly on CPU and uses the
fused AdamW kernel (``runtime.training_attention``, ``runtime.adamw``). One thread per run: two threads of one run
wait on each other (an MAE epoch took 50 s with two threads, 36-44 s with one beside another worker), and on a
machine shared with other work they can run many times slower; ``--threads 1`` for a single run there.
"""
from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path

from ..data.cache import cache_root
from ..errors import ConfigError
from ..fsio import sha256_file
from ..rules import DEFAULT_DROP_LOC
from . import release
from .config import INIT_KINDS, TrainConfig
from .mae import MAEConfig
from .runtime import machine_info, read_json, zoo_root
from .train import load_checkpoint

# Everything below is plain data. "models" holds, per dataset, the TrainConfig fields shared by both families and
# per family the fields that differ; "prune" the fine-tune settings layered over each base model's config.
STUDY_PREFIX = "study-"   # zoo profile of a study of your own audio: study-<name>


class Profiles(dict):
    """The profiles below, plus any ``study-<name>`` that `tprune study` wrote (read on each lookup, never kept)."""

    def __missing__(self, key):
        if isinstance(key, str) and key.startswith(STUDY_PREFIX):
            return read_study(key[len(STUDY_PREFIX):])["zoo"]
        raise KeyError(key)


ZOO = Profiles({
    "full": {
        "families": ["ast", "audiomae"],
        "seeds": [0, 1, 2],
        "common": {"size": "tiny", "precision": "bf16", "batch_size": 32, "label_smoothing": 0.1,
                   "weight_decay": 0.05, "drop_path": 0.1, "freq_mask": 24, "warmup_epochs": 1.0,
                   "class_balance": True},
        "datasets": {
            # Speech Commands, pooled protocol: train = the extra speakers + part of the test copy, val and test =
            # held-out test-copy speakers (1,907 test clips). 1 s clips -> 98 frames; the model reads 96 (48 patches).
            # Light regularization and batch 16: both families underfit here (DESIGN.md, recipe experiments E2, A1).
            "speechcommands": {"protocol": {"extra": True}, "frames": 96, "data_frames": None, "batch_size": 16,
                               "label_smoothing": 0.0, "drop_path": 0.0, "freq_mask": 8, "time_mask": 8,
                               "time_shift": 8, "epochs": 16,
                               # from scratch the AST-style model learns slowly: 24 epochs (E3)
                               "family_overrides": {"ast": {"epochs": 24}}},
            # UrbanSound8K: train on fold 1, test on fold 10, whole 4 s clips (400 frames, 8 x 25 = 200 patches).
            # The regularized recipe: 726 training clips overfit without it (U1). The AST-style models start from the
            # Speech Commands AST-style model of the same seed (all but its head), the analogue of AST's supervised
            # ImageNet/AudioSet start: the paper's AST never trains from scratch.
            "urbansound8k": {"protocol": {"test_fold": 10}, "frames": 400, "data_frames": None, "time_mask": 40,
                             "time_shift": 40, "epochs": 10, "prune_keep_rates": [0.65],
                             "family_overrides": {"ast": {"transfer_from": "speechcommands"}}},
        },
        # lr 1e-3 left the from-scratch AST at chance on Speech Commands; 3e-4 and 1e-4 learned alike, 6e-4 worse.
        # LayerScale (init 0.1) made the from-scratch AST-style model learn ~3x faster: 80.6 +- 0.4% test on Speech
        # Commands in 24 epochs against 68.6 +- 2.1% without it (3 seeds each; book appendix, screens L5/L6).
        "family_overrides": {"ast": {"lr": 3e-4, "layer_scale": 0.1}, "audiomae": {"lr": 5e-4}},
        # 100 MAE epochs: 30 -> 60 gave the AudioMAE-style speech model +3.6 points test at 16 epochs (A2 vs A4),
        # which then stood 0.7 points under its floor.
        "mae": {"crop_frames": 96, "epochs": 100, "batch_size": 64, "lr": 1e-3, "warmup_epochs": 2.0,
                "mask_ratio": 0.8, "decoder_dim": 128, "decoder_depth": 2, "decoder_heads": 4},
        # Pruning-aware fine-tunes in the paper's setting (issue 32): every seed of every base model is fine-tuned
        # with TopK, random and patch-mean pruning at the keep rate nearest a 40% MAC cut at blocks 3, 6, 9 (0.62
        # for 48 speech tokens, 0.65 for UrbanSound8K's 200: `prune_keep_rates` below), and with nothing pruned
        # (the control, keep rate 1.0), all alike: 2 epochs, keep rate 1.0 for a quarter epoch, a cosine shrink
        # over one with augmentation off (as the paper), then fixed. These 48 runs replace the TopK 0.7 / 0.5
        # fine-tunes (36 runs of 3 epochs): one operating point with three selectors answers both paper claims on
        # fine-tuned models (the cut for < 1 point, and attention beating random / intensity at equal MACs), and 2
        # epochs keep the derived models and the chapters within the 2 h 15 of a full re-execution on 2 cores.
        "prune": {"methods": ["topk", "random", "mean"], "keep_rates": [0.62], "drop_loc": list(DEFAULT_DROP_LOC),
                  "seeds": [0, 1, 2], "epochs": 2, "lr": 2e-4, "warmup_epochs": 0.0, "prune_hold_epochs": 0.25,
                  "prune_shrink_epochs": 1.0, "augment_while_shrinking": False, "control": True},
    },
    # Two synthetic 10-class sets standing in for the two real ones, a few steps each: for the book's smoke build.
    "smoke": {
        "families": ["ast", "audiomae"],
        "seeds": [0, 1, 2],
        "common": {"size": "tiny", "precision": "fp32", "batch_size": 16, "ckpt_every": 1000, "lr": 5e-4,
                   "warmup_epochs": 0.5, "drop_path": 0.0},
        "datasets": {
            "synthetic": {"protocol": {"flavour": "speech", "per_class": 20, "seconds": 0.4}, "frames": 32,
                          "data_frames": 48, "time_mask": 6, "epochs": 4},
        },
        "family_overrides": {},
        "mae": {"crop_frames": 32, "epochs": 2, "batch_size": 16, "lr": 1e-3, "warmup_epochs": 0.0,
                "mask_ratio": 0.8, "decoder_dim": 64, "decoder_depth": 1, "decoder_heads": 2},
        "prune": {"methods": ["topk", "random", "mean"], "keep_rates": [0.5], "drop_loc": list(DEFAULT_DROP_LOC),
                  "seeds": [0, 1, 2], "epochs": 1, "lr": 2e-4, "warmup_epochs": 0.0, "prune_hold_epochs": 0.25,
                  "prune_shrink_epochs": 0.5, "control": True},
    },
})

# Dataset-spec keys that are not TrainConfig fields: how the zoo is laid out around the base models. ``path``: the
# folder a study's dataset name stands for (its runs' TrainConfig.dataset; the name labels its entries).
DATASET_ONLY = ("reverse_protocol", "family_overrides", "prune_keep_rates", "path")


def _deep_update(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        out[key] = _deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# The same recipe trained longer, for a GPU or a patient CPU: about 14 worker-hours on the Intel Xeon (AMX), i.e. ~7 h
# on 2 idle cores (estimate from the full profile's measured seconds per epoch; this profile was not run end to end;
# not timed on a GPU). One recipe change over "full": the AST-style models have LayerScale (init 0.1), which made
# the from-scratch AST-style speech model learn ~3x faster (DESIGN.md, screens L1/L5); "full" keeps the recipe
# that produced results/ until its cold build can be re-run (the AST-style Speech Commands models feed both datasets).
ZOO["long"] = _deep_update(ZOO["full"], {
    "datasets": {"speechcommands": {"epochs": 30, "family_overrides": {"ast": {"epochs": 45}}},
                 "urbansound8k": {"epochs": 30, "reverse_protocol": {"test_fold": 1}}},
    "mae": {"epochs": 150},
    "prune": {"epochs": 5, "prune_hold_epochs": 1.0, "prune_shrink_epochs": 2.0},
})


def study_path(name: str) -> Path:
    """Where `tprune study` keeps the spec of study ``name``: $TPRUNE_CACHE/studies/<name>.json."""
    return cache_root() / "studies" / f"{name}.json"


def read_study(name: str) -> dict:
    """The spec `tprune study` wrote for study ``name`` (tprune_core.book.study: folder, fingerprint, recipe, ``zoo``)."""
    path = study_path(name)
    if not path.is_file():
        raise ConfigError(f"zoo profile {STUDY_PREFIX}{name}: no study of that name ({path} does not exist); make "
                          f"it with `tprune study PATH --name {name}`")
    return read_json(path)


def _studies() -> list:
    folder = cache_root() / "studies"
    return [read_json(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def _study_hint(dataset: str) -> str:
    """What to do about a dataset no profile of the chapters knows: use the study made of it, or make one."""
    where = str(Path(dataset).expanduser().resolve()) if ("/" in dataset or dataset.startswith((".", "~"))) else None
    for s in _studies():
        if dataset == s["name"] or where == s["folder"]:
            return (f"a study of it exists: pass -p zoo_profile {s['profile']} -p datasets '[\"{s['name']}\"]' "
                    f"(its models: `{study_command(s)}`)")
    return ("for a folder of your own audio run `tprune study PATH` (trains both families from the release, then "
            "runs the chapters on them; any chapter then takes -p zoo_profile study-NAME -p datasets '[\"NAME\"]'; "
            "README: Your own audio)")


def study_command(spec: dict) -> str:
    """The command that makes (or continues) a study."""
    return f"tprune study {spec['folder']} --name {spec['name']}"


def _spec(profile: str) -> dict:
    try:
        return ZOO[profile]
    except KeyError:
        raise ConfigError(f"zoo profile: expected one of {sorted(ZOO)} or study-NAME (a study of your own audio: "
                          f"`tprune study PATH`), got {profile!r}") from None


def _protocols(profile: str, reverse: bool) -> dict:
    """Dataset -> protocol of a profile's base models, or of its reverse-direction models (``reverse``)."""
    spec = _spec(profile)
    return {name: d.get("reverse_protocol", d["protocol"]) if reverse else d["protocol"]
            for name, d in spec["datasets"].items()}


def mae_config(profile: str = "full", reverse: bool = False, **overrides) -> MAEConfig:
    """The MAE pretrained for a profile: the TRAINING splits of all its datasets pooled. The reverse-direction
    models get their own MAE, pretrained on their own training splits (the forward MAE has heard their test fold)."""
    spec = _spec(profile)
    protocols = _protocols(profile, reverse)
    sources = [{"dataset": name, "protocol": protocols[name], "frames": d["data_frames"] or d["frames"]}
               for name, d in spec["datasets"].items()]
    kw = dict(spec["mae"], size=spec["common"]["size"], sources=sources, seed=0)
    if "precision" in spec["common"]:
        kw["precision"] = spec["common"]["precision"]
    kw.update(overrides)
    return MAEConfig(**kw)


def base_config(profile: str, family: str, dataset: str, seed: int, reverse: bool = False,
                **overrides) -> TrainConfig:
    """The keep-rate-1.0 model of (family, dataset, seed) in a profile; ``reverse``: trained and tested the other
    way round (the dataset's ``reverse_protocol``, e.g. UrbanSound8K train fold 10, test fold 1)."""
    spec = _spec(profile)
    if dataset not in spec["datasets"]:
        raise ConfigError(f"zoo {profile}: dataset {dataset!r} not in {sorted(spec['datasets'])}")
    ds = spec["datasets"][dataset]
    kw = dict(spec["common"])
    kw.update({k: v for k, v in ds.items() if k not in DATASET_ONLY})
    kw.update(spec["family_overrides"].get(family, {}))
    kw.update(ds.get("family_overrides", {}).get(family, {}))
    kw.update(family=family, dataset=ds.get("path", dataset), seed=seed, protocol=_protocols(profile, reverse)[dataset])
    start = spec.get("pretrained", {}).get(family, {}).get(str(seed))
    if start is not None:   # a study: the released model this family and seed start from (init string)
        kw["init"] = start
    elif family == "audiomae":
        kw["init"] = "mae:" + mae_config(profile, reverse).hash()
    source = kw.pop("transfer_from", None)
    if source is not None:   # start from the same family and seed trained on another dataset (forward protocol)
        if source == dataset or source not in spec["datasets"]:
            raise ConfigError(f"zoo {profile}: {dataset}.transfer_from={source!r}: expected another dataset of "
                              f"{sorted(spec['datasets'])}")
        kw["init"] = "transfer:" + base_config(profile, family, source, seed).hash()
    kw.update(overrides)
    return TrainConfig(**kw)


def prune_config(profile: str, family: str, dataset: str, keep_rate: float, seed: int = 0, method: str | None = None,
                 **overrides) -> TrainConfig:
    """Pruning-aware fine-tune of the seed-``seed`` base model with ``method`` (default: the profile's first, TopK):
    starts from its selected weights. Random pruning draws with the run's seed."""
    spec = _spec(profile)
    parent = base_config(profile, family, dataset, seed)
    p = dict(spec["prune"])
    method = method or p["methods"][0]
    kw = parent.to_dict()
    kw.update({k: v for k, v in p.items() if k not in ("methods", "keep_rates", "seeds", "control")})
    kw.update(init="run:" + parent.hash(), prune_method=method, keep_rate=keep_rate, seed=seed,
              prune_options={"seed": seed} if method == "random" else {})
    kw.update(overrides)
    return TrainConfig(**kw)


def prune_keep_rates(profile: str, dataset: str) -> list:
    """The keep rates a dataset's models are fine-tuned at (the dataset's own, else the profile's)."""
    spec = _spec(profile)
    return spec["datasets"][dataset].get("prune_keep_rates", spec["prune"]["keep_rates"])


def control_config(profile: str, family: str, dataset: str, seed: int = 0) -> TrainConfig:
    """The keep-rate-1.0 control of a pruning-aware fine-tune: same parent, epochs and recipe, nothing pruned (the
    same patched model at keep rate 1.0), so "fine-tuned pruned vs control" isolates the pruning."""
    return prune_config(profile, family, dataset, 1.0, seed)


def zoo_plan(profile: str = "full") -> list:
    """Every run of a profile, in training order: (role, config). Roles: mae, base, prune, control (keep-rate-1.0
    fine-tunes, when the profile's ``prune`` spec asks for them) and reverse (base models trained and tested the
    other way round, for the datasets with a ``reverse_protocol``; their own MAE has role mae too)."""
    spec = _spec(profile)
    reversed_sets = [d for d, s in spec["datasets"].items() if "reverse_protocol" in s]
    plan = []
    if "audiomae" in spec["families"] and "audiomae" not in spec.get("pretrained", {}):
        plan.append(("mae", mae_config(profile)))
    for dataset in spec["datasets"]:
        for family in spec["families"]:
            for seed in spec["seeds"]:
                plan.append(("base", base_config(profile, family, dataset, seed)))
    for dataset in spec["datasets"]:
        for family in spec["families"]:
            for seed in spec["prune"]["seeds"]:
                for method in spec["prune"]["methods"]:
                    for kr in prune_keep_rates(profile, dataset):
                        plan.append(("prune", prune_config(profile, family, dataset, kr, seed, method)))
                if spec["prune"].get("control"):
                    plan.append(("control", control_config(profile, family, dataset, seed)))
    if reversed_sets and "audiomae" in spec["families"]:
        plan.append(("mae", mae_config(profile, reverse=True)))
    for dataset in reversed_sets:
        for family in spec["families"]:
            for seed in spec["seeds"]:
                plan.append(("reverse", base_config(profile, family, dataset, seed, reverse=True)))
    return plan


def _entry(role, cfg, label: str | None = None) -> dict:
    """A run's metadata; ``label``: the name its dataset goes by (a study's name for its folder, see _labels)."""
    run_dir = zoo_root() / cfg.hash()
    e = {"role": role, "hash": cfg.hash(), "run_dir": str(run_dir)}
    if role == "mae":
        e.update(family="audiomae", dataset="+".join(s["dataset"] for s in cfg.sources), seed=cfg.seed,
                 trained=(run_dir / "mae.json").is_file(), encoder=str(run_dir / "encoder.pt"))
        if e["trained"]:
            s = read_json(run_dir / "mae.json")
            e.update(train_seconds=s["train_seconds"], final_loss=s["final_loss"])
        return e
    method = "control" if role == "control" else cfg.prune_method
    dataset = label or cfg.dataset
    e.update(name=model_name(role, cfg.family, dataset, method, cfg.keep_rate, cfg.seed),
             family=cfg.family, dataset=dataset, protocol=cfg.protocol, seed=cfg.seed, frames=cfg.frames,
             method=method, keep_rate=cfg.keep_rate,
             drop_loc=list(cfg.drop_loc), init=cfg.init,
             checkpoint=str(run_dir / "best.pt"), trained=(run_dir / "train.json").is_file(), config=cfg.to_dict())
    if e["trained"]:
        s = read_json(run_dir / "train.json")
        e.update(val_accuracy=s["val_accuracy"], best_epoch=s["best_epoch"], train_seconds=s["train_seconds"],
                 source=s.get("train_source"), machine=s.get("machine"))
    if (run_dir / "test.json").is_file():
        t = read_json(run_dir / "test.json")
        e.update(test_accuracy=t["accuracy"], test_gmacs=t["gmacs_per_clip"], n_test=t["n_clips"])
        if "per_class_clips" in t and "classes" in t:   # test.json of runs tested before per-class counts lack them
            e["test_per_class"] = {c: (k / n if n else None) for c, k, n in
                                   zip(t["classes"], t["per_class_correct"], t["per_class_clips"])}
    return e


def model_name(role, family, dataset, method, keep_rate, seed) -> str:
    """A zoo model's readable name, e.g. ``audiomae/speechcommands/topk-0.5/s1`` (role ``reverse``: the other
    direction's base model)."""
    what = {"base": "base", "reverse": "reverse", "control": "control"}.get(role, f"{method}-{keep_rate:g}")
    return f"{family}/{dataset}/{what}/s{seed}"


def checkpoint_digest(path) -> str:
    """sha256 (hex) of a checkpoint file's bytes (fsio.sha256_file: read once while the file is unchanged)."""
    return sha256_file(path)


def weights_sha256(entry: dict) -> str:
    """The digest a table records for a model: the release file's sha256 for a released model (so tables can be
    checked against the manifest without loading weights), else the sha256 of its local checkpoint."""
    if entry.get("sha256"):
        return entry["sha256"]
    released = release.released_digest(entry["run_dir"]) if entry.get("run_dir") else None
    return released or checkpoint_digest(entry["checkpoint"])


def provenance(entries) -> dict:
    """What a table computed from these zoo models records in its sidecar (``results.save_table(..., **prov)``):
    ``checkpoints`` (model name -> sha256 of its selected weights) and ``machine`` (this process's processor,
    threads and library versions). Loads compare the digests: a retrained model makes the table stale."""
    models = [e for e in entries if e["role"] != "mae"]
    if not models:
        raise ConfigError("provenance: no trained classifier among the entries")
    return {"checkpoints": {e["name"]: weights_sha256(e) for e in models},
            "machine": machine_info()}


def describe_machine(m: dict | None) -> str:
    if not m:
        return "not recorded"
    features = ", ".join(m.get("cpu_features") or []) if m.get("device", "cpu") == "cpu" else ""
    return (f"{m['processor']}" + (f" ({features})" if features else "") + f", {m['threads']} threads, "
            f"torch {m['torch']}, timm {m.get('timm', '?')}, numpy {m.get('numpy', '?')}")


def hardware_summary(entries, prov: dict | None = None) -> dict:
    """For a chapter's setup box: where its tables were computed and where its models were trained."""
    trained = sorted({describe_machine(e.get("machine")) for e in entries if e["role"] != "mae"})
    out = {"tables computed on": describe_machine((prov or {}).get("machine") or machine_info())}
    out["models trained on"] = "; ".join(trained)
    return out


def check_selection(profile: str, families=None, datasets=None):
    """Refuse a family or dataset the profile has no models of, saying what it has and what to do instead."""
    spec = _spec(profile)
    for what, asked, known in (("dataset", datasets, list(spec["datasets"])), ("family", families, spec["families"])):
        unknown = [x for x in (asked or []) if x not in known]
        if unknown:
            raise ConfigError(
                f"{what} {', '.join(map(repr, unknown))}: zoo profile {profile!r} has no models of it (its "
                f"{what} list: {', '.join(known)}). The chapters run on trained models only; "
                + (_study_hint(unknown[0]) if what == "dataset" else "the zoo trains the families "
                   f"{', '.join(ZOO['full']['families'])}"))


def _labels(profile: str) -> dict:
    """TrainConfig.dataset -> the name the profile gives it (a study's folder path -> its name)."""
    return {d["path"]: name for name, d in _spec(profile)["datasets"].items() if "path" in d}


def build_hint(profile: str) -> str:
    """The command that builds a profile's models."""
    if profile.startswith(STUDY_PREFIX):
        return study_command(read_study(profile[len(STUDY_PREFIX):]))
    return f"tprune zoo --profile {profile}"


def zoo_entries(profile: str = "full", require: bool = True, families=None, datasets=None, roles=None) -> list:
    """Metadata of the models of a profile (the chapters' entry point), optionally only some families / datasets /
    roles ("mae", "base", "prune"). ``require``: raise if any of the selected models is not built (a chapter never
    runs on part of its models). Released models (``release``) count as built: they are written into the cache
    from the repository's release first."""
    check_selection(profile, families, datasets)
    release.materialize(profile)
    labels = _labels(profile)
    entries = [_entry(role, cfg, labels.get(getattr(cfg, "dataset", None))) for role, cfg in zoo_plan(profile)]
    entries = [e for e in entries if (roles is None or e["role"] in roles) and (e["role"] == "mae" or (
        (families is None or e["family"] in families) and (datasets is None or e["dataset"] in datasets)))]
    missing = [e for e in entries if not e["trained"] or (e["role"] != "mae" and "test_accuracy" not in e)]
    if require and missing:
        names = ", ".join("mae" if e["role"] == "mae" else e["name"] for e in missing[:4])
        raise ConfigError(f"zoo {profile}: {len(missing)} of {len(entries)} models not built under {zoo_root()} "
                          f"({names}{', ...' if len(missing) > 4 else ''}); run `{build_hint(profile)}`")
    return entries


def load_zoo_model(entry: dict, device="cpu"):
    """(model, meta) of a zoo entry (unpatched; ``train.apply_run_pruning(model, meta)`` adds the run's pruning)."""
    if entry["role"] == "mae":
        raise ConfigError("load_zoo_model: the MAE entry holds an encoder, not a classifier")
    return load_checkpoint(entry["run_dir"], device)


def summarize(entries: list) -> list:
    """Test accuracy mean ± std over seeds per (family, dataset, method, keep rate, role), plus mean training time.
    ``role`` tells base models from their keep-rate-1.0 controls and from reverse-direction models; ``protocol``
    says which split they were tested on."""
    groups = {}
    for e in entries:
        if e["role"] == "mae" or "test_accuracy" not in e:
            continue
        groups.setdefault((e["family"], e["dataset"], e["method"], e["keep_rate"], e["role"]), []).append(e)
    rows = []
    for (family, dataset, method, kr, role), es in groups.items():
        acc = [e["test_accuracy"] for e in es]
        rows.append({"family": family, "dataset": dataset, "method": method, "keep_rate": kr, "role": role,
                     "protocol": json.dumps(es[0]["protocol"], sort_keys=True), "n_seeds": len(es),
                     "test_acc_mean": statistics.fmean(acc), "test_acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                     "val_acc_mean": statistics.fmean(e["val_accuracy"] for e in es),
                     "test_gmacs": es[0]["test_gmacs"],
                     "train_seconds_mean": statistics.fmean(e["train_seconds"] for e in es),
                     "trained_on": _trained_on(es)})
    return rows


def _trained_on(entries) -> str:
    """The processors (and thread counts) the models of a row were trained on: weights differ between them."""
    seen = sorted({f"{m['processor']} ({m['threads']} threads)" if m else "not recorded"
                   for m in (e.get("machine") for e in entries)})
    return "; ".join(seen)


def per_class_summary(entries: list) -> list:
    """Test accuracy per class, mean over seeds, per (family, dataset, role, method, keep rate): where a model's
    accuracy comes from (Speech Commands' on/off are rare in training; UrbanSound8K's car_horn and gun_shot rare)."""
    groups = {}
    for e in entries:
        for cls, acc in (e.get("test_per_class") or {}).items():
            if acc is not None:
                key = (e["family"], e["dataset"], e["role"], e["method"], e["keep_rate"], cls)
                groups.setdefault(key, []).append(acc)
    return [{"family": f, "dataset": d, "role": r, "method": m, "keep_rate": k, "class": c, "n_seeds": len(a),
             "test_acc_mean": statistics.fmean(a)} for (f, d, r, m, k, c), a in groups.items()]


def format_summary(rows: list) -> str:
    """The zoo's accuracy table as text; a row's method (topk, random, mean ...) is named, or "-" when unpruned."""
    lines = [f"{'family':9s} {'dataset':15s} {'role':8s} {'method':8s} {'keep':>5s} {'seeds':>5s} {'test acc':>15s} "
             f"{'val acc':>7s} {'GMACs':>6s} {'train s':>7s}"]
    for r in rows:
        lines.append(f"{r['family']:9s} {r['dataset']:15s} {r['role']:8s} {r['method'] or '-':8s} {r['keep_rate']:5.2f} "
                     f"{r['n_seeds']:5d} {100 * r['test_acc_mean']:6.1f} ± {100 * r['test_acc_std']:4.1f} % "
                     f"{100 * r['val_acc_mean']:6.1f}% {r['test_gmacs']:6.3f} {r['train_seconds_mean']:7.0f}")
    return "\n".join(lines)


def released_digests(profile: str = "full") -> dict:
    """Model name -> sha256 of its file in the profile's release (what the stored tables must have recorded).
    Read from the manifest alone, not through the plan's run hashes: the speech split's identity enters those
    hashes and needs the audio, which a reader's build does not have."""
    out = {}
    for r in release.released(profile).values():
        if r["role"] == "mae":
            continue
        method = "control" if r["role"] == "control" else r["config"].get("prune_method")
        name = model_name(r["role"], r["family"], r["dataset"], method, r["config"].get("keep_rate", 1.0), r["seed"])
        out[name] = r["sha256"]
    return out


def _finished(run_hash: str) -> bool:
    """A run folder of the zoo cache holds a finished run (a classifier or an MAE)."""
    return any((zoo_root() / run_hash / name).is_file() for name in ("train.json", "mae.json"))


def _built(role, cfg) -> bool:
    e = _entry(role, cfg)
    return e["trained"] and (role == "mae" or "test_accuracy" in e)


# public for tprune study: one run's metadata, whether it is trained and tested, whether a run folder is finished
entry, built, finished = _entry, _built, _finished


def _parents(cfg) -> list:
    """The runs a config needs built first: its MAE, unpruned parent or transfer source (``init``) and its teacher."""
    init = getattr(cfg, "init", None)
    out = [init.split(":", 1)[1]] if init and init.split(":", 1)[0] in INIT_KINDS else []
    teacher = getattr(cfg, "teacher", None)
    return out + ([teacher.split(":", 1)[1]] if teacher else [])
