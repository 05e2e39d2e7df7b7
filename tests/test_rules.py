"""rules.py: every check names its parameter on bad input and passes good input; the module, and every `--help`
of the command line built from it, imports no torch; the model factory re-exports rules' own objects."""
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tprune_core import rules
from tprune_core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


GOOD = [
    (rules.check_family, ("ast",)), (rules.check_family, ("audiomae",)),
    (rules.check_size, ("tiny",)), (rules.check_size, ("base",)),
    (rules.check_patch_multiple, ("frames", 16)), (rules.check_patch_multiple, ("mel", 128)),
    (rules.check_method, ("topk",)), (rules.check_method, ("adaptive",)),
    (rules.check_keep_rate, (1.0,)), (rules.check_keep_rate, (0.01,)), (rules.check_keep_rate, ("0.5",)),
    (rules.check_drop_loc, ((3, 6, 9), 12)), (rules.check_drop_loc, ([0, 11], 12)),
    (rules.check_options, ("random", {"seed": 3})), (rules.check_options, ("adaptive", {"mass": 1.0})),
    (rules.check_options, ("topk", {})),
    (rules.check_pruning, ("intensity_range", 0.5, (3,), 4, {"lo": 0.1})), (rules.check_pruning, ("tome", 1, [1], 2)),
    (rules.check_positive_int, ("batch", 1)),
    (rules.check_precision, ("bf16",)),
    (rules.check_device_name, ("auto",)), (rules.check_device_name, ("cpu",)), (rules.check_device_name, ("cuda:1",)),
    (rules.check_one_of, ("dtype", rules.BENCH_DTYPES, "fp16")),
    (rules.check_model, ("ast", "small", 96, 64)),
]

BAD = [
    (rules.check_family, ("vit",), "family"),
    (rules.check_size, ("huge",), "size"),
    (rules.check_patch_multiple, ("frames", 100), "frames"),
    (rules.check_patch_multiple, ("mel", 0), "mel"),
    (rules.check_patch_multiple, ("mel", 64.0), "mel"),
    (rules.check_patch_multiple, ("frames", True), "frames"),
    (rules.check_method, ("prune",), "method"),
    (rules.check_keep_rate, (0.0,), "keep_rate"),
    (rules.check_keep_rate, (1.5,), "keep_rate"),
    (rules.check_keep_rate, (math.nan,), "keep_rate"),
    (rules.check_keep_rate, ("half",), "keep_rate"),
    (rules.check_keep_rate, (None,), "keep_rate"),
    (rules.check_drop_loc, ((3, 12), 12), "drop_loc"),
    (rules.check_drop_loc, ((6, 6), 12), "drop_loc"),
    (rules.check_drop_loc, ((), 12), "drop_loc"),
    (rules.check_drop_loc, ((1.5,), 12), "drop_loc"),
    (rules.check_options, ("topk", {"seed": 1}), "topk: unknown option"),
    (rules.check_options, ("adaptive", {"mass": 0.0}), "adaptive: mass"),
    (rules.check_pruning, ("topk", 0.5, (4,), 4), "drop_loc"),
    (rules.check_pruning, ("topk", 2.0, (1,), 4), "keep_rate"),
    (rules.check_pruning, ("nope", 0.5, (1,), 4), "method"),
    (rules.check_positive_int, ("batch", 0), "batch"),
    (rules.check_positive_int, ("threads", 2.0), "threads"),
    (rules.check_positive_int, ("num_classes", True), "num_classes"),
    (rules.check_precision, ("fp16",), "precision"),
    (rules.check_device_name, ("gpu",), "device"),
    (rules.check_device_name, ("cuda:x",), "device"),
    (rules.check_one_of, ("linear", rules.LINEARS, "mkl"), "linear"),
    (rules.check_model, ("ast", "tiny", 64, 120), "mel"),
    (rules.depth_of, ("large",), "size"),
]


@pytest.mark.parametrize("check, args", GOOD, ids=lambda v: getattr(v, "__name__", None))
def test_good_input_passes(check, args):
    assert check(*args) is None


@pytest.mark.parametrize("check, args, name", BAD, ids=lambda v: getattr(v, "__name__", None))
def test_bad_input_names_the_parameter(check, args, name):
    with pytest.raises(ConfigError) as err:
        check(*args)
    assert str(err.value).startswith(name)


def test_lists_agree_with_each_other():
    assert rules.FIXED_BUDGET == tuple(m for m in rules.METHODS if m not in rules.PER_CLIP)
    assert rules.SCORED | rules.PER_CLIP | rules.PATCH_STAT <= set(rules.METHODS) and set(rules.OPTIONS) <= set(
        rules.METHODS)
    assert rules.DATA_SPLITS == rules.SPLITS + ("all",)
    assert rules.depth_of("tiny") == rules.SIZES["tiny"][1] and rules.MAX_DEPTH == 12


def test_models_re_exports_the_rules_objects():
    from tprune_core import datasets, models
    assert models.FAMILIES is rules.FAMILIES and models.SIZES is rules.SIZES and models.PATCH is rules.PATCH
    assert datasets.SPLITS is rules.DATA_SPLITS


