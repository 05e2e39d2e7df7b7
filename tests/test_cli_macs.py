"""`tprune macs`: the paper's figures from the command line, the JSON contract, the table, and option errors."""
import json

import pytest

from tprune_core import rules
from tprune_core.cli import main
from tprune_core.macs import count_macs
from tprune_core.models import SIZES, create_model


def run_json(capsys, *args):
    assert main(["macs", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("frames, gmacs, tokens", [("128", 2.81, [65] * 4 + [33] * 3 + [17] * 3 + [9] * 2),
                                                   ("512", 11.36, [257] * 4 + [129] * 3 + [65] * 3 + [33] * 2)])
def test_paper_figures(capsys, frames, gmacs, tokens):
    out = run_json(capsys, "--family", "audiomae", "--size", "base", "--frames", frames, "--keep-rate", "0.5")
    assert f"{out['gmacs']:.2f}" == f"{gmacs:.2f}"
    assert out["tokens_per_block"] == tokens
    assert len(out["gmacs_per_block"]) == 12
    parts = out["parts"]
    assert abs(sum(out["gmacs_per_block"]) + parts["patch_embed"] + parts["head"] - out["gmacs"]) < 1e-9
    assert abs(sum(parts.values()) - out["gmacs"]) < 1e-9 and parts["mlp"] > parts["qkv"] > 0
    assert (out["family"], out["size"], out["frames"], out["mel"]) == ("audiomae", "base", int(frames), 128)
    assert (out["keep_rate"], out["drop_loc"], out["method"], out["num_classes"]) == (0.5, [3, 6, 9], "topk", 527)


def test_options_reach_the_count(capsys):
    out = run_json(capsys, "--family", "ast", "--size", "small", "--frames", "96", "--mel", "64",
                   "--keep-rate", "0.3", "--drop-loc", "9,2", "--method", "tome", "--num-classes", "35")
    want = count_macs("ast", "small", 96, 0.3, (2, 9), "tome", mel=64, num_classes=35)
    assert out["macs"] == want["macs"] and out["tokens_per_block"] == want["tokens_per_block"]
    assert out["drop_loc"] == [2, 9] and out["parts"]["drop"] > 0
    unpruned = run_json(capsys, "--family", "ast", "--size", "small", "--frames", "96", "--mel", "64")
    assert unpruned["macs"] == count_macs("ast", "small", 96, mel=64)["macs"] > out["macs"]
    assert set(unpruned["tokens_per_block"]) == {2 + 6 * 4}


def test_table(capsys):
    assert main(["macs", "--family", "audiomae", "--size", "base", "--frames", "128", "--keep-rate", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "total 2.81 GMACs" in text and "keep rate 0.5 at blocks 3,6,9" in text
    rows = [line.split() for line in text.splitlines() if line.strip()[:2].strip().isdigit()]
    assert [int(r[1]) for r in rows[:12]] == [65] * 4 + [33] * 3 + [17] * 3 + [9] * 2
    assert "mlp" in text and "qkv" in text


@pytest.mark.parametrize("args, option", [
    (["--frames", "100"], "--frames"),
    (["--frames", "abc"], "--frames"),
    (["--mel", "0"], "--mel"),
    (["--keep-rate", "1.5"], "--keep-rate"),
    (["--keep-rate", "0"], "--keep-rate"),
    (["--drop-loc", "3,12"], "--drop-loc"),
    (["--drop-loc", "3,x"], "--drop-loc"),
    (["--drop-loc", "6,6"], "--drop-loc"),
    (["--method", "adaptive"], "--method"),
    (["--num-classes", "0"], "--num-classes"),
    (["--size", "huge"], "--size"),
    (["--family", "vit"], "--family"),
])
def test_bad_options(capsys, args, option):
    base = {"--family": "audiomae", "--size": "base", "--frames": "128"}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    argv = ["macs"] + [s for kv in base.items() for s in kv]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


@pytest.mark.parametrize("size", list(SIZES))
def test_rules_describe_the_models_built(size):
    # the CLI reads its choices and drop-block range from rules.py (test_rules); they must be what is built
    dim, depth, heads = SIZES[size]
    model = create_model("ast", size, 16, 2, mel=16)
    assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (dim, depth, heads)
    assert depth <= rules.MAX_DEPTH

