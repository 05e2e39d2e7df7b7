"""Run configurations: shared fields defined once (config.Schedule), checked by the rules, flags derived from them."""
import dataclasses

import pytest

from tprune_core.cli import build_parser
from tprune_core.errors import ConfigError
from tprune_core.training.config import Schedule, TrainConfig
from tprune_core.training.mae import MAEConfig


def test_the_shared_fields_are_declared_once_and_checked_alike():
    shared = {f.name for f in dataclasses.fields(Schedule)}
    assert shared <= {f.name for f in dataclasses.fields(TrainConfig)}
    assert shared <= {f.name for f in dataclasses.fields(MAEConfig)}
    assert (MAEConfig().epochs, MAEConfig().batch_size, TrainConfig().epochs) == (20, 64, 10)   # own defaults
    for cls in (TrainConfig, MAEConfig):
        for bad, field in (({"epochs": 0}, "epochs"), ({"size": "huge"}, "size"), ({"precision": "fp8"}, "precision"),
                           ({"lr": -1.0}, "lr"), ({"ckpt_every": 0}, "ckpt_every"), ({"device": "tpu"}, "device")):
            with pytest.raises(ConfigError, match=rf"^{cls.__name__}\.{field}: expected"):
                cls(**bad)


def test_every_train_field_is_a_flag_of_its_own_type():
    args = build_parser().parse_args([
        "train", "--qk-norm", "--layer-scale", "0.1", "--time-shift", "8", "--no-augment-while-shrinking",
        "--prune-method", "topk", "--keep-rate", "0.6", "--drop-loc", "2,5", "--eval-batch-size", "64"])
    given = {name: getattr(args, name) for name in args.field_flags if getattr(args, name) is not None}
    assert given == {"qk_norm": True, "layer_scale": 0.1, "time_shift": 8, "augment_while_shrinking": False,
                     "prune_method": "topk", "keep_rate": 0.6, "drop_loc": (2, 5), "eval_batch_size": 64}
    cfg = TrainConfig(**given)
    assert cfg.drop_loc == (2, 5) and cfg.layer_scale == 0.1
    flagged = set(args.field_flags) | {"dataset", "on_error", "init", "protocol", "prune_options"}
    assert flagged == {f.name for f in dataclasses.fields(TrainConfig)}   # no field left without a way to set it


def test_a_bad_flag_value_is_refused_naming_the_flag(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--prune-method", "bogus"])
    assert "--prune-method" in capsys.readouterr().err
