"""Supervised training: config, keep-rate schedule, resumability after SIGKILL and the test-split discipline.

Everything runs on small in-memory tensor datasets (no audio): 12-block ViT-tiny on 32-frame inputs (16 patches).
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import Interrupted, stop_at, toy_set
from tprune_core import train as T
from tprune_core.training import build
from tprune_core.errors import CheckpointError, ConfigError
from tprune_core.evaluation import evaluate
from tprune_core.models import create_model
from tprune_core.runtime import run_dir_for

REPO = Path(__file__).resolve().parents[1]


def tiny_cfg(**kw):
    base = dict(family="ast", frames=32, data_frames=48, epochs=2, batch_size=8, lr=3e-4, warmup_epochs=0.5,
                threads=1, progress=False, drop_path=0.0, freq_mask=0, time_mask=0, label_smoothing=0.0)
    base.update(kw)
    return T.TrainConfig(**base)


# ------------------------------------------------------------------------------------------- schedules

def test_keep_rate_schedule_start_middle_end():
    total, hold, shrink, target = 100, 20, 40, 0.5
    ks = [T.keep_rate_schedule(s, total, target, hold, shrink) for s in range(total + 1)]
    assert ks[0] == 1.0 and ks[hold - 1] == 1.0            # held at 1.0
    assert ks[hold] == pytest.approx(1.0)                  # the shrink starts at 1.0 ...
    assert ks[hold + shrink // 2] == pytest.approx((1.0 + target) / 2)   # ... half way at the cosine's middle
    assert ks[hold + shrink // 4] == pytest.approx(target + (1 - target) * (1 + 2 ** -0.5) / 2)
    assert ks[hold + shrink] == target and ks[-1] == target           # then fixed
    assert all(a >= b for a, b in zip(ks, ks[1:]))                    # never grows
    assert len(set(ks[hold:hold + shrink])) == shrink                 # changes every iteration, not per epoch


def test_keep_rate_schedule_rejects_bad_input():
    with pytest.raises(ConfigError, match="hold_steps"):
        T.keep_rate_schedule(0, 10, 0.5, 8, 5)
    with pytest.raises(ConfigError, match="target"):
        T.keep_rate_schedule(0, 10, 0.0, 1, 1)
    with pytest.raises(ConfigError, match="step"):
        T.keep_rate_schedule(11, 10, 0.5, 1, 1)


def test_config_hash_ignores_operational_fields_only():
    a = tiny_cfg()
    assert a.hash() == tiny_cfg(threads=2, ckpt_every=7, progress=True, device="cpu").hash()
    assert a.hash() != tiny_cfg(seed=1).hash() and a.hash() != tiny_cfg(lr=2e-3).hash()
    assert T.TrainConfig.from_dict(json.loads(json.dumps(a.to_dict()))).hash() == a.hash()
    with pytest.raises(ConfigError, match="frames"):
        tiny_cfg(frames=40)
    with pytest.raises(ConfigError, match="init"):
        tiny_cfg(init="mae:abc")          # MAE weights only for audiomae
    with pytest.raises(ConfigError, match="unknown"):
        T.TrainConfig.from_dict({"famly": "ast"})


def test_config_hashes_are_pinned(monkeypatch, data_root):
    """Run folders are named by these hashes: moving code must never change them (bump TRAIN_VERSION on purpose).
    Where the extra Speech Commands speakers are found, the default speech protocol pools them, and the pooled
    split's identity enters the hash: a run made on another split is never served."""
    from tprune_core.mae import MAEConfig
    pooled = T.TrainConfig().hash()
    assert pooled == "1df57556cb32" != T.TrainConfig(protocol={"extra": False}).hash()
    assert T.TrainConfig(protocol={"extra": True}).hash() != pooled   # other protocol dict, same split: still new
    monkeypatch.delenv("TPRUNE_DATA")   # no data found: the hash of a run made before pooling existed
    assert T.TrainConfig().hash() == T.config_hash(T.TrainConfig()) == "e035017b03c9"
    assert T.TrainConfig(prune_method="topk", keep_rate=0.5, init="run:abc").hash() == "a146b5970d93"
    assert MAEConfig().hash() == "48cc86e5415c"


