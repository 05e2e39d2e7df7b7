"""`tprune study PATH` (issue 29, deliverable 1): a study of a folder of your own audio as the zoo profile
study-<name>, its models fine-tuned from the repository's release (zoo/full), checked before training, resumable,
and the chapters that make sense for one dataset executed on it. On a tiny generated folder (4 classes x 6
speakers x 2 clips of 0.3 s: 32 frames); the end-to-end study trains 12 one-epoch runs and executes two chapters at
the smoke settings."""
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO
from tprune_core import release, results, study, zoo
from tprune_core.cli import main
from tprune_core.errors import ConfigError
from tprune_core.training import build

CLASSES = ("owl", "wren", "crow", "lark")
TINY = {"dataset": {"epochs": 1}, "seeds": [0, 1],
        "prune": {"methods": ["topk"], "epochs": 1, "prune_hold_epochs": 0.25, "prune_shrink_epochs": 0.5}}


def make_calls(root: Path, name="calls", broken=False) -> Path:
    """<root>/<name>/clips/*.wav + metadata.csv (file,label,split,group): per class, speakers s0-s3 train, s4 val,
    s5 test, two 0.3 s clips each (a class's tone, shifted per speaker, on noise). ``broken``: a 0-byte test file."""
    folder = root / name
    (folder / "clips").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["file,label,split,group"]
    t = np.arange(4800) / 16000
    for ci, label in enumerate(CLASSES):
        for s in range(6):
            for k in range(2):
                rel = f"clips/{label}-s{s}-{k}.wav"
                wave = 0.3 * np.sin(2 * np.pi * (300 + 500 * ci + 20 * s) * t) + 0.02 * rng.standard_normal(len(t))
                sf.write(str(folder / rel), wave.astype("float32"), 16000)
                rows.append(f"{rel},{label},{_split(s)},s{s}")
    if broken:
        (folder / "clips" / "broken.wav").write_bytes(b"")
        rows.append("clips/broken.wav,owl,test,s5")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    return folder


def _split(speaker: int) -> str:
    return "train" if speaker < 4 else "val" if speaker == 4 else "test"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------------------------------------- spec and plan

def test_the_spec_plans_both_families_three_seeds_from_the_release_and_no_mae(tmp_cache, tmp_path):
    folder = make_calls(tmp_path)
    spec = study.prepare(study.make_spec(folder))
    assert spec["name"] == "calls" and spec["profile"] == "study-calls" and zoo.study_path("calls").is_file()
    assert spec["survey"]["clips"] == {"train": 32, "val": 8, "test": 8} and spec["survey"]["frames"] == 32
    assert spec["fingerprint"] and spec["folder"] == str(folder.resolve())
    plan = zoo.zoo_plan("study-calls")
    assert Counter(r for r, _ in plan) == {"base": 6, "prune": 18, "control": 6}     # no MAE role
    base = {(c.family, c.seed): c for r, c in plan if r == "base"}
    assert set(base) == {(f, s) for f in ("ast", "audiomae") for s in (0, 1, 2)}
    records = release.released("full")
    mae = next(h for h, r in records.items() if r["role"] == "mae")
    for (family, seed), cfg in base.items():
        assert cfg.dataset == str(folder.resolve()) and cfg.epochs == study.MAX_EPOCHS   # CLIP_EPOCHS / 32 clips, capped
        kind, parent = cfg.init.split(":")
        if family == "audiomae":
            assert (kind, parent) == ("mae", mae)
        else:   # a released AST-style classifier: its own seed where the release has it
            r = records[parent]
            assert kind == "transfer" and (r["role"], r["family"]) == ("base", "ast")
            seeds = {x["seed"] for x in records.values() if x["role"] == "base" and x["dataset"] == r["dataset"]
                     and x["family"] == "ast"}
            assert r["seed"] == seed or seed not in seeds
            assert cfg.layer_scale == r["config"]["layer_scale"]   # the released weights' blocks
    keep = spec["zoo"]["datasets"]["calls"]["prune_keep_rates"][0]
    for role, cfg in plan:
        if role != "base":
            assert cfg.init == "run:" + base[cfg.family, cfg.seed].hash() and cfg.epochs == 2
            assert cfg.keep_rate == (1.0 if role == "control" else keep)
    entries = zoo.zoo_entries("study-calls", require=False)
    assert {e["dataset"] for e in entries} == {"calls"} and "ast/calls/base/s0" in {e["name"] for e in entries}
    assert zoo.ZOO["study-calls"]["prune"]["methods"] == ["topk", "random", "mean"]   # as the chapter reads it
    zoo.check_selection("study-calls", datasets=["calls"])


