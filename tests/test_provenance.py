"""Tables computed from trained models are tied to the weights they were computed from (issue 17, point 1)."""
import pandas as pd
import pytest

from tprune_core import results, zoo
from tprune_core import train as T
from tprune_core.results import StaleResultError


def _entry(cfg):
    run = T.train_run(cfg)
    T.test_run(run)
    return {"role": "base", "name": "ast/synthetic/base/s0", "checkpoint": str(run / "best.pt")}


def test_a_retrained_model_makes_its_tables_stale(tmp_cache, tmp_path, monkeypatch):
    monkeypatch.delenv("TPRUNE_RESULTS_FALLBACK", raising=False)
    cfg = dict(family="ast", dataset="synthetic", frames=32, data_frames=48, epochs=1, batch_size=8, threads=1,
               progress=False, drop_path=0.0, freq_mask=0, time_mask=0)
    old = zoo.provenance([_entry(T.TrainConfig(seed=0, **cfg))])
    calls = []

    def compute():
        calls.append(1)
        return pd.DataFrame({"x": [len(calls)]})

    params = {"k": 1}
    first = results.load_or_compute("ch", "t", params, compute, root=tmp_path, **old)
    again = results.load_or_compute("ch", "t", params, compute, root=tmp_path, **old)
    assert len(calls) == 1 and first.x[0] == again.x[0] == 1
    meta = results.read_meta("ch", "t", tmp_path)
    assert meta["checkpoints"] == old["checkpoints"] and meta["machine"]["processor"]
    # The "same" model retrained with another seed: same name, other weights -> recomputed, never served stale.
    new = zoo.provenance([_entry(T.TrainConfig(seed=1, **cfg))])
    assert new["checkpoints"]["ast/synthetic/base/s0"] != old["checkpoints"]["ast/synthetic/base/s0"]
    with pytest.raises(StaleResultError, match="other model weights.*ast/synthetic/base/s0"):
        results.load_table("ch", "t", params, root=tmp_path, checkpoints=new["checkpoints"])
    fresh = results.load_or_compute("ch", "t", params, compute, root=tmp_path, **new)
    assert len(calls) == 2 and fresh.x[0] == 2
    assert results.read_meta("ch", "t", tmp_path)["checkpoints"] == new["checkpoints"]


def test_a_table_without_digests_is_stale_for_a_caller_with_models(tmp_path):
    results.save_table("ch", "t", pd.DataFrame({"x": [1]}), {"k": 1}, root=tmp_path)
    with pytest.raises(StaleResultError, match="no checkpoint digests"):
        results.load_table("ch", "t", {"k": 1}, root=tmp_path, checkpoints={"m": "0" * 64})
    with pytest.raises(Exception, match="sha256 hex digest"):
        results.save_table("ch", "u", pd.DataFrame({"x": [1]}), {"k": 1}, root=tmp_path, checkpoints={"m": "abc"})


def test_code_version_ignores_what_the_build_writes(tmp_path, monkeypatch):
    import subprocess
    repo = results.repo_root()
    listed = subprocess.run(["git", "ls-files", "results"], cwd=repo, capture_output=True, text=True).stdout.split()
    if not listed:
        pytest.fail("expected tracked files under results/ in the checkout")
    target = repo / listed[0]
    before = target.read_bytes()
    results.code_version.cache_clear()
    clean = results.code_version()
    try:
        target.write_bytes(before + b"\n")
        results.code_version.cache_clear()
        assert results.code_version() == clean   # a rewritten table is not a code change
    finally:
        target.write_bytes(before)
        results.code_version.cache_clear()


def test_provenance_problems_catch_disagreeing_tables(tmp_path):
    a, b = "a" * 64, "b" * 64
    results.save_table("one", "t", pd.DataFrame({"x": [1]}), {}, root=tmp_path, checkpoints={"m": a, "n": a})
    results.save_table("two", "t", pd.DataFrame({"x": [1]}), {}, root=tmp_path, checkpoints={"m": a})
    assert results.provenance_problems(tmp_path, {"m": a, "n": a}) == []
    results.save_table("two", "u", pd.DataFrame({"x": [1]}), {}, root=tmp_path, checkpoints={"m": b})
    problems = results.provenance_problems(tmp_path)
    assert len(problems) == 1 and "different weights" in problems[0] and "two/u" in problems[0]
    stale = results.provenance_problems(tmp_path, {"m": b, "n": a})
    assert any("one/t" in p and "no longer the zoo's" in p for p in stale)
