"""Run configurations as plain data, torch-free: the fields every run has (``Schedule``), ``TrainConfig`` and their
checks. The command line derives its flags from these fields and their ``help`` metadata (``cli.add_field_flags``).

``Schedule`` holds the model size, the optimization schedule and the operational fields; ``TrainConfig`` and
``mae.MAEConfig`` extend it, so a shared field, its rule and its help exist once (MAEConfig only changes defaults).
Field order does not enter a run's hash (``runtime.config_hash`` sorts the keys); the defaults do.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .. import rules
from ..errors import CheckpointError, ConfigError
from ..fsio import sha256_file
from ..rules import DEFAULT_DROP_LOC, ON_ERROR

INIT_KINDS = ("mae", "run", "transfer")   # where a run's first weights come from (TrainConfig.init)
OFFICIAL = "official"   # init="official:<path>": an official AST / AudioMAE checkpoint file, its encoder (not a run)


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class Schedule:
    """Model size, optimization schedule and the operational fields (not hashed: device ... progress)."""
    size: str = field(default="tiny", metadata=_help("tiny | small | base (12 blocks, 16x16 patches each)"))
    mel: int = field(default=128, metadata=_help("mel bins of the fbank (a multiple of 16)"))
    epochs: int = 10
    batch_size: int = field(default=32, metadata=_help("the global batch (under torchrun: split over processes)"))
    lr: float = field(default=1e-3, metadata=_help("peak learning rate (AdamW; cosine to min_lr after warm-up)"))
    min_lr: float = 1e-5
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    grad_clip: float = field(default=1.0, metadata=_help("gradient-norm clip (0 = off)"))
    seed: int = 0
    precision: str = field(default="auto", metadata=_help("auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16"))
    device: str = field(default="auto", metadata=_help("auto | cpu | cuda | cuda:N (under torchrun each process "
                                                       "takes cuda:LOCAL_RANK, or the CPU with gloo)"))
    threads: int | None = field(default=None, metadata=_help("torch CPU threads for this run (default: as is)"))
    ckpt_every: int = field(default=50, metadata=_help("steps between mid-epoch checkpoints"))
    progress: bool = True


def check_schedule(cfg: Schedule) -> None:
    """The rules of the shared fields, named ``<Config>.<field>``."""
    owner = type(cfg).__name__
    with rules.fields_of(owner):
        rules.check_size(cfg.size)
        rules.check_patch_multiple("mel", cfg.mel)
        rules.check_positive_int("epochs", cfg.epochs)
        rules.check_positive_int("batch_size", cfg.batch_size)
        rules.check_positive_int("ckpt_every", cfg.ckpt_every)
        rules.check_precision(cfg.precision)
        rules.check_device_name(cfg.device)
        if cfg.threads is not None:
            rules.check_positive_int("threads", cfg.threads)
    for ok, name, expected in (
            (cfg.lr > 0 and 0 <= cfg.min_lr <= cfg.lr, "lr", "lr > 0 and 0 <= min_lr <= lr"),
            (0 <= cfg.warmup_epochs <= cfg.epochs, "warmup_epochs", f"a number in [0, epochs={cfg.epochs}]"),
            (cfg.weight_decay >= 0, "weight_decay", ">= 0"),
            (cfg.grad_clip >= 0, "grad_clip", ">= 0")):
        if not ok:
            raise ConfigError(f"{owner}.{name}: expected {expected}, got {getattr(cfg, name)!r}")


@dataclass
class TrainConfig(Schedule):
    """A supervised run or a pruning-aware fine-tune (``training.train``); its hash names the run's folder."""
    family: str = field(default="ast", metadata=_help("ast | audiomae"))
    dataset: str = "speechcommands"      # any name data.cache.load_features knows, or a folder (see the CLI's help)
    protocol: dict = field(default_factory=dict)   # dataset protocol, e.g. {"test_fold": 10}
    frames: int = field(default=96, metadata=_help("model input length in 10 ms frames (a multiple of 16)"))
    data_frames: int | None = field(default=None, metadata=_help(
        "frames loaded per clip; more than --frames: random crops in training, the first frames in evaluation"))
    label_smoothing: float = 0.1
    mixup: float = field(default=0.0, metadata=_help("Beta(a, a) mixing of clip pairs (0 = off)"))
    class_balance: bool = field(default=False, metadata=_help("cross-entropy weighted by inverse class frequency"))
    time_shift: int = field(default=0, metadata=_help("shift each training clip by up to this many frames"))
    freq_mask: int = field(default=24, metadata=_help("SpecAugment: widest frequency mask in mel bins (0 = off)"))
    time_mask: int = field(default=20, metadata=_help("SpecAugment: widest time mask in frames (0 = off)"))
    drop_path: float = 0.1
    qk_norm: bool = field(default=False, metadata=_help("LayerNorm on queries and keys per head (timm qk_norm)"))
    layer_scale: float | None = field(default=None, metadata=_help(
        "LayerScale init value per residual branch (timm init_values; default off)"))
    init: str | None = None   # None (from scratch) | mae:<hash> | run:<hash> | transfer:<hash> | official:<path>
    teacher: str | None = field(default=None, metadata=_help(
        "run:HASH: hard-label distillation from a finished run of the same data (weight: --distill)"))
    distill: float = field(default=0.5, metadata=_help("weight of the teacher's labels in the loss"))
    prune_method: str | None = field(default=None, metadata=_help(
        "pruning-aware fine-tuning with this method (e.g. topk)"))
    keep_rate: float = field(default=1.0, metadata=_help("target keep rate of the shrink"))
    drop_loc: tuple = field(default=DEFAULT_DROP_LOC, metadata=_help("drop blocks, e.g. 3,6,9"))
    prune_hold_epochs: float = field(default=1.0, metadata=_help("keep rate 1.0 this long ..."))
    prune_shrink_epochs: float = field(default=2.0, metadata=_help(
        "... then a cosine shrink to the keep rate over this long, then fixed"))
    augment_while_shrinking: bool = field(default=True, metadata=_help(
        "keep SpecAugment / mixup / shift on during the shrink (off: as the paper)"))
    prune_options: dict = field(default_factory=dict)
    on_error: str = "raise"              # unreadable audio file: raise (stop, naming it) | skip (leave it out, list it)
    # operational (not hashed), besides Schedule's
    eval_batch_size: int = 128
    stream: bool | None = field(default=None, metadata=_help(
        "read features from shard files written once, a batch at a time (memory: a batch, not the split; the same "
        "numbers); default: when a split's features would exceed 4 GiB in memory"))

    def __post_init__(self):
        if isinstance(self.init, str) and self.init.startswith(OFFICIAL + ":"):   # one spelling of one file
            self.init = f"{OFFICIAL}:{Path(self.init.split(':', 1)[1]).expanduser().resolve()}"
        self.drop_loc = tuple(int(b) for b in self.drop_loc)
        self.protocol = dict(self.protocol or {})
        self.prune_options = dict(self.prune_options or {})
        validate(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["drop_loc"] = list(self.drop_loc)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"TrainConfig: unknown field(s) {unknown}; expected some of {sorted(known)}")
        return cls(**d)

    def hash(self) -> str:
        """Names the run's folder. A user-folder dataset adds its content fingerprint: a run trained before the
        folder changed is never served for the changed folder; an official checkpoint as init adds its sha256."""
        from ..data.datasets import data_fingerprint
        from .runtime import config_hash
        data = data_fingerprint(self.dataset, self.protocol)
        if (self.init or "").startswith(OFFICIAL + ":"):
            data = {"data": data, "official_sha256": official_digest(self.init.split(":", 1)[1])}
        return config_hash(self, data=data)


