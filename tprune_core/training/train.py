"""Supervised training and pruning-aware fine-tuning of the audio ViTs, with resumable cached runs.

    cfg = TrainConfig(family="ast", dataset="speechcommands", frames=96, epochs=12, seed=0)
    run_dir = train_run(cfg)          # trains, resumes or finds $TPRUNE_CACHE/zoo/<hash>/ (selection on "val")
    result = test_run(run_dir)        # the selected checkpoint on "test", once (cached in test.json)
    model, meta = load_checkpoint(run_dir)
    evaluate(model, features, method="topk", keep_rate=0.5)   # accuracy, n_clips, ... (tprune_core.training.evaluation)

A run lives in a folder named by a hash of every config field that changes its numbers (`config_hash`):
``state.pt`` (model, optimizer, step, RNG states; rewritten atomically every ``ckpt_every`` steps and after every
epoch, deleted once the run is done), ``best.pt`` (the epoch with the best validation accuracy: the selected model),
``log.json`` (config and one row per epoch), ``train.json`` (written last: the run is complete) and ``test.json``.
Rerunning the same command after a kill continues from ``state.pt`` and ends with the same weights as a run that was
never interrupted (CPU; the learning-rate and keep-rate schedules are pure functions of the step, the data order of
an epoch is a pure function of (seed, epoch), and the global RNG states are checkpointed). The epoch loop itself is
``loop.run_epochs``, shared with MAE pretraining; ``Supervised`` is what this module plugs into it.

Model selection is structural: ``fit`` receives the training and validation FeatureSets only, and the test split is
evaluated by ``test_run`` alone, after training has finished. Failing early is not lost work, though: before the
first step ``train_run`` reads and checks every file of every split (``read_splits``: the test split's files are
featurized into the cache, their features handed to nobody), so a corrupt test file stops the run before training,
naming the file. With ``on_error="skip"`` unreadable files are left out instead, printed with their reasons and
listed in train.json (``skipped``: file, split, reason), beside the clip length read and how many training clips it
crops (``clip_length``).

Pruning-aware fine-tuning (``prune_method`` set): the model is patched with ``apply_pruning`` and its keep rate
follows ``keep_rate_schedule`` every iteration: 1.0 for ``prune_hold_epochs``, a cosine shrink to ``keep_rate`` over
``prune_shrink_epochs``, then fixed. SpecAugment, time shift and mixup (when on) stay on throughout by default;
``augment_while_shrinking=False`` turns them off during the shrink, as the paper does, so the network meets fewer
tokens and no masked bins at the same time. Label smoothing and class weights stay on. Validation (and so
selection) uses the target keep rate at every epoch. A keep-rate-1.0 control (``keep_rate=1.0`` with the same
method) runs the identical schedule and recipe with nothing pruned: the zoo fine-tunes one beside every pruned model.

Class balance (``class_balance=True``) weights the cross-entropy by inverse training-class frequency: the pooled
Speech Commands training set has about a fifth as many `on`/`off` clips as other words (they exist only in the test
copy's training speakers).

Multi-label sets (multi-hot targets, see ``targets``) train with a sigmoid per class (binary cross-entropy; label
smoothing moves each 0/1 target by eps/2) and are selected on validation mAP (``val_mAP`` in the history rows and
train.json, beside ``val_acc``, their top-1 hit rate). Nothing in the config says so: the data do.

Runtime pieces (devices, files, RNG, optimizer) live in ``runtime`` and evaluation in ``evaluation``; the names
other code imported from here before (``evaluate``, ``read_json``, ``zoo_root``, ``config_hash``, ...) still work.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from ..data.datasets import seconds_of
from ..data.features import crop_frames
from ..data.targets import criterion, hits, score_fields
from ..errors import AudioError, CheckpointError, ConfigError, counted
from ..nn import pruning
from ..nn.models import create_model, load_official_checkpoint, transfer_filter
from ..source import code_version
from . import distributed
from .config import INIT_KINDS, OFFICIAL, Schedule, TrainConfig, official_digest, validate  # noqa: F401
from .evaluation import evaluate
from .loop import Task, run_epochs
from .mae import load_encoder
from .runtime import (TRAIN_VERSION, adamw, autocast, cpu_threads, deterministic, load_torch, machine_info,
                      param_groups, read_json, resolve_device, run_dir_for, save_atomic, weights_digest, zoo_root)
# Moved to runtime, still importable from here (as evaluate, read_json, zoo_root ... above).
from .runtime import OPERATIONAL, config_hash, lr_at, training_attention  # noqa: F401


# ---------------------------------------------------------------------------------------------- schedules and models

def keep_rate_schedule(step: int, total_steps: int, target: float, hold_steps: int, shrink_steps: int) -> float:
    """Keep rate at iteration ``step``: 1.0 for ``hold_steps``, a cosine from 1.0 to ``target`` over
    ``shrink_steps``, then ``target`` up to ``total_steps``."""
    if not 0 < target <= 1:
        raise ConfigError(f"keep_rate_schedule: target must be in (0, 1], got {target!r}")
    if hold_steps < 0 or shrink_steps < 0 or hold_steps + shrink_steps > total_steps:
        raise ConfigError(f"keep_rate_schedule: hold_steps={hold_steps} + shrink_steps={shrink_steps} must be "
                          f"non-negative and fit in total_steps={total_steps}")
    if not 0 <= step <= total_steps:
        raise ConfigError(f"keep_rate_schedule: step {step} outside 0..{total_steps}")
    if step < hold_steps:
        return 1.0
    if step >= hold_steps + shrink_steps:
        return float(target)
    t = (step - hold_steps) / shrink_steps
    return float(target + (1.0 - target) * 0.5 * (1 + math.cos(math.pi * t)))


class SpecAugment(torch.nn.Module):
    """One frequency mask and one time mask per clip (torchaudio, iid over the batch), on (B, frames, mel)."""

    def __init__(self, freq_mask: int, time_mask: int):
        super().__init__()
        import torchaudio.transforms as T
        self.freq = T.FrequencyMasking(freq_mask, iid_masks=True) if freq_mask else None
        self.time = T.TimeMasking(time_mask, iid_masks=True) if time_mask else None

    def forward(self, x):
        spec = x.transpose(1, 2).unsqueeze(1)   # torchaudio wants (..., freq, time); 0 is the normalized mean
        if self.freq is not None:
            spec = self.freq(spec)
        if self.time is not None:
            spec = self.time(spec)
        return spec.squeeze(1).transpose(1, 2)


def time_shift(x: torch.Tensor, max_shift: int, generator=None) -> torch.Tensor:
    """Shift every clip of (B, frames, mel) by its own uniform offset in [-max_shift, max_shift] frames; the frames
    shifted in take the clip's minimum (its quietest bin, as padding does)."""
    if max_shift <= 0:
        return x
    b, t, _ = x.shape
    offset = torch.randint(-max_shift, max_shift + 1, (b, 1), generator=generator)
    src = torch.arange(t)[None] - offset                          # frame j shows source frame j - offset
    inside = (src >= 0) & (src < t)
    out = torch.gather(x, 1, src.clamp(0, t - 1)[..., None].expand(-1, -1, x.shape[2]))
    floor = x.amin(dim=(1, 2), keepdim=True)
    return torch.where(inside[..., None], out, floor)


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Loss weights inverse to each class's share of the training clips (multi-hot rows: of the positives), scaled
    so that the average weight per training clip is 1 (sklearn's "balanced"); a class without a clip gets 0."""
    counts = labels.double().sum(0) if labels.dim() == 2 else torch.bincount(labels, minlength=num_classes).double()
    present = counts > 0
    w = torch.zeros(num_classes, dtype=torch.float64)
    w[present] = counts[present].sum() / (present.sum() * counts[present])
    return w.float()


def architecture(cfg: TrainConfig) -> dict:
    """The timm ViT options a config adds to the stock blocks (none by default: official checkpoints load as is)."""
    return {"qk_norm": cfg.qk_norm, "init_values": cfg.layer_scale}


def build_model(cfg: TrainConfig, num_classes: int):
    """The config's model, initialized from scratch, from an MAE encoder or from another run's selected weights."""
    model = create_model(cfg.family, cfg.size, cfg.frames, num_classes, mel=cfg.mel, drop_path_rate=cfg.drop_path,
                         **architecture(cfg))
    if cfg.init is None:
        return model
    kind, ref = cfg.init.split(":", 1)
    if kind == "mae":
        load_encoder(model, zoo_root() / ref / "encoder.pt")
        return model
    if kind == OFFICIAL:   # the encoder; the classifier is this run's own
        load_official_checkpoint(model, ref, cfg.family, head=False)
        return model
    parent = load_torch(_best_path(zoo_root() / ref))
    pc = parent["config"]
    if kind == "transfer":
        if (pc["family"], pc["size"], pc["mel"]) != (cfg.family, cfg.size, cfg.mel):
            raise CheckpointError(f"init={cfg.init}: parent run is {pc['family']}/{pc['size']}/{pc['mel']} mel, "
                                  f"this config needs {cfg.family}/{cfg.size}/{cfg.mel}")
        missing, unexpected = model.load_state_dict(transfer_filter(parent["model"], model), strict=False)
        if unexpected or set(missing) != {"head.weight", "head.bias"}:
            raise CheckpointError(f"init={cfg.init}: missing {missing}, unexpected {unexpected}")
    else:
        if (pc["family"], pc["size"], pc["frames"], pc["mel"]) != (cfg.family, cfg.size, cfg.frames, cfg.mel):
            raise CheckpointError(f"init={cfg.init}: parent run is {pc['family']}/{pc['size']}/{pc['frames']} frames, "
                                  f"this config needs {cfg.family}/{cfg.size}/{cfg.frames}")
        if len(parent["classes"]) != num_classes:
            raise CheckpointError(f"init={cfg.init}: parent has {len(parent['classes'])} classes, data has {num_classes}")
        model.load_state_dict(parent["model"])
    return model


def _best_path(path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here; expected a run folder holding best.pt or a .pt file")
    return path


def load_checkpoint(path, device="cpu"):
    """(model, meta) from a run folder, a best.pt, or a run hash under the zoo. ``meta``: config, classes, norm,
    epoch, val metrics. The model is unpatched (apply the run's pruning with ``apply_run_pruning`` if wanted)."""
    p = Path(path)
    if not p.exists() and (zoo_root() / str(path)).exists():
        p = zoo_root() / str(path)
    ck = load_torch(_best_path(p))
    for key in ("model", "config", "classes"):
        if key not in ck:
            raise CheckpointError(f"{_best_path(p)}: not a tprune training checkpoint (no {key!r})")
    cfg = TrainConfig.from_dict(ck["config"])
    model = create_model(cfg.family, cfg.size, cfg.frames, len(ck["classes"]), mel=cfg.mel, **architecture(cfg))
    model.load_state_dict(ck["model"])
    model.eval()
    meta = {k: v for k, v in ck.items() if k != "model"}
    meta["path"] = str(_best_path(p))
    return model.to(device), meta


# ---------------------------------------------------------------------------------------------- data

def load_split(cfg: TrainConfig, split: str, progress: bool = True, norm="train"):
    """One split of the config's dataset, normalized with its training-split statistics (or ``norm``); in memory
    or streamed from shard files as ``cfg.stream`` says (the same numbers either way)."""
    from ..data.cache import load_features
    return load_features(cfg.dataset, split, frames=cfg.data_frames or cfg.frames, mel_bins=cfg.mel, norm=norm,
                         on_error=cfg.on_error, progress=progress, featurizer=_featurizer(cfg), **cfg.protocol)


def featurize_split(cfg: TrainConfig, split: str):
    """Raw features of one split, from the cache or computed: every file read and checked (the test split's before
    training, so a bad file fails early; its features wait in the cache for ``test_run``)."""
    from ..data.datasets import load_dataset
    clips = load_dataset(cfg.dataset, None, split, **cfg.protocol)
    return _featurizer(cfg)(clips, cfg.data_frames or cfg.frames, cfg.mel, on_error=cfg.on_error,
                            progress=cfg.progress)


def _featurizer(cfg: TrainConfig):
    """In memory or shard files (``streaming``): ``cfg.stream``, or by size when None (every training process on
    this machine holds its own copy of an in-memory split)."""
    from ..data.streaming import featurizer_for
    return featurizer_for(cfg.stream, distributed.environment().local_size)


def read_splits(cfg: TrainConfig):
    """(train set, val set, record) with every file of train, val and test read and checked before the first step.
    ``record`` goes into train.json: ``skipped`` ({file, split, reason} of files left out with on_error="skip")
    and ``clip_length`` (frames read per clip, and how many training clips that crops or pads)."""
    sets = {}
    loaders = {"train": lambda: load_split(cfg, "train", cfg.progress),
               # the training statistics that norm="train" would give, without featurizing train once more
               "val": lambda: load_split(cfg, "val", cfg.progress, norm=sets["train"].norm),
               "test": lambda: featurize_split(cfg, "test")}   # read and checked only: fit never sees it
    for split, load in loaders.items():
        try:
            sets[split] = load()
        except AudioError as exc:
            raise AudioError(exc.path, f"{exc.problem} ({split} split, read before training: nothing was trained; "
                                       f"fix or remove the file, or leave unreadable files out with on_error='skip', "
                                       f"tprune train --on-error skip)") from None
    record = {"skipped": [{"file": path, "split": split, "reason": reason}
                          for split, fs in sets.items() for _, path, reason in getattr(fs, "skipped", [])],
              "clip_length": clip_length(cfg, sets["train"])}
    if cfg.progress and distributed.is_main():
        print(describe_inputs(cfg, sets, record), file=sys.stderr)
    return sets["train"], sets["val"], record


def clip_length(cfg: TrainConfig, train_set) -> dict:
    """Frames read per clip and how many training clips are longer (cropped) or shorter (padded) than that."""
    frames = cfg.data_frames or cfg.frames
    lengths = getattr(train_set, "lengths", None)
    out = {"frames": frames, "seconds": round(seconds_of(frames), 3), "model_frames": cfg.frames}
    if lengths is not None:
        out.update(clips=len(lengths), cropped=int((lengths > frames).sum()), padded=int((lengths < frames).sum()))
    return out


def describe_inputs(cfg: TrainConfig, sets: dict, record: dict) -> str:
    """What training is about to read, for the console: clips per split, files skipped, the clip length and what
    it crops."""
    n = {s: len(fs.ids) for s, fs in sets.items()}
    text = (f"tprune train: read and checked every split of {cfg.dataset}: {n['train']} train, {n['val']} val, "
            f"{counted(n['test'], 'test clip')}")
    if record["skipped"]:
        text += f"; {counted(len(record['skipped']), 'unreadable file')} skipped (listed in train.json)"
    c = record["clip_length"]
    text += f"\ntprune train: each clip is read as its first {c['frames']} frames ({c['seconds']:g} s)"
    if "clips" in c:
        text += (f": {c['cropped']} of {c['clips']} training clips are longer and lose their end, "
                 f"{c['padded']} are shorter and are padded")
    if cfg.frames < c["frames"]:
        text += f"; training draws random {cfg.frames}-frame crops inside, evaluation reads the first {cfg.frames}"
    return text


def _check_sets(cfg, train_set, val_set):
    for name, fs in (("train", train_set), ("val", val_set)):
        if fs.x.dim() != 3 or fs.x.shape[2] != cfg.mel or fs.x.shape[1] < cfg.frames:
            raise ConfigError(f"{name} features: expected (N, >= {cfg.frames}, {cfg.mel}), got {tuple(fs.x.shape)}")
        if len(fs.x) != len(fs.y):
            raise ConfigError(f"{name} features: {len(fs.x)} clips but {len(fs.y)} labels")
    if list(train_set.classes) != list(val_set.classes):
        raise ConfigError("train and val features have different class lists")
    if len(train_set.x) < cfg.batch_size:
        raise ConfigError(f"TrainConfig.batch_size: {cfg.batch_size} is more than the {len(train_set.x)} training clips")


# ---------------------------------------------------------------------------------------------- training

class Supervised(Task):
    """``fit`` in the shared loop: augmented batches, keep-rate schedule, validation, best.pt, train.json."""
    zero = (0.0, 0.0, 0.0)   # loss * clips, correct clips, clips
    data_parallel = True     # training forwards go through self.net (DDP under torchrun)

    def __init__(self, cfg: TrainConfig, train_set, val_set, run_dir, model, opt, device, record=None):
        tag = f"{cfg.family}/{cfg.dataset}/s{cfg.seed}" + (f"/{cfg.prune_method}@{cfg.keep_rate:g}"
                                                          if cfg.prune_method else "")
        super().__init__(cfg, run_dir, tag, model, opt, device, len(train_set.x))
        self.train_set, self.val_set = train_set, val_set
        self.x, self.y = train_set.x, torch.as_tensor(train_set.y)
        self.lr_hint = f"lower TrainConfig.lr (now {cfg.lr}) or use precision='fp32'"
        self.augment = SpecAugment(cfg.freq_mask, cfg.time_mask)
        self.criterion = criterion(self.y)   # F.cross_entropy, or multilabel_loss for multi-hot targets
        self.hold = min(round(cfg.prune_hold_epochs * self.steps_per_epoch), self.total)
        self.shrink = min(round(cfg.prune_shrink_epochs * self.steps_per_epoch), self.total - self.hold)  # no overrun
        self.kr, self.val, self.best = 1.0, None, None
        self.weight = class_weights(self.y, len(train_set.classes)).to(device) if cfg.class_balance else None
        self.teacher = load_teacher(cfg, train_set.classes, device) if cfg.teacher else None
        self.record = dict(record or {})   # what read_splits found (skipped files, clip length), for train.json

    def step(self, idx, step):
        cfg = self.cfg
        x, y = crop_frames(self.x[idx].float(), cfg.frames, random=True), self.y[idx]
        shrinking = cfg.prune_method is not None and self.hold <= step < self.hold + self.shrink
        augment = cfg.augment_while_shrinking or not shrinking
        mix = cfg.mixup > 0 and augment
        if augment:
            x = self.augment(time_shift(x, cfg.time_shift))
        if mix:
            lam = float(torch.distributions.Beta(cfg.mixup, cfg.mixup).sample())
            mate = torch.randperm(len(idx))
            x = lam * x + (1 - lam) * x[mate]
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if cfg.prune_method:
            self.kr = keep_rate_schedule(step, self.total, cfg.keep_rate, self.hold, self.shrink)
            pruning.set_keep_rate(self.model, self.kr)
        with autocast(self.device, cfg.precision):
            logits = self.net(x)
            loss = self.criterion(logits.float(), y, weight=self.weight, label_smoothing=cfg.label_smoothing)
            if mix:
                loss = lam * loss + (1 - lam) * self.criterion(logits.float(), y[mate], weight=self.weight,
                                                               label_smoothing=cfg.label_smoothing)
            if self.teacher is not None:
                # DeiT's hard distillation: the teacher's top class on the very input the student sees
                with torch.no_grad():
                    taught = self.teacher(x).argmax(dim=1)
                loss = (1 - cfg.distill) * loss + cfg.distill * self.criterion(
                    logits.float(), taught, weight=self.weight, label_smoothing=cfg.label_smoothing)
        return loss, (loss.item() * len(idx), hits(logits, y), len(idx))

    def postfix(self, sums):
        loss_sum, correct, seen = sums
        return {"loss": f"{loss_sum / seen:.3f}", "acc": f"{correct / seen:.3f}",
                **({"keep": f"{self.kr:.2f}"} if self.cfg.prune_method else {})}

    def end_epoch(self, epoch, sums):
        cfg, (loss_sum, correct, seen) = self.cfg, sums
        if cfg.prune_method:
            pruning.set_keep_rate(self.model, cfg.keep_rate)
        self.val = evaluate(self.model, self.val_set, batch_size=cfg.eval_batch_size, split="val",
                            precision=cfg.precision)
        return {"keep_rate": self.kr, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                "val_acc": self.val["accuracy"], "val_gmacs": self.val["gmacs_per_clip"],
                **score_fields(self.val, "val_")}

    def keep_best(self, row):
        key = "val_mAP" if "val_mAP" in row else "val_acc"   # multi-label sets are selected on mAP
        if self.best is None or row[key] > self.best[key]:
            self.best = {"epoch": row["epoch"], "val_acc": row["val_acc"], key: row[key], "val": self.val}
            save_atomic({"model": self.model.state_dict(), "config": self.cfg.to_dict(), "hash": self.run_hash,
                         "classes": list(self.train_set.classes), "norm": getattr(self.train_set, "norm", None),
                         "epoch": row["epoch"], "val": self.val, "train_version": TRAIN_VERSION},
                        self.run_dir / "best.pt")

    def describe(self, row):
        return (f"loss {row['train_loss']:.3f}  train_acc {row['train_acc']:.3f}  val_acc {row['val_acc']:.3f}"
                + (f"  val_mAP {row['val_mAP']:.3f}" if "val_mAP" in row else "")
                + (f"  keep {row['keep_rate']:.2f}" if self.cfg.prune_method else ""))

    def state(self):
        return {"best": self.best, **self.rank_state()}

    def rank_state(self):
        return {"prune_calls": pruning.call_count(self.model) if self.cfg.prune_method else 0}

    def restore(self, st):
        self.best = st["best"]
        if self.cfg.prune_method:
            pruning.set_call_count(self.model, st.get("prune_calls", 0))

    def finish(self, history) -> dict:
        cfg, best = self.cfg, self.best
        summary = {"hash": self.run_hash, "config": cfg.to_dict(), "classes": list(self.train_set.classes),
                   "best_epoch": best["epoch"], "val_accuracy": best["val_acc"], "val": best["val"],
                   **score_fields(best["val"], "val_"),
                   "history": history, "train_seconds": history[-1]["seconds"], "steps": self.total,
                   "device": str(self.device), "threads": torch.get_num_threads(), "torch": torch.__version__,
                   "n_train": self.n, "n_val": len(self.val_set.x),
                   "train_source": getattr(self.train_set, "source", None), "final_sha256": weights_digest(self.model),
                   "machine": machine_info(self.device), "code_version": code_version(), **self.record,
                   **distributed.record(cfg.batch_size, distributed.current())}
        save_atomic(summary, self.run_dir / "train.json")
        return summary


def load_teacher(cfg: TrainConfig, classes, device):
    """The frozen teacher of a distilled run: a finished run (any family) of the same classes and input length."""
    ref = cfg.teacher.split(":", 1)[1]
    teacher, meta = load_checkpoint(zoo_root() / ref, device=device)
    if list(meta["classes"]) != list(classes) or meta["config"]["frames"] != cfg.frames:
        raise CheckpointError(f"teacher={cfg.teacher}: it reads {meta['config']['frames']} frames of classes "
                              f"{meta['classes']}; this run needs {cfg.frames} frames of {list(classes)}")
    apply_run_pruning(teacher, meta)
    return teacher.eval().requires_grad_(False)


def fit(cfg: TrainConfig, train_set, val_set, run_dir, *, record: dict | None = None) -> dict:
    """Train ``cfg`` on ``train_set``, select the epoch with the best accuracy on ``val_set``; resumable.

    Never sees the test split (it is not an argument; ``record`` holds only what ``read_splits`` found about the
    files, for train.json). Returns the summary also written to ``train.json``.

    Under torchrun every process calls this (``distributed``): the same model on every rank, each its own part of
    every batch and its own random draws; rank 0 validates, writes the files and returns the summary, the other
    ranks return None once it is written.
    """
    _check_sets(cfg, train_set, val_set)
    world, device = distributed.setup(cfg.device)
    with cpu_threads(cfg.threads), deterministic(device):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, len(train_set.classes)).to(device)
        if cfg.prune_method:
            pruning.apply_pruning(model, cfg.prune_method, 1.0, cfg.drop_loc,
                                  **distributed.rank_options(cfg.prune_method, cfg.prune_options, world))
        opt = adamw(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
        distributed.seed_ranks(cfg.seed, world)   # after the model, which is the same on every rank
        return run_epochs(Supervised(cfg, train_set, val_set, run_dir, model, opt, device, record))


# ---------------------------------------------------------------------------------------------- runs

def is_trained(cfg: TrainConfig) -> bool:
    return (run_dir_for(cfg) / "train.json").is_file()


def train_run(cfg: TrainConfig) -> Path:
    """Train (or resume, or find finished) the run of ``cfg``; returns its folder. Reads and checks every split
    before the first step (``read_splits``) and trains on train and val only. Under torchrun rank 0 reads the
    splits first (featurizing into the cache), the other ranks then find them there."""
    world, _ = distributed.setup(cfg.device)
    run_dir = run_dir_for(cfg)
    if (run_dir / "train.json").is_file():
        return run_dir
    if cfg.init and cfg.init.startswith(("run:", "transfer:")) and not (
            zoo_root() / cfg.init.split(":", 1)[1] / "train.json").is_file():
        raise CheckpointError(f"init={cfg.init}: that run is not finished under {zoo_root()}")
    if cfg.teacher and not (zoo_root() / cfg.teacher[4:] / "train.json").is_file():
        raise CheckpointError(f"teacher={cfg.teacher}: that run is not finished under {zoo_root()}")
    if cfg.init and cfg.init.startswith("mae:") and not (zoo_root() / cfg.init[4:] / "encoder.pt").is_file():
        raise CheckpointError(f"init={cfg.init}: no pretrained encoder under {zoo_root() / cfg.init[4:]}")
    with distributed.main_first(world):
        train_set, val_set, record = read_splits(cfg)
    fit(cfg, train_set, val_set, run_dir, record=record)
    return run_dir


def run_pruning(meta: dict) -> pruning.PruneSettings | None:
    """The pruning a run was fine-tuned for (None for unpruned runs), e.g. for ``pruning.patched``."""
    c = meta["config"]
    if not c.get("prune_method"):
        return None
    return pruning.PruneSettings(c["prune_method"], float(c["keep_rate"]), tuple(c["drop_loc"]),
                                 dict(c.get("prune_options", {})))


def apply_run_pruning(model, meta: dict):
    """Patch a loaded model with the pruning its run was fine-tuned for (no-op for unpruned runs)."""
    s = run_pruning(meta)
    if s is not None:
        pruning.apply_pruning(model, s.method, s.keep_rate, s.drop_loc, **s.options)
    return model


def test_run(run_dir, progress: bool = True) -> dict:
    """Evaluate a finished run's selected checkpoint on the test split, once: the result is kept in test.json.
    Pruning-aware runs are evaluated with their own method and target keep rate. Under torchrun rank 0 evaluates
    and the other ranks read its test.json."""
    with distributed.main_first():
        return _test_run(Path(run_dir), progress)


def _test_run(run_dir: Path, progress: bool) -> dict:
    if (run_dir / "test.json").is_file():
        return read_json(run_dir / "test.json")
    if not (run_dir / "train.json").is_file():
        raise CheckpointError(f"{run_dir}: training is not finished (no train.json); the test split is read only "
                              "after model selection")
    model, meta = load_checkpoint(run_dir)
    cfg = TrainConfig.from_dict(meta["config"])
    model = apply_run_pruning(model.to(resolve_device(cfg.device)), meta)
    test_set = load_split(cfg, "test", progress)
    with cpu_threads(cfg.threads):
        result = evaluate(model, test_set, batch_size=cfg.eval_batch_size, split="test", precision=cfg.precision)
    result.update(hash=cfg.hash(), epoch=meta["epoch"], val_accuracy=meta["val"]["accuracy"],
                  source=getattr(test_set, "source", None), classes=list(meta["classes"]),
                  machine=machine_info(next(model.parameters()).device))
    save_atomic(result, run_dir / "test.json")
    return result


def run(cfg: TrainConfig) -> dict:
    """train_run then test_run; returns the summary with ``test`` metrics."""
    run_dir = train_run(cfg)
    summary = read_json(run_dir / "train.json")
    summary["test"] = test_run(run_dir, cfg.progress)
    summary["run_dir"] = str(run_dir)
    return summary