def test_old_import_paths_still_work():
    from tprune_core import evaluation, runtime
    from tprune_core.train import (OPERATIONAL, TRAIN_VERSION, adamw, config_hash, evaluate, lr_at, param_groups,
                                   read_json, resolve_device, run_dir_for, training_attention, zoo_root)
    assert evaluate is evaluation.evaluate and read_json is runtime.read_json and zoo_root is runtime.zoo_root
    assert (OPERATIONAL, TRAIN_VERSION, config_hash, lr_at) == (runtime.OPERATIONAL, runtime.TRAIN_VERSION,
                                                                 runtime.config_hash, runtime.lr_at)
    assert (adamw, param_groups, resolve_device, run_dir_for, training_attention) == (
        runtime.adamw, runtime.param_groups, runtime.resolve_device, runtime.run_dir_for, runtime.training_attention)


# ------------------------------------------------------------------------------------------- training

def test_tiny_model_trains_and_loss_falls(tmp_cache):
    cfg = tiny_cfg(epochs=3)
    s = T.fit(cfg, toy_set(64, 0), toy_set(24, 1, split="val"), run_dir_for(cfg))
    losses = [h["train_loss"] for h in s["history"]]
    assert losses[-1] < 0.5 * losses[0], losses
    assert s["val_accuracy"] > 0.8                 # 3 classes: chance is 1/3
    run = run_dir_for(cfg)
    assert {"best.pt", "log.json", "train.json", "config.json"} <= {p.name for p in run.iterdir()}
    assert not (run / "state.pt").exists()         # resume state removed once done
    model, meta = T.load_checkpoint(run)
    assert meta["epoch"] == s["best_epoch"]
    assert evaluate(model, toy_set(24, 1, split="val"))["accuracy"] == pytest.approx(s["val_accuracy"])


def test_pruning_aware_finetune_steps_keep_rate_every_iteration(tmp_cache, monkeypatch):
    from tprune_core import pruning
    calls = []
    real = pruning.set_keep_rate
    monkeypatch.setattr(pruning, "set_keep_rate", lambda m, k: (calls.append(k), real(m, k)))
    cfg = tiny_cfg(prune_method="topk", keep_rate=0.5, epochs=3, prune_hold_epochs=1, prune_shrink_epochs=1,
                   batch_size=16)
    s = T.fit(cfg, toy_set(64, 0), toy_set(24, 1, split="val"), run_dir_for(cfg))
    spe, total = 4, 12
    expected = [T.keep_rate_schedule(i, total, 0.5, spe, spe) for i in range(total)]
    train_calls = [k for i, k in enumerate(calls) if (i + 1) % (spe + 1)]   # every 5th call: validation at target
    assert train_calls == pytest.approx(expected)
    assert calls[spe::spe + 1] == [0.5, 0.5, 0.5]
    assert [h["keep_rate"] for h in s["history"]] == pytest.approx([1.0, expected[2 * spe - 1], 0.5])
    # validation ran at the target keep rate: fewer MACs than the unpruned model
    full = evaluate(create_model("ast", "tiny", 32, 3), toy_set(8, 2))["gmacs_per_clip"]
    assert all(h["val_gmacs"] < full for h in s["history"])


# ------------------------------------------------------------------------------------------- resume after SIGKILL

# Every random augmentation on (crops, SpecAugment, mixup, drop path): their RNG state must survive the kill.
RESUME = dict(epochs=6, ckpt_every=3, batch_size=16, freq_mask=24, time_mask=8, mixup=0.2, drop_path=0.1)
CHILD = textwrap.dedent("""
    import sys, types, torch
    sys.path[:0] = [{repo!r}, {repo!r} + "/tests"]
    from tests.test_train import toy_set, tiny_cfg, RESUME
    from tprune_core import train as T
    cfg = tiny_cfg(**RESUME)
    T.fit(cfg, toy_set(64, 0), toy_set(24, 1, split="val"), sys.argv[1])
""")


