"""Data-parallel training on CPU (gloo): two processes started as torchrun starts them (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT in the environment), on small in-memory sets and the 12-block ViT-tiny of test_train.

- With the random augmentation off, 2 processes x 4 clips end where 1 process x 8 clips ends: losses within 1e-5
  (relative) and weights within 2e-5 (absolute; float summation order and per-batch-size kernels differ).
- One rank SIGKILLed mid-epoch, the other stopped as torchrun stops it, rerun: the run resumes from rank 0's
  state.pt and ends bit for bit where an uninterrupted 2-process run ends, every augmentation and random pruning on.
- `torchrun -m tprune_core.cli train` itself, on a synthetic set.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import toy_set
from tprune_core import distributed as D
from tprune_core import train as T
from tprune_core.errors import CheckpointError, ConfigError

REPO = Path(__file__).resolve().parents[1]
PLAIN = dict(family="ast", frames=32, epochs=2, batch_size=8, lr=3e-4, warmup_epochs=0.5, threads=1, progress=False,
             drop_path=0.0, freq_mask=0, time_mask=0, label_smoothing=0.1, ckpt_every=3)
# every random draw on: crops, SpecAugment, mixup, drop path, random pruning (seeded per rank)
AUGMENTED = dict(PLAIN, data_frames=48, epochs=2, freq_mask=24, time_mask=8, mixup=0.2, drop_path=0.1,
                 prune_method="random", keep_rate=0.5, prune_hold_epochs=0.5, prune_shrink_epochs=1)
CHILD = textwrap.dedent("""
    import os, signal, sys, json
    sys.path[:0] = [{repo!r}, {repo!r} + "/tests"]
    from conftest import toy_set
    from tprune_core import train as T
    cfg, run_dir, kill_at = T.TrainConfig(**json.loads(sys.argv[1])), sys.argv[2], int(sys.argv[3])
    if kill_at >= 0 and os.environ["RANK"] == "1":   # this rank dies at that step, as a crashed node would
        real = T.Supervised.step
        def step(self, idx, step):
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, idx, step)
        T.Supervised.step = step
    frames = cfg.data_frames or cfg.frames   # no longer than the model's input: no random crops
    T.fit(cfg, toy_set(32, 0, frames), toy_set(12, 1, frames, split="val"), run_dir)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path, cfg: dict, run_dir, kill_at=-1, world=2, timeout=150) -> list:
    """Start ``world`` training processes as torchrun does; when one fails, stop the others (torchrun's agent does
    the same). Returns the exit codes."""
    script = tmp_path / "ddp_child.py"
    script.write_text(CHILD.format(repo=str(REPO)))
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   PYTHONPATH=str(REPO))
        procs.append(subprocess.Popen([sys.executable, str(script), json.dumps(cfg), str(run_dir), str(kill_at)],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    deadline = time.time() + timeout
    while any(p.poll() is None for p in procs) and time.time() < deadline:
        if any(p.poll() not in (None, 0) for p in procs):
            for p in procs:
                if p.poll() is None:
                    p.kill()
        time.sleep(0.05)
    for p in procs:
        if p.poll() is None:
            p.kill()
    codes = [p.wait() for p in procs]
    if kill_at < 0 and codes != [0] * world:
        pytest.fail("DDP run failed: " + " | ".join(p.stderr.read().decode()[-1500:] for p in procs))
    return codes


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The single-process reference of PLAIN (global batch 8)."""
    run = tmp_path_factory.mktemp("single") / "run"
    return T.fit(T.TrainConfig(**PLAIN), toy_set(32, 0, 32), toy_set(12, 1, 32, split="val"), run), run


def weights(run_dir) -> dict:
    return torch.load(Path(run_dir) / "best.pt", weights_only=False)["model"]


def test_ddp_two_processes_match_one_process_with_the_same_global_batch(tmp_path, one_process):
    ref, ref_dir = one_process
    run = tmp_path / "ddp"
    launch(tmp_path, PLAIN, run)
    done = json.loads((run / "train.json").read_text())
    assert done["distributed"] == {"world_size": 2, "backend": "gloo", "global_batch": 8, "per_process_batch": 4}
    assert json.loads((run / "log.json").read_text())["distributed"]["global_batch"] == 8
    assert "distributed" not in ref and done["steps"] == ref["steps"] == 8   # the same schedule
    assert not (run / "state.pt").exists() and done["hash"] == ref["hash"]  # one recipe, one hash
    # measured on a 2-core Xeon: losses 2e-8 apart (relative), weights 1.7e-6 (AST) and 5e-7 (AudioMAE-style)
    assert [h["train_loss"] for h in done["history"]] == pytest.approx([h["train_loss"] for h in ref["history"]],
                                                                      rel=1e-5)
    a, b = weights(run), weights(ref_dir)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 2e-5, worst


def test_ddp_rank_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    ref = tmp_path / "ref"
    launch(tmp_path, AUGMENTED, ref)
    run = tmp_path / "killed"
    codes = launch(tmp_path, AUGMENTED, run, kill_at=7)   # 4 steps an epoch: killed one step after the step-6 save
    assert codes[1] == -signal.SIGKILL and codes[0] != 0
    assert not (run / "train.json").exists()
    state = torch.load(run / "state.pt", weights_only=False)
    assert state["step"] == 6 and state["world_size"] == 2 and len(state["ranks"]) == 2
    assert state["ranks"][0]["prune_calls"] != state["ranks"][1]["prune_calls"]   # rank 0 also validated
    launch(tmp_path, AUGMENTED, run)   # the same command again
    done, want = (json.loads((d / "train.json").read_text()) for d in (run, ref))
    assert done["final_sha256"] == want["final_sha256"]
    assert [h["train_loss"] for h in done["history"]] == [h["train_loss"] for h in want["history"]]
    assert not (run / "state.pt").exists()


def test_ddp_cli_under_torchrun(tmp_path):
    """The command line of the README's recipe, on CPU: 2 processes, gloo, a synthetic set."""
    env = dict(os.environ, TPRUNE_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           "-m", "tprune_core.cli", "train", "--dataset", "synthetic", "--protocol", "per_class=4", "seconds=0.4",
           "--frames", "32", "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--threads", "1",
           "--stream", "--no-test", "--json"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "data parallel: 2 processes (gloo, cpu), 2 clips each per step = global batch 4" in out.stderr
    summary = json.loads(out.stdout)   # rank 0 alone prints the summary
    assert summary["distributed"]["world_size"] == 2 and summary["steps"] == summary["n_train"] // 4


# ------------------------------------------------------------------------------------------- pieces, no processes

def test_ddp_environment_is_read_in_one_place(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert D.environment() == D.World() and not D.environment().active
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert D.environment() == D.World(3, 4, 1, None, 4)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="RANK < WORLD_SIZE"):
        D.environment()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ConfigError, match="must be ints"):
        D.environment()


def test_ddp_shards_split_each_global_batch_evenly():
    batch = torch.arange(12)
    parts = [D.shard(batch, D.World(r, 3)) for r in range(3)]
    assert torch.equal(torch.cat(parts), batch) and all(len(p) == 4 for p in parts)
    assert D.shard(batch, D.World()) is batch
    with pytest.raises(ConfigError, match="batch_size: 10 does not split evenly over the 4"):
        D.check_batch(10, D.World(0, 4))
    assert D.stream_seed(0, 1) != D.stream_seed(0, 2) != D.stream_seed(1, 1)
    assert D.rank_options("random", {"seed": 3}, D.World(0, 2)) == {"seed": 3}           # rank 0: the run's own
    assert D.rank_options("random", {"seed": 3}, D.World(1, 2))["seed"] != 3             # others: their own draws
    assert D.rank_options("topk", {}, D.World(1, 2)) == {}
    assert D.record(8, D.World()) == {}


def test_ddp_device_per_process(monkeypatch):
    w = D.World(1, 2, 1)
    assert D._device_for("cpu", w) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            D._device_for("cuda", w)


# ------------------------------------------------------------------------------------------- the README's recipe

def test_official_checkpoint_init_takes_the_encoder_and_trains_its_own_head(tmp_path):
    """``--pretrained official:PATH`` (the paper-scale recipe): an AST checkpoint of 7 classes into a 3-class run."""
    from test_models import official_ast, official_audiomae
    path = tmp_path / "audioset_16_16.pth"
    ckpt = official_ast(num_classes=7)
    torch.save(ckpt, path)
    cfg = T.TrainConfig(family="ast", frames=32, init=f"official:{tmp_path}/../{tmp_path.name}/{path.name}")
    assert cfg.init == f"official:{path}"   # one spelling of one file
    model = T.build_model(cfg, 3)
    assert torch.equal(model.state_dict()["blocks.3.attn.qkv.weight"], ckpt["module.v.blocks.3.attn.qkv.weight"])
    assert model.head.weight.shape[0] == 3   # its own classifier
    before = cfg.hash()
    ckpt["module.v.blocks.0.norm1.bias"] += 1
    torch.save(ckpt, path)
    assert T.TrainConfig(family="ast", frames=32, init=f"official:{path}").hash() != before   # named by content
    # AudioMAE's pretrained encoder: no classifier, a final `norm` that mean pooling leaves out
    mae = official_audiomae()
    state = {k: v for k, v in mae["model"].items() if not k.startswith(("head.", "fc_norm."))}
    state.update({"norm.weight": torch.ones(192), "norm.bias": torch.zeros(192), "decoder_embed.weight": torch.ones(1)})
    torch.save({"model": state}, tmp_path / "pretrained.pth")
    enc = T.build_model(T.TrainConfig(family="audiomae", frames=48, init=f"official:{tmp_path}/pretrained.pth"), 3)
    assert torch.equal(enc.state_dict()["blocks.11.mlp.fc2.bias"], state["blocks.11.mlp.fc2.bias"])
    with pytest.raises(ConfigError, match="stock blocks"):
        T.TrainConfig(family="ast", qk_norm=True, init=f"official:{path}")
    with pytest.raises(CheckpointError, match="nope.pth"):
        T.TrainConfig(family="ast", init=f"official:{tmp_path}/nope.pth").hash()