def test_rules_import_no_torch():
    out = run_python("import sys; import tprune_core.rules; "
                     "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


HELPS = [[], ["data"], ["data", "list"], ["data", "check"], ["data", "fetch"], ["data", "featurize"], ["macs"],
         ["train"], ["eval"], ["zoo"], ["bench"], ["run"], ["book"]]


def test_every_help_imports_no_torch():
    # One process: after each `--help` (argparse exits), name the first command whose help imported torch.
    code = f"""
import contextlib, io, sys
from tprune_core.cli import main
for argv in {HELPS!r}:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main(argv + ["--help"])
        except SystemExit as exc:
            assert exc.code == 0, (argv, exc.code)
    assert "usage: tprune" in out.getvalue(), argv
    assert "torch" not in sys.modules, f"tprune {{' '.join(argv)}} --help imported torch"
print("ok")
"""
    out = run_python(code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


CHOICES = [  # (command, option, the rules list it must offer)
    (["macs"], "--family", rules.FAMILIES), (["macs"], "--size", tuple(rules.SIZES)),
    (["macs"], "--method", rules.FIXED_BUDGET),
    (["bench"], "--family", rules.FAMILIES), (["bench"], "--size", tuple(rules.SIZES)),
    (["bench"], "--device", rules.BENCH_DEVICES), (["bench"], "--dtype", rules.BENCH_DTYPES),
    (["bench"], "--linear", rules.LINEARS), (["bench"], "--compile", rules.BENCH_COMPILE),
    (["train"], "--family", rules.FAMILIES), (["train"], "--size", tuple(rules.SIZES)),
    (["train"], "--profile", rules.ZOO_PROFILES), (["train"], "--precision", rules.PRECISIONS),
    (["eval"], "--split", rules.SPLITS), (["zoo"], "--profile", rules.ZOO_PROFILES),
    (["data", "featurize"], "--split", rules.DATA_SPLITS), (["data", "featurize"], "--on-error", rules.ON_ERROR),
]


@pytest.mark.parametrize("command, option, allowed", CHOICES, ids=lambda v: v if isinstance(v, str) else None)
def test_cli_choices_are_the_rules(command, option, allowed):
    from tprune_core.cli import build_parser
    parser = build_parser()
    for name in command:   # down the sub-command tree
        parser = next(a for a in parser._actions if a.choices and name in a.choices).choices[name]
    action = next(a for a in parser._actions if option in a.option_strings)
    assert tuple(action.choices) == tuple(allowed)


def _policy_in_fresh_process(env_policy, choice):
    """(returned policy, OMP_WAIT_POLICY afterwards) of apply_omp_wait in a Python that has not loaded torch."""
    import os
    code = ("import os, sys; from tprune_core.rules import apply_omp_wait; assert 'torch' not in sys.modules; "
            f"r = apply_omp_wait({choice!r}); print(r, os.environ.get('OMP_WAIT_POLICY', 'unset'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy:
        env["OMP_WAIT_POLICY"] = env_policy
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    return tuple(out)


def test_omp_wait_is_set_before_torch_loads():
    assert _policy_in_fresh_process(None, None) == ("active", "ACTIVE")          # the timing default
    assert _policy_in_fresh_process("PASSIVE", None) == ("passive", "PASSIVE")   # a user's export wins
    assert _policy_in_fresh_process("PASSIVE", "active") == ("active", "ACTIVE")  # an explicit choice wins
    assert _policy_in_fresh_process("ACTIVE", "default") == ("default", "unset")  # libgomp's own


def test_omp_wait_refuses_what_it_cannot_change(monkeypatch):
    import torch  # noqa: F401  (loaded: libgomp has read its policy)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert rules.apply_omp_wait(None) == "passive" and rules.apply_omp_wait("passive") == "passive"
    with pytest.raises(ConfigError, match="omp_wait.*already loaded.*'active'"):
        rules.apply_omp_wait("active")
    monkeypatch.delenv("OMP_WAIT_POLICY")
    assert rules.apply_omp_wait(None) == "default"
    with pytest.raises(ConfigError, match="omp_wait: expected one of"):
        rules.apply_omp_wait("spin")


def test_one_drop_location_parser_for_every_command():
    from tprune_core.cli import build_parser
    assert rules.parse_drop_loc("9,3,6") == (3, 6, 9) == rules.parse_drop_loc("3 6 9")
    for bad in ("3,x", "3,3", "3,12", ""):
        with pytest.raises(ConfigError, match="drop_loc"):
            rules.parse_drop_loc(bad)
    with pytest.raises(ConfigError, match=r"0\.\.5"):
        rules.parse_drop_loc("3,6", depth=6)
    parser = build_parser()
    for argv in (["macs", "--family", "ast", "--size", "tiny", "--frames", "64", "--keep-rate", "0.5"],
                 ["bench", "--family", "ast", "--frames", "64", "--keep-rate", "0.5"]):
        assert parser.parse_args(argv + ["--drop-loc", "6,2"]).drop_loc == (2, 6)
        assert parser.parse_args(argv).drop_loc == rules.DEFAULT_DROP_LOC