def test_resume_after_sigkill_reaches_same_weights(tmp_cache, tmp_path):
    cfg = tiny_cfg(**RESUME)
    # Uninterrupted reference run.
    ref = T.fit(cfg, toy_set(64, 0), toy_set(24, 1, split="val"), tmp_path / "ref")
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=str(REPO)))
    run = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, str(script), str(run)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (run / "state.pt").exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    assert not (run / "train.json").exists(), "the child finished before it was killed"
    state = torch.load(run / "state.pt", weights_only=False)
    assert 0 < state["step"] < 24
    # Rerun the same command: it continues from the checkpoint and ends where the uninterrupted run ended.
    out = subprocess.run([sys.executable, str(script), str(run)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming" in out.stderr
    done = json.loads((run / "train.json").read_text())
    assert done["final_sha256"] == ref["final_sha256"]
    assert [h["train_loss"] for h in done["history"]] == [h["train_loss"] for h in ref["history"]]
    a = torch.load(run / "best.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "ref" / "best.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and a different seed really gives different weights (so the comparison above is not vacuous)
    other = T.fit(tiny_cfg(**dict(RESUME, epochs=1, seed=1)), toy_set(64, 0), toy_set(24, 1, split="val"), tmp_path / "s1")
    first = T.fit(tiny_cfg(**dict(RESUME, epochs=1)), toy_set(64, 0), toy_set(24, 1, split="val"), tmp_path / "s0")
    assert other["final_sha256"] != first["final_sha256"]


def test_pruning_aware_finetune_resumes_mid_epoch_to_the_same_weights(tmp_cache, tmp_path, monkeypatch):
    """``random`` seeds its choices with the pruning forward counter: state.pt keeps it, a resumed run restores it."""
    cfg = tiny_cfg(prune_method="random", keep_rate=0.5, epochs=3, prune_hold_epochs=0.5, prune_shrink_epochs=1,
                   batch_size=16, ckpt_every=3)
    ref = T.fit(cfg, toy_set(64, 0), toy_set(24, 1, split="val"), tmp_path / "ref")
    undo = stop_at(monkeypatch, T.Supervised, 7)
    with pytest.raises(Interrupted):
        T.fit(cfg, toy_set(64, 0), toy_set(24, 1, split="val"), tmp_path / "run")
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=False)
    assert state["step"] == 6 and state["prune_calls"] > 6 and state["best"]["epoch"] == 1
    undo()
    done = T.fit(cfg, toy_set(64, 0), toy_set(24, 1, split="val"), tmp_path / "run")
    assert done["final_sha256"] == ref["final_sha256"]
    assert [h["train_loss"] for h in done["history"]] == [h["train_loss"] for h in ref["history"]]


# ------------------------------------------------------------------------------------------- selection discipline

@pytest.fixture
def fake_features(monkeypatch):
    """Replace the feature cache with in-memory splits and record every split requested: normalized features as
    the split's name, the files-only check of a split (``featurize_split``) as "files:<split>"."""
    from tprune_core import cache
    calls = []

    def load_features(name, split, frames=None, **kw):
        calls.append(split)
        seed = {"train": 0, "val": 1, "test": 2}[split]
        return toy_set({"train": 64, "val": 24, "test": 30}[split], seed, frames=frames, split=split)

    def featurize_split(cfg, split):
        calls.append(f"files:{split}")
        return toy_set({"train": 64, "val": 24, "test": 30}[split], 9, frames=cfg.data_frames or cfg.frames,
                       split=split)

    monkeypatch.setattr(cache, "load_features", load_features)
    monkeypatch.setattr(T, "featurize_split", featurize_split)
    return calls


def test_model_selection_never_reads_test_split(tmp_cache, fake_features, monkeypatch):
    cfg = tiny_cfg(dataset="synthetic", epochs=2)
    seen_by_fit = []
    real_fit = T.fit
    monkeypatch.setattr(T, "fit", lambda c, tr, va, d, **kw: (seen_by_fit.append((tr.split, va.split)),
                                                              real_fit(c, tr, va, d, **kw))[1])
    run = T.train_run(cfg)
    # every split's files are read before training (a bad test file fails early), but only train and val are
    # loaded as features, and fit receives those two alone
    assert fake_features == ["train", "val", "files:test"]
    assert seen_by_fit == [("train", "val")]
    best = torch.load(run / "best.pt", weights_only=False)
    assert best["val"]["split"] == "val"
    # The test split is read once, after training, on the selected checkpoint; the result is cached.
    result = T.test_run(run)
    assert fake_features.count("test") == 1 and result["split"] == "test" and result["n_clips"] == 30
    assert result["epoch"] == best["epoch"]
    assert T.test_run(run) == result and fake_features.count("test") == 1
    # Finding the finished run again loads nothing.
    before = len(fake_features)
    assert T.train_run(cfg) == run and len(fake_features) == before


def test_test_split_refused_before_training_finishes(tmp_cache, fake_features):
    cfg = tiny_cfg(dataset="synthetic")
    run = run_dir_for(cfg)
    run.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="not finished"):
        T.test_run(run)
    assert "test" not in fake_features


def test_fit_has_no_way_to_receive_the_test_split():
    import inspect
    params = inspect.signature(T.fit).parameters
    assert list(params)[:4] == ["cfg", "train_set", "val_set", "run_dir"] and list(params)[4:] == ["record"]
    assert params["record"].kind is inspect.Parameter.KEYWORD_ONLY   # read_splits' file record, for train.json


def test_cli_eval_json_on_a_trained_run(tmp_cache, fake_features, capsys):
    from tprune_core.cli import main
    run = T.train_run(tiny_cfg(dataset="synthetic", epochs=1))
    assert main(["eval", "--checkpoint", str(run), "--method", "topk", "--keep-rate", "0.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "topk" and out["keep_rate"] == 0.5 and out["split"] == "test" and out["n_clips"] == 30
    assert 0 <= out["accuracy"] <= 1 and out["gmacs_per_clip"] > 0
    assert main(["eval", "--checkpoint", run.name, "--method", "none", "--split", "val", "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["method"] is None and full["split"] == "val" and full["gmacs_per_clip"] > out["gmacs_per_clip"]
    assert main(["eval", "--checkpoint", str(run / "nowhere"), "--json"]) == 2     # named error, exit code 2
    assert "nowhere" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- the zoo

def test_full_zoo_plan_matches_the_issue():
    from tprune_core import zoo
    plan = zoo.zoo_plan("full")
    roles = [r for r, _ in plan]
    assert roles.count("mae") == 1 and roles.count("base") == 12 and roles.count("prune") == 36
    assert roles.count("control") == 12   # a keep-rate-1.0 control per fine-tuned parent
    mae = plan[0][1]
    assert {s["dataset"] for s in mae.sources} == {"speechcommands", "urbansound8k"} and mae.mask_ratio == 0.8
    base = [c for r, c in plan if r == "base"]
    groups = {}
    for c in base:
        groups.setdefault((c.family, c.dataset), set()).add(c.seed)
        assert c.keep_rate == 1.0 and c.prune_method is None
        assert c.size == "tiny" and c.mel == 128 and c.frames % 16 == 0          # 12 blocks, 16x16 patches
        if c.family == "audiomae":
            assert c.init == "mae:" + mae.hash()
        elif c.dataset == "urbansound8k":   # AST-style: from the Speech Commands AST-style model of its seed
            source = zoo.base_config("full", "ast", "speechcommands", c.seed)
            assert c.init == "transfer:" + source.hash() and source.init is None
        else:
            assert c.init is None          # AST-style Speech Commands: from scratch
    assert set(groups) == {(f, d) for f in ("ast", "audiomae") for d in ("speechcommands", "urbansound8k")}
    assert all(len(s) >= 3 for s in groups.values())
    assert {c.frames for c in base if c.dataset == "urbansound8k"} == {400}                   # whole 4 s clips
    assert all(c.protocol == {"extra": True} for c in base if c.dataset == "speechcommands")  # pooled speakers
    hashes = {c.hash() for c in base}
    assert len(hashes) == 12
    prune = [c for r, c in plan if r == "prune"]
    for c in prune:
        assert c.prune_method in ("topk", "random", "mean") and c.drop_loc == (3, 6, 9) and c.epochs == 2
        assert c.init.startswith("run:") and c.init[4:] in hashes
        parent = next(b for b in base if b.hash() == c.init[4:])
        assert (parent.family, parent.dataset, parent.frames, parent.seed) == (c.family, c.dataset, c.frames, c.seed)
        # the keep rate nearest a 40% MAC cut of this model (the paper's setting), on a 0.01 grid (ties: same cut)
        best = min(abs(_cut(c, k / 100) - 0.4) for k in range(50, 81))
        assert abs(_cut(c, c.keep_rate) - 0.4) == pytest.approx(best)
        assert c.prune_options == ({"seed": c.seed} if c.prune_method == "random" else {})  # own draw per seed
    # every base model is fine-tuned with each selector (the chapters need >= 3 seeds on every point)
    assert sorted((c.init[4:], c.prune_method) for c in prune) == sorted(
        (h, m) for h in hashes for m in ("topk", "random", "mean"))


def _cut(cfg, keep_rate) -> float:
    from tprune_core.macs import count_macs
    full = count_macs(cfg.family, cfg.size, cfg.frames, 1.0, cfg.drop_loc)["macs"]
    return 1 - count_macs(cfg.family, cfg.size, cfg.frames, keep_rate, cfg.drop_loc)["macs"] / full


def test_zoo_transfer_from_names_another_dataset(monkeypatch):
    from tprune_core import zoo
    spec = zoo._deep_update(zoo.ZOO["full"], {})
    monkeypatch.setitem(zoo.ZOO, "full", spec)
    spec["datasets"]["urbansound8k"]["family_overrides"]["ast"]["transfer_from"] = "urbansound8k"
    with pytest.raises(ConfigError, match=r"urbansound8k.transfer_from='urbansound8k': expected another dataset"):
        zoo.base_config("full", "ast", "urbansound8k", 0)
    spec["datasets"]["urbansound8k"]["family_overrides"]["ast"]["transfer_from"] = "esc50"
    with pytest.raises(ConfigError, match=r"expected another dataset of \['speechcommands', 'urbansound8k'\]"):
        zoo.base_config("full", "ast", "urbansound8k", 1)


def test_zoo_entries_select_roles_and_name_what_is_missing(tmp_cache):
    from tprune_core import zoo
    with pytest.raises(ConfigError, match=r"ast/synthetic/topk-0.5/s0, ast/synthetic/random-0.5/s0"):
        zoo.zoo_entries("smoke", roles=["prune"])
    with pytest.raises(ConfigError, match=r"6 of 6 models not built.*ast/synthetic/base/s0"):
        zoo.zoo_entries("smoke", roles=["base"])
    entries = zoo.zoo_entries("smoke", require=False, roles=["base", "mae"], families=["ast"])
    assert {e["role"] for e in entries} == {"base", "mae"} and {e["family"] for e in entries} == {"ast", "audiomae"}
    assert all(e["family"] == "ast" for e in entries if e["role"] == "base")


@pytest.mark.slow
def test_smoke_zoo_builds_and_is_found_again(tmp_cache, capsys):
    from tprune_core import zoo
    entries = build.build_zoo("smoke", progress=False, jobs=2)   # two one-thread worker processes
    assert "total" in capsys.readouterr().out
    models = [e for e in entries if e["role"] != "mae"]
    assert all(e["trained"] and 0 <= e["test_accuracy"] <= 1 for e in models)
    rows = zoo.summarize(entries)
    assert {(r["family"], r["method"], r["keep_rate"]) for r in rows if r["role"] != "base"} == {
        (f, m, k) for f in ("ast", "audiomae") for m, k in (("topk", 0.5), ("random", 0.5), ("mean", 0.5),
                                                              ("control", 1.0))}
    assert all(r["n_seeds"] == 3 for r in rows)
    # pruned fine-tunes are cheaper, at equal cost whatever selects the tokens
    gm = {(r["family"], r["method"], r["keep_rate"]): r["test_gmacs"] for r in rows}
    assert gm[("ast", "random", 0.5)] == gm[("ast", "topk", 0.5)] < gm[("ast", "control", 1.0)]
    model, meta = zoo.load_zoo_model(models[0])
    assert meta["hash"] == models[0]["hash"]
    # A second build finds everything in the cache: no checkpoint is written again.
    def written(found):
        return {e["checkpoint"]: os.stat(e["checkpoint"]).st_mtime_ns for e in found if e["role"] != "mae"}
    before = written(entries)
    assert len(before) == len(models) and written(build.build_zoo("smoke", progress=False)) == before


def test_a_run_in_training_is_locked_against_a_second_process(tmp_path):
    from tprune_core.loop import RunBusyError, run_lock
    with run_lock(tmp_path / "run"):
        with pytest.raises(RunBusyError, match=r"being trained by another process \(pid \d+\)"):
            with run_lock(tmp_path / "run"):
                pass
    with run_lock(tmp_path / "run"):   # released: the next one gets it
        pass


def test_parallel_zoo_waits_for_parents():
    from tprune_core import zoo
    plan = zoo.zoo_plan("full")
    hashes = {c.hash() for _, c in plan}
    parents = {p for _, c in plan for p in zoo._parents(c)}
    assert parents <= hashes   # every parent is in the plan: the scheduler can always make progress
    mae = next(c for r, c in plan if r == "mae")
    assert {p for r, c in plan if r == "base" and c.family == "audiomae" for p in zoo._parents(c)} == {mae.hash()}
    # a distilled run waits for its teacher as well as for the run it starts from
    student = zoo.base_config("full", "ast", "urbansound8k", 0, teacher="run:abc123")
    assert zoo._parents(student) == [zoo.base_config("full", "ast", "speechcommands", 0).hash(), "abc123"]


def test_a_teacher_needs_a_distillation_weight():
    with pytest.raises(ConfigError, match=r"TrainConfig.distill: expected > 0 when a teacher is given"):
        T.TrainConfig(teacher="run:abc123", distill=0.0)
    assert T.TrainConfig(teacher=None, distill=0.0).distill == 0.0


# ------------------------------------------------------------------------------------------- recipe knobs

def test_time_shift_moves_content_and_fills_with_the_clip_minimum():
    x = torch.arange(2 * 10 * 3, dtype=torch.float32).view(2, 10, 3)
    g = torch.Generator().manual_seed(0)
    out = T.time_shift(x, 4, generator=g)
    assert out.shape == x.shape and not torch.equal(out, x)
    for c in range(2):
        rows = [r for r in range(10) if not torch.equal(out[c, r], x[c].min().expand(3))]
        # the rows that are not filler are one contiguous run of the original rows, in order
        src = [int((x[c] == out[c, r]).all(1).nonzero()) for r in rows]
        assert src == list(range(src[0], src[0] + len(src))) and abs(rows[0] - src[0]) <= 4
    assert torch.equal(T.time_shift(x, 0), x)


def test_class_weights_are_inverse_frequency_with_mean_one_per_clip():
    labels = torch.tensor([0, 0, 0, 1, 2, 2])             # class 3 absent
    w = T.class_weights(labels, 4)
    assert w[3] == 0 and torch.allclose(w[labels].mean(), torch.tensor(1.0))
    assert torch.allclose(w[:3] * torch.tensor([3.0, 1.0, 2.0]), torch.full((3,), 2.0))   # weight x count equal


def test_new_recipe_fields_leave_old_hashes_alone_and_change_them_when_set():
    base = T.TrainConfig(epochs=2)
    assert base.hash() == T.TrainConfig(epochs=2, class_balance=False, time_shift=0).hash()
    hashes = {base.hash(), T.TrainConfig(epochs=2, class_balance=True).hash(),
              T.TrainConfig(epochs=2, time_shift=5).hash(),
              T.TrainConfig(epochs=3, prune_method="topk", keep_rate=0.5, augment_while_shrinking=False).hash(),
              T.TrainConfig(epochs=3, prune_method="topk", keep_rate=0.5).hash()}
    assert len(hashes) == 5
    with pytest.raises(ConfigError, match="time_shift"):
        T.TrainConfig(time_shift=-1)
    with pytest.raises(ConfigError, match="class_balance"):
        T.TrainConfig(class_balance=1)


def test_no_augmentation_while_the_keep_rate_shrinks_when_asked(tmp_cache, monkeypatch):
    """augment_while_shrinking=False: SpecAugment runs in the hold and fixed phases, never in the shrink."""
    calls = []
    original = T.SpecAugment.forward

    def spy(self, x):
        calls.append(True)
        return original(self, x)

    monkeypatch.setattr(T.SpecAugment, "forward", spy)
    seen = []
    real_step = T.Supervised.step

    def step(self, idx, s):
        before = len(calls)
        out = real_step(self, idx, s)
        seen.append((s, len(calls) > before, self.hold, self.shrink))
        return out

    monkeypatch.setattr(T.Supervised, "step", step)
    train, val = toy_set(64, 0), toy_set(16, 1, split="val")
    cfg = T.TrainConfig(epochs=4, batch_size=16, frames=32, dataset="toy", progress=False, precision="fp32",
                        prune_method="topk", keep_rate=0.5, prune_hold_epochs=1, prune_shrink_epochs=2,
                        augment_while_shrinking=False, warmup_epochs=0.0)
    T.fit(cfg, train, val, tmp_cache / "run")
    for s, augmented, hold, shrink in seen:
        assert augmented == (not hold <= s < hold + shrink), s
    assert sum(1 for _, a, _, _ in seen if not a) == seen[0][3] > 0     # exactly the shrink steps went bare


def test_zoo_controls_and_reverse_direction(monkeypatch):
    """A profile asking for controls gets one keep-rate-1.0 fine-tune per parent, same recipe as its pruned
    siblings; a dataset with a reverse protocol gets reverse-direction base models and their own MAE."""
    from tprune_core import zoo
    spec = zoo._deep_update(zoo.ZOO["smoke"], {"prune": {"control": True, "augment_while_shrinking": False}})
    spec["datasets"]["synthetic"]["reverse_protocol"] = {"flavour": "speech", "per_class": 20, "seconds": 0.4,
                                                         "seed": 1}
    monkeypatch.setitem(zoo.ZOO, "t", spec)
    plan = zoo.zoo_plan("t")
    roles = [r for r, _ in plan]
    assert roles.count("control") == 6 and roles.count("reverse") == 6 and roles.count("mae") == 2
    prune = [c for r, c in plan if r == "prune"]
    for r, c in plan:
        if r == "control":
            sib = [p for p in prune if p.init == c.init]
            assert len(sib) == 3 and c.keep_rate == 1.0 and c.prune_method == "topk"
            differ = ("keep_rate", "prune_method", "prune_options")   # the selector and its draw, nothing else
            same = {k: v for k, v in c.to_dict().items() if k not in differ}
            assert all({k: v for k, v in p.to_dict().items() if k not in differ} == same for p in sib)
            assert not c.augment_while_shrinking
    maes = [c for r, c in plan if r == "mae"]
    reverse = [c for r, c in plan if r == "reverse"]
    assert all(c.protocol["seed"] == 1 for c in reverse)
    assert {c.init for c in reverse if c.family == "audiomae"} == {"mae:" + maes[1].hash()} != {"mae:" + maes[0].hash()}
    base_hashes = {c.hash() for r, c in plan if r == "base"}
    assert not base_hashes & {c.hash() for c in reverse}


def test_transfer_init_takes_all_but_the_head_from_another_datasets_run(tmp_cache):
    parent = tiny_cfg(frames=32, epochs=1)
    T.fit(parent, toy_set(16, 0), toy_set(8, 1, split="val"), run_dir_for(parent))
    pmodel, _ = T.load_checkpoint(run_dir_for(parent))
    child = tiny_cfg(frames=64, data_frames=None, init="transfer:" + parent.hash())
    model = T.build_model(child, num_classes=5)        # other clip length, other classes
    assert model.head.weight.shape[0] == 5
    ps, cs = pmodel.state_dict(), model.state_dict()
    assert torch.equal(cs["blocks.5.attn.qkv.weight"], ps["blocks.5.attn.qkv.weight"])
    assert torch.equal(cs["patch_embed.proj.weight"], ps["patch_embed.proj.weight"])
    p = model.num_prefix_tokens
    assert cs["pos_embed"].shape[1] == p + 8 * 4 and ps["pos_embed"].shape[1] == p + 8 * 2
    assert torch.equal(cs["pos_embed"][:, :p], ps["pos_embed"][:, :p])
    with pytest.raises(CheckpointError, match="audiomae"):
        T.build_model(tiny_cfg(family="audiomae", frames=64, data_frames=None, init="transfer:" + parent.hash()), 5)
    with pytest.raises(ConfigError, match="init"):
        tiny_cfg(init="borrow:" + parent.hash())


def test_distillation_teaches_the_teachers_labels_not_the_data_ones(tmp_cache):
    def shifted(ts):            # the same clips, every label moved to the next class
        ts.y = (ts.y + 1) % 3
        return ts
    teacher = tiny_cfg(epochs=3, seed=1)
    T.fit(teacher, shifted(toy_set(64, 0)), shifted(toy_set(24, 1, split="val")), run_dir_for(teacher))
    student = tiny_cfg(epochs=3, teacher="run:" + teacher.hash(), distill=1.0)
    assert student.hash() != tiny_cfg(epochs=3).hash()
    s = T.fit(student, toy_set(64, 0), toy_set(24, 1, split="val"), run_dir_for(student))
    assert s["val_accuracy"] < 0.2          # it learned the teacher's (shifted) labels: wrong on the true ones
    model, _ = T.load_checkpoint(run_dir_for(student))
    assert evaluate(model, shifted(toy_set(24, 1, split="val")))["accuracy"] > 0.8
    with pytest.raises(CheckpointError, match="frames"):
        T.fit(tiny_cfg(frames=16, teacher="run:" + teacher.hash()), toy_set(16, 0), toy_set(8, 1, split="val"),
              tmp_cache / "x")
    with pytest.raises(ConfigError, match="teacher"):
        tiny_cfg(teacher="mae:" + teacher.hash())


def test_architecture_options_build_train_reload_and_guard_their_inits(tmp_cache):
    """qk_norm / layer_scale: off by default (old hashes, stock blocks), real timm modules when on, rebuilt by
    load_checkpoint, refused with MAE weights (whose encoder has neither)."""
    assert T.TrainConfig(epochs=2).hash() == T.TrainConfig(epochs=2, qk_norm=False, layer_scale=None).hash()
    assert len({T.TrainConfig(epochs=2).hash(), T.TrainConfig(epochs=2, qk_norm=True).hash(),
                T.TrainConfig(epochs=2, layer_scale=1e-4).hash()}) == 3
    cfg = tiny_cfg(epochs=1, qk_norm=True, layer_scale=0.1)
    model = T.build_model(cfg, 3)
    attn = model.blocks[0].attn
    assert isinstance(attn.q_norm, torch.nn.LayerNorm) and isinstance(attn.k_norm, torch.nn.LayerNorm)
    assert torch.allclose(model.blocks[0].ls1.gamma, torch.full((model.embed_dim,), 0.1))
    T.fit(cfg, toy_set(16, 0), toy_set(8, 1, split="val"), run_dir_for(cfg))
    reloaded, _ = T.load_checkpoint(run_dir_for(cfg))
    assert "blocks.0.attn.q_norm.weight" in reloaded.state_dict() and "blocks.0.ls2.gamma" in reloaded.state_dict()
    with pytest.raises(ConfigError, match="qk_norm"):
        T.TrainConfig(family="audiomae", init="mae:abc", qk_norm=True)
    with pytest.raises(ConfigError, match="layer_scale"):
        T.TrainConfig(layer_scale=0)
    with pytest.raises(ConfigError, match="qk_norm"):
        T.TrainConfig(qk_norm=1)


@pytest.mark.parametrize("profile", ["full", "long"])
def test_zoo_gives_layer_scale_to_the_ast_style_models_only(profile):
    """LayerScale on every AST-style model (the Speech Commands ones and the UrbanSound8K ones that start from them,
    so the transferred weights fit), never on the MAE-initialised family."""
    from tprune_core import zoo
    for role, cfg in zoo.zoo_plan(profile):
        if role == "mae":
            continue
        assert cfg.layer_scale == (0.1 if cfg.family == "ast" else None), (role, cfg.family, cfg.dataset)
        if cfg.family == "ast" and cfg.dataset == "urbansound8k" and role == "base":
            source = zoo.base_config(profile, "ast", "speechcommands", cfg.seed)
            assert cfg.init == "transfer:" + source.hash() and source.layer_scale == 0.1


def test_full_zoo_base_hashes_are_pinned(data_root):
    """The released models are found by these run hashes (zoo/full/manifest.json): a change of code that moved
    them would orphan the release. The AST-style speech ones are the LayerScale screens L6 of the lab notebook."""
    from tprune_core import zoo
    got = [(role, cfg.hash()) for role, cfg in zoo.zoo_plan("full") if role in ("mae", "base")]
    assert got == [("mae", "8f8bdcce8366"),
                   ("base", "2370349c00b0"), ("base", "32fbf52cc99d"), ("base", "f068b5a0b83a"),
                   ("base", "048eace16353"), ("base", "56355f1c3d10"), ("base", "294580c4a899"),
                   ("base", "03100bbefcd0"), ("base", "b5d9762a6265"), ("base", "ff8651b3ef35"),
                   ("base", "5182137defb5"), ("base", "fe3f7d65b2e9"), ("base", "2b850b8b1bbf")]
