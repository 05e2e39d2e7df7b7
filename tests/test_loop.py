"""The shared epoch loop on a toy task: the files it writes, and a run stopped mid-epoch that resumes to the weights
and log of an uninterrupted run."""
import json
import types

import pytest
import torch

from conftest import Interrupted, stop_at
from tprune_core.loop import Task, run_epochs
from tprune_core.runtime import config_hash


class ToyConfig(types.SimpleNamespace):
    """The fields run_epochs reads of a config."""

    def __init__(self, **kw):
        super().__init__(**{**dict(epochs=3, batch_size=4, seed=0, lr=0.05, min_lr=0.0, warmup_epochs=0.5,
                                   grad_clip=1.0, ckpt_every=2, progress=False), **kw})

    def to_dict(self):
        return dict(vars(self))

    def hash(self):
        return config_hash(self)


class Toy(Task):
    """Linear regression on 22 points (5 batches of 4 an epoch, 2 left over) with input noise from the global RNG."""
    zero = (0.0, 0)

    def __init__(self, cfg, run_dir):
        torch.manual_seed(cfg.seed)
        model = torch.nn.Linear(3, 1)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
        super().__init__(cfg, run_dir, "toy", model, opt, torch.device("cpu"), 22)
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(22, 3, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3
        self.epochs_seen = 0

    def step(self, idx, step):
        x = self.x[idx] + 0.05 * torch.randn(len(idx), 3)
        loss = torch.nn.functional.mse_loss(self.model(x).squeeze(1), self.y[idx])
        return loss, (loss.item() * len(idx), len(idx))

    def end_epoch(self, epoch, sums):
        self.epochs_seen += 1
        return {"loss": sums[0] / sums[1]}

    def state(self):
        return {"epochs_seen": self.epochs_seen}

    def restore(self, st):
        self.epochs_seen = st["epochs_seen"]

    def finish(self, history):
        return {k: v.clone() for k, v in self.model.state_dict().items()}, history, self.epochs_seen


def test_loop_writes_its_files_and_cleans_up(tmp_path):
    weights, history, _ = run_epochs(Toy(ToyConfig(), tmp_path))
    assert [h["epoch"] for h in history] == [1, 2, 3] and [h["step"] for h in history] == [5, 10, 15]
    assert list(history[0]) == ["epoch", "step", "lr", "loss", "seconds"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert json.loads((tmp_path / "config.json").read_text()) == {"hash": ToyConfig().hash(),
                                                                    "config": ToyConfig().to_dict()}
    assert json.loads((tmp_path / "log.json").read_text())["history"] == history
    assert not (tmp_path / "state.pt").exists()


def test_loop_resumes_mid_epoch_to_the_same_weights(tmp_path, monkeypatch, capsys):
    cfg = ToyConfig()
    ref_weights, ref_history, _ = run_epochs(Toy(cfg, tmp_path / "ref"))
    undo = stop_at(monkeypatch, Toy, 7)
    with pytest.raises(Interrupted):
        run_epochs(Toy(cfg, tmp_path / "run"))
    st = torch.load(tmp_path / "run" / "state.pt", weights_only=False)
    assert st["step"] == 6 and st["epoch_stats"][1] == 4 and st["epochs_seen"] == 1   # one batch into epoch 2
    undo()
    weights, history, epochs_seen = run_epochs(Toy(cfg, tmp_path / "run"))
    assert "resuming run at step 6/15 (epoch 2)" in capsys.readouterr().err
    assert all(torch.equal(weights[k], ref_weights[k]) for k in ref_weights)
    assert [h["loss"] for h in history] == [h["loss"] for h in ref_history] and epochs_seen == 3
    assert not (tmp_path / "run" / "state.pt").exists()