def official_digest(path) -> str:
    """sha256 of an official checkpoint file (init="official:<path>"): the run is named by what the file holds."""
    try:
        return sha256_file(path)
    except OSError as exc:
        raise CheckpointError(f"init=official:{path}: cannot read the checkpoint ({exc})") from None


def validate(cfg: TrainConfig):
    """Raise ConfigError naming the first field that is out of range."""
    def need(ok, name, expected):
        if not ok:
            raise ConfigError(f"TrainConfig.{name}: expected {expected}, got {getattr(cfg, name)!r}")
    check_schedule(cfg)
    with rules.fields_of("TrainConfig"):   # the rules every model and pruning setting share
        rules.check_model(cfg.family, cfg.size, cfg.frames, cfg.mel)
        if cfg.prune_method is not None:
            rules.check_one_of("prune_method", rules.method_names(), cfg.prune_method)
            rules.check_pruning(cfg.prune_method, cfg.keep_rate, cfg.drop_loc, rules.depth_of(cfg.size),
                                cfg.prune_options)
    need(cfg.data_frames is None or (isinstance(cfg.data_frames, int) and cfg.data_frames >= cfg.frames),
         "data_frames", "None or an int >= frames")
    need(0 <= cfg.label_smoothing < 1, "label_smoothing", "a number in [0, 1)")
    need(cfg.mixup >= 0, "mixup", ">= 0")
    for name in ("class_balance", "qk_norm", "augment_while_shrinking"):
        need(isinstance(getattr(cfg, name), bool), name, "True or False")
    need(cfg.layer_scale is None or (isinstance(cfg.layer_scale, (int, float)) and cfg.layer_scale > 0),
         "layer_scale", "None or a number > 0")
    need(isinstance(cfg.time_shift, int) and cfg.time_shift >= 0, "time_shift", "an int >= 0")
    need(cfg.freq_mask >= 0 and cfg.time_mask >= 0, "freq_mask", "mask widths >= 0")
    need(0 <= cfg.drop_path < 1, "drop_path", "a number in [0, 1)")
    _check_init(cfg, need)
    need(0 <= cfg.distill <= 1, "distill", "a number in [0, 1]")
    need(cfg.teacher is None or cfg.distill > 0, "distill", "> 0 when a teacher is given (at 0 it would run unused)")
    need(0 < cfg.keep_rate <= 1, "keep_rate", "a number in (0, 1]")
    need(cfg.prune_method is not None or cfg.keep_rate == 1.0, "keep_rate", "1.0 when prune_method is None")
    need(cfg.prune_hold_epochs >= 0 and cfg.prune_shrink_epochs >= 0 and (
         cfg.prune_method is None or cfg.prune_hold_epochs + cfg.prune_shrink_epochs <= cfg.epochs), "prune_hold_epochs",
         f"hold + shrink epochs within epochs={cfg.epochs}")
    need(cfg.on_error in ON_ERROR, "on_error", " or ".join(repr(v) for v in ON_ERROR))
    need(cfg.stream in (None, True, False), "stream", "None (auto), True or False")


def _check_init(cfg: TrainConfig, need) -> None:
    kind, _, ref = (cfg.init or "").partition(":")
    need(cfg.init is None or (isinstance(cfg.init, str) and kind in INIT_KINDS + (OFFICIAL,) and ref), "init",
         "None, 'mae:<hash>', 'run:<hash>', 'transfer:<hash>' or 'official:<checkpoint file>'")
    need(kind != OFFICIAL or (not cfg.qk_norm and cfg.layer_scale is None), "init",
         "official checkpoints only for the stock blocks (qk_norm=False, layer_scale=None)")
    need(kind != "mae" or cfg.family == "audiomae", "init", "MAE weights only for family='audiomae'")
    need(kind != "mae" or (not cfg.qk_norm and cfg.layer_scale is None), "init",
         "MAE weights only for the stock blocks (qk_norm=False, layer_scale=None): the MAE encoder has neither")
    need(cfg.teacher is None or (isinstance(cfg.teacher, str) and cfg.teacher.startswith("run:")
                                 and len(cfg.teacher) > 4), "teacher", "None or 'run:<hash>'")
