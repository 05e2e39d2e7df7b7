"""Evaluation grids: each model's random draws are its own (issue 32: three seeds must be three draws)."""
import pytest

from tprune_core import experiments, importance


def test_each_model_draws_its_own_random_tokens(tmp_cache, tmp_path, monkeypatch):
    seen = []

    def fake_evaluate(model, feats, method=None, keep_rate=1.0, drop_loc=(3, 6, 9), options=None, **kw):
        seen.append((model, method, dict(options or {})))
        return {"method": method, "keep_rate": keep_rate, "drop_loc": list(drop_loc), "accuracy": 0.5,
                "gmacs_per_clip": 1.0, "n_clips": 10}

    import tprune_core.evaluation as evaluation
    import tprune_core.zoo as zoo
    monkeypatch.setattr(evaluation, "evaluate", fake_evaluate)
    monkeypatch.setattr(zoo, "load_zoo_model", lambda entry: (f"model-s{entry['seed']}", {}))
    monkeypatch.setattr(experiments, "_features_of", lambda meta, split: object())
    entries = []
    for seed in (0, 2):
        ckpt = tmp_path / f"s{seed}.pt"
        ckpt.write_bytes(f"weights {seed}".encode())
        entries.append({"checkpoint": str(ckpt), "family": "ast", "dataset": "d", "seed": seed, "config": {}})
    edges = [-1.0, 0.0, 1.0, 2.0]
    control = [s for s in importance.bucket_settings(edges, after_blocks=(0,)) if s["options"].get("matched")][0]
    settings = [experiments.setting("random", 0.5), experiments.setting("random", 0.5, label="fixed", seed=7),
                experiments.setting("topk", 0.5), control]
    grid = experiments.evaluate_grid(entries, settings, progress=False)
    assert len(grid) == 8
    by = {(m, s["method"], s.get("seed"), "matched" in s) for m, _, s in
          [(m, meth, dict(o, method=meth)) for m, meth, o in seen]}
    assert ("model-s0", "random", 0, False) in by and ("model-s2", "random", 2, False) in by
    assert ("model-s2", "random", 7, False) in by                       # a fixed seed is kept
    assert ("model-s2", "topk", None, False) in by                      # nothing drawn: no seed
    assert ("model-s0", "intensity_range", 0, True) in by and ("model-s2", "intensity_range", 2, True) in by
    # cached per effective setting: asking again evaluates nothing
    seen.clear()
    experiments.evaluate_grid(entries, settings, progress=False)
    assert seen == []


@pytest.mark.slow
def test_clip_correctness_is_the_grid_accuracy_clip_by_clip_with_groups(tmp_cache, one_thread):
    import numpy as np
    from tprune_core import train as T
    from tprune_core.datasets import load_dataset
    entries = []
    for seed in (0, 1):
        cfg = T.TrainConfig(family="ast", dataset="synthetic", frames=32, data_frames=48, epochs=1, batch_size=8,
                            threads=1, progress=False, drop_path=0.0, freq_mask=0, time_mask=0, seed=seed,
                            protocol={"flavour": "speech", "per_class": 12, "seconds": 0.4})
        run_dir = T.train_run(cfg)
        entries.append({"role": "base", "checkpoint": str(run_dir / "best.pt"), "run_dir": str(run_dir), "family": "ast",
                        "dataset": "synthetic", "seed": seed, "config": cfg.to_dict()})
    s = experiments.setting("topk", 0.5)
    out = experiments.clip_correctness(entries, s, split="test")
    grid = experiments.evaluate_grid(entries, [s], split="test", progress=False)
    assert out["correct"].shape == (2, len(out["ids"])) and out["seeds"] == [0, 1]
    assert np.allclose(out["correct"].mean(1), grid.accuracy.to_numpy())
    clips = {c.clip_id: c.group for c in load_dataset("synthetic", split="test", flavour="speech", per_class=12,
                                                      seconds=0.4).clips}
    assert out["groups"] == [clips[i] for i in out["ids"]] and len(set(out["groups"])) > 1
