"""One record per pruning method: a method registered in one place reaches the CLI, the MAC count and evaluation.

The toy method below is registered only in this file (the ``toy_method`` fixture) and never named anywhere in the
package; every test that uses it checks that a consumer of the method lists picks it up from the record.
"""
import pytest
import torch

from conftest import toy_set
from tprune_core import macs, pruning, rules
from tprune_core.errors import ConfigError
from tprune_core.evaluation import evaluate
from tprune_core.models import create_model
from tprune_core.rules import PruningMethod
from test_rules import run_python

TOY = "keep_first"
DIM = rules.SIZES["tiny"][0]


def keep_first(st, block, x, scores):
    """Keep the patch tokens earliest in the clip (latest with ``from_end=True``): a rank by original position."""
    rank = st.positions if st.options.get("from_end") else -st.positions
    return pruning.keep_highest(st, x, rank)


def keep_first_macs(d, n_patch_in, removed, fused_before):
    return removed * d.dim   # pretend the drop reads each removed token once: a cost the count must include


def _check_from_end(options):
    if not isinstance(options.get("from_end", False), bool):
        raise ConfigError(f"{TOY}: from_end must be True or False, got {options['from_end']!r}")


@pytest.fixture
def toy_method():
    record = rules.register_method(PruningMethod(TOY, keep_first, keep_first_macs, options={"from_end"},
                                                 check_options=_check_from_end))
    try:
        yield record
    finally:
        rules.unregister_method(TOY)


def _choices(argv, option):
    from tprune_core.cli import build_parser
    parser = build_parser()
    for name in argv:   # down the sub-command tree
        parser = next(a for a in parser._actions if a.choices and name in a.choices).choices[name]
    return tuple(next(a for a in parser._actions if option in a.option_strings).choices)


def test_a_registered_method_is_in_every_list_and_cli_choice(toy_method):
    assert rules.METHODS[-1] == TOY and pruning.METHODS[-1] == TOY and TOY in rules.FIXED_BUDGET
    assert TOY in rules.OPTIONS and TOY not in rules.SCORED | rules.PER_CLIP | rules.PATCH_STAT
    assert _choices(["eval"], "--method") == (*rules.METHODS, "none")
    assert TOY in _choices(["macs"], "--method")


def test_unregistering_removes_it_again(toy_method):
    rules.unregister_method(TOY)
    try:
        assert TOY not in rules.METHODS and TOY not in _choices(["eval"], "--method")
        with pytest.raises(ConfigError, match="^method: expected one of"):
            rules.check_method(TOY)
    finally:
        rules.register_method(toy_method)   # the fixture removes it once more


def test_count_macs_uses_the_records_extra_macs(toy_method):
    toy = macs.count_macs("ast", "tiny", 64, 0.5, (3, 6, 9), method=TOY)
    topk = macs.count_macs("ast", "tiny", 64, 0.5, (3, 6, 9), method="topk")
    # 32 patch tokens -> 16 -> 8 -> 4: the same schedule as topk, plus the toy's cost of 28 removed tokens
    assert toy["tokens_per_block"] == topk["tokens_per_block"]
    assert toy["macs"] - topk["macs"] == (16 + 8 + 4) * DIM


def test_evaluate_applies_the_method_and_counts_its_macs(toy_method):
    torch.manual_seed(0)
    model = create_model("ast", "tiny", 32, 3)
    fs = toy_set(6, seed=0, frames=32)
    out = evaluate(model, fs, TOY, 0.5, (3, 6, 9), batch_size=4)
    assert out["method"] == TOY and out["n_clips"] == 6 and not pruning.is_pruned(model)
    want = macs.count_macs("ast", "tiny", 32, 0.5, (3, 6, 9), method=TOY, num_classes=3)
    assert out["gmacs_per_clip"] == pytest.approx(want["gmacs"])
    assert out["tokens_per_block"] == want["tokens_per_block"]
    for from_end, first in ((False, 0), (True, 14)):   # 16 patches -> 8 -> 4 -> 2 survive
        pruning.apply_pruning(model, TOY, 0.5, (3, 6, 9), from_end=from_end)
        with torch.no_grad():
            model(fs.x[:2])
        assert pruning.last_forward(model).kept(1).tolist() == [first, first + 1]


def test_the_records_option_checks_apply(toy_method):
    model = create_model("ast", "tiny", 32, 3)
    with pytest.raises(ConfigError, match=f"^{TOY}: from_end must be"):
        pruning.apply_pruning(model, TOY, 0.5, from_end="yes")
    with pytest.raises(ConfigError, match=rf"^{TOY}: unknown option\(s\) \['mass'\]; expected \['from_end'\]"):
        pruning.apply_pruning(model, TOY, 0.5, mass=0.9)


def test_registration_refuses_a_taken_or_reserved_name_and_an_unknown_statistic():
    for record, message in [(PruningMethod("topk", keep_first), "already registered"),
                            (PruningMethod("none", keep_first), "reserved"),
                            (PruningMethod("toy2", keep_first, patch_stat="max"), "patch_stat"),
                            (PruningMethod("toy2", None), "select function")]:
        with pytest.raises(ConfigError, match=message):
            rules.register_method(record)
    assert "none" not in rules.METHODS and "toy2" not in rules.METHODS


def test_every_built_in_record_names_functions_that_exist():
    """The records name their torch code as "module:function": a moved or renamed function fails here."""
    for record in rules.registered_methods():
        assert callable(rules.load_function(record.select)), record.name
        assert record.extra_macs is None or callable(rules.load_function(record.extra_macs)), record.name


def test_a_method_registered_by_name_reaches_the_cli_without_importing_torch():
    # In a fresh process: a record whose functions are named lazily costs the CLI no torch import.
    code = f"""
import contextlib, io, sys
from tprune_core import rules
from tprune_core.cli import build_parser, main
rules.register_method(rules.PruningMethod("{TOY}", "toy_module:select", "toy_module:extra_macs"))
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        main(["eval", "--help"])
    except SystemExit:
        pass
assert "{TOY}" in out.getvalue(), out.getvalue()
assert "torch" not in sys.modules, "torch imported"
print("ok")
"""
    out = run_python(code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_plots_colour_every_built_in_method():
    from tprune_core import plots   # seaborn comes with the book extra, which `make test` installs
    assert set(rules.METHODS) <= set(plots.METHOD_COLORS)
    assert len({plots.METHOD_COLORS[m] for m in rules.METHODS}) == len(rules.METHODS)   # one colour each