def test_the_estimate_counts_clip_epochs_and_is_printed_before_training(tmp_cache, tmp_path, capsys, monkeypatch):
    folder = make_calls(tmp_path)
    spec = study.prepare(study.make_spec(folder))
    plan = zoo.zoo_plan(spec["profile"])
    with monkeypatch.context() as m:
        m.setattr(study, "clip_epoch_cost", lambda profile: (lambda tokens: 0.01, "basis"))
        est = study.estimate(spec, plan, 2, ["pruning-tradeoffs"])
    fractions = {}
    for role, cfg in plan:
        fractions.setdefault(role, set()).add(round(study.mac_fraction(cfg), 2))
    assert fractions["base"] == fractions["control"] == {1.0} and all(0.6 < f < 0.9 for f in fractions["prune"])
    assert est["worker"] == pytest.approx(sum(c.epochs * 32 * 0.01 * study.mac_fraction(c) for _, c in plan))
    assert est["worker"] < (6 * study.MAX_EPOCHS + 24 * 2) * 32 * 0.01
    assert est["train"] == pytest.approx(est["worker"] / 2) and est["chapters"] > study.CHAPTER_OVERHEAD
    cost, basis = study.clip_epoch_cost("full")     # fitted to the release's own training records
    assert 0.001 < cost(48) < 0.1 and cost(200) > cost(48) and "release's" in basis

    class Stop(Exception):
        pass
    seen = {}

    def no_training(spec, *args, **kwargs):
        seen["err"] = capsys.readouterr().err
        raise Stop
    monkeypatch.setattr(study, "train", no_training)
    with pytest.raises(Stop):
        study.run_study(folder, chapters=[], progress=False)
    assert "30 to train" in seen["err"] and "estimate: training" in seen["err"] and "basis: " in seen["err"]
    assert "no MAE is trained" in seen["err"] and "not run: speech-vs-general" in seen["err"]


def test_names_options_and_chapters_are_checked(tmp_cache, tmp_path):
    folder = make_calls(tmp_path)
    with pytest.raises(ConfigError, match="built-in dataset"):
        study.make_spec(folder, name="speechcommands")
    with pytest.raises(ConfigError, match="--name 'a b'"):
        study.make_spec(folder, name="a b")
    with pytest.raises(ConfigError, match="speech-vs-general: not run on a study: compares a speech"):
        study.check_chapters(["speech-vs-general"])
    with pytest.raises(ConfigError, match="--recipe: unknown key"):
        study.make_spec(folder, overrides={"epochs": 3})
    study.prepare(study.make_spec(folder))
    other = make_calls(tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="study 'calls' is of .*another --name"):
        study.prepare(study.make_spec(other))


# ---------------------------------------------------------------------------------------------- fail early

def test_a_0_byte_test_file_fails_before_training_naming_it(tmp_cache, tmp_path, capsys):
    folder = make_calls(tmp_path, broken=True)
    broken = folder / "clips" / "broken.wav"
    code, out, err = run(capsys, "study", folder, "--chapters")
    assert code == 2 and f"tprune: error: {broken}: empty file (0 bytes)" in err
    assert "(test split, read before training: nothing was trained" in err and "--on-error skip" in err
    assert err.index("estimate: training") < err.index("tprune: error:")   # the plan came first
    assert not list(tmp_cache.glob("zoo/*/state.pt")) and not list(tmp_cache.glob("zoo/*/train.json"))
    code, out, err = run(capsys, "study", folder, "--on-error", "skip", "--dry-run")
    assert code == 0 and f"{broken} (test): empty file (0 bytes)" in err and "nothing trained" in err
    [skipped] = zoo.read_study("calls")["skipped"]
    assert (skipped["file"], skipped["split"]) == (str(broken), "test")
    assert skipped["reason"].startswith("empty file (0 bytes)")


# ---------------------------------------------------------------------------------------------- missing models

def test_a_chapter_on_a_study_without_models_says_what_to_run(tmp_cache, tmp_path, capsys):
    folder = make_calls(tmp_path)
    assert run(capsys, "study", folder, "--dry-run")[0] == 0
    code, out, err = run(capsys, "run", "what-attention-sees", "-p", "zoo_profile", "study-calls",
                         "-p", "datasets", '["calls"]')
    assert code == 2 and "models not built" in err and f"run `tprune study {folder.resolve()} --name calls`" in err
    code, out, err = run(capsys, "run", "pruning-tradeoffs", "-p", "datasets", '["calls"]')
    assert code == 2 and "a study of it exists: pass -p zoo_profile study-calls" in err
    code, out, err = run(capsys, "run", "pruning-tradeoffs", "-p", "zoo_profile", "study-nope")
    assert code == 2 and "no study of that name" in err and "`tprune study PATH --name nope`" in err
    code, out, err = run(capsys, "run", "pruning-tradeoffs", "-p", "datasets", '["/data/digits"]')
    assert code == 2 and "run `tprune study PATH`" in err
    assert "Traceback" not in err and not list((REPO / "book" / "reruns").glob("*study-calls*"))


# ---------------------------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    """One tiny study, trained (2 jobs) and its two chapters executed at the smoke settings into a copy of the book;
    the folder holds a 0-byte test file, left out with --on-error skip."""
    tmp = tmp_path_factory.mktemp("study")
    mp = pytest.MonkeyPatch()
    mp.setenv("TPRUNE_CACHE", str(tmp / "cache"))
    mp.setattr(results, "code_version", lambda: "test-version")   # a commit meanwhile must not re-execute chapters
    root = tmp / "book-root"
    (root / "book").mkdir(parents=True)
    for name in ("pruning-tradeoffs", "what-attention-sees", "intro"):
        shutil.copy(REPO / "book" / f"{name}.md", root / "book")
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n- file: book/pruning-tradeoffs\n"
                                   "- file: book/what-attention-sees\n")
    folder = make_calls(tmp, broken=True)
    args = [folder, "--on-error", "skip", "--profile", "smoke", "--root", root, "--recipe", json.dumps(TINY)]
    code = main([str(a) for a in ["study", *args]])
    yield {"code": code, "root": root, "folder": folder, "cache": tmp / "cache", "args": args}
    mp.undo()


@pytest.mark.slow
def test_a_tiny_study_trains_and_runs_its_chapters(studied):
    assert studied["code"] == 0
    entries = zoo.zoo_entries("study-calls")
    assert Counter(e["role"] for e in entries) == {"base": 4, "prune": 4, "control": 4}
    for e in entries:
        run = json.loads(Path(e["run_dir"], "train.json").read_text())
        assert [s["file"] for s in run["skipped"]] == [str(studied["folder"] / "clips" / "broken.wav")]
    for chapter in ("pruning-tradeoffs", "what-attention-sees"):
        nb = json.loads((studied["root"] / "book" / "reruns" / f"{chapter}-study-calls.ipynb").read_text())
        assert nb["metadata"]["tprune_rerun"]["params"] == {"datasets": ["calls"], "zoo_profile": "study-calls"}
        outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o["output_type"] == "error"]
    assert list((studied["root"] / "book" / "reruns" / "pruning-tradeoffs-study-calls.results").rglob("*verdict*"))


@pytest.mark.slow
def test_a_rerun_continues_and_trains_nothing_finished(studied, capsys, monkeypatch):
    monkeypatch.setenv("TPRUNE_CACHE", str(studied["cache"]))
    spec = zoo.read_study("calls")
    victim = next(c for r, c in zoo.zoo_plan(spec["profile"]) if r == "control")
    for name in ("train.json", "test.json", "best.pt"):    # as if killed before it finished
        (zoo.zoo_root() / victim.hash() / name).unlink()
    overrides = json.loads(studied["args"][-1])
    out = study.run_study(studied["folder"], on_error="skip", overrides=overrides, chapters=[], progress=False)
    assert out["trained"] == 1 and all(e["trained"] for e in out["entries"])

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")
    monkeypatch.setattr(build, "_train_one", no_training)
    out = study.run_study(studied["folder"], on_error="skip", overrides=overrides, jobs=1, book_profile="smoke",
                          root=studied["root"], chapters=["what-attention-sees"], progress=False)
    assert out["trained"] == 0 and "is current" in capsys.readouterr().err


def test_study_help_imports_no_torch_and_names_the_default_chapters():
    import subprocess
    import sys
    from tprune_core.cli import study as cli_study
    code = ("import contextlib, io, sys; from tprune_core.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try: main(['study', '--help'])\n"
            "    except SystemExit as exc: assert exc.code == 0\n"
            "assert 'usage: tprune study' in out.getvalue() and 'torch' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "ok", out.stderr
    assert cli_study.DEFAULT_CHAPTERS == tuple(study.CHAPTERS)
