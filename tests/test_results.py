import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tprune_core import results
from tprune_core.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("TPRUNE_RESULTS", "TPRUNE_PROFILE", "TPRUNE_RESULTS_FALLBACK"):
        monkeypatch.delenv(name, raising=False)


def _frame():
    return pd.DataFrame({
        "method": ["topk", "random", "1.0", ""],  # a numeric-looking string and an empty one must stay text
        "keep_rate": [1.0, 0.7, 0.5, 0.3],
        "tokens": np.array([512, 359, 256, 154], dtype=np.int64),
        "gmacs": [17.5, np.nan, 8.9, 5.6],
        "significant": [True, False, True, False],
    })


PARAMS = {"families": ("ast", "audiomae"), "keep_rates": [1.0, 0.7], "seed": np.int64(3),
          "data_root": Path("/data/x"), "profile": "full"}


def test_table_round_trip_keeps_values_dtypes_and_params(tmp_path):
    table = _frame()
    path = results.save_table("pruning-tradeoffs", "accuracy", table, PARAMS, root=tmp_path)
    assert path == tmp_path / "pruning-tradeoffs" / "accuracy.csv"
    back = results.load_table("pruning-tradeoffs", "accuracy", PARAMS, root=tmp_path)
    pd.testing.assert_frame_equal(back, table)
    assert back["method"].tolist() == ["topk", "random", "1.0", ""]
    meta = back.attrs["meta"]
    # canonical JSON: tuple -> list, numpy scalar -> int, path -> string
    assert meta["params"] == {"families": ["ast", "audiomae"], "keep_rates": [1.0, 0.7], "seed": 3,
                              "data_root": "/data/x", "profile": "full"}
    assert meta["code_version"].startswith(results.__version__)
    assert meta["saved_at"] and meta["rows"] == 4 and meta["profile"] == "full"
    # the same parameters written as plain JSON values are the same request
    plain = json.loads(json.dumps(meta["params"]))
    pd.testing.assert_frame_equal(results.load_table("pruning-tradeoffs", "accuracy", plain, root=tmp_path), table)


@pytest.mark.parametrize("change, named", [
    ({"keep_rates": [1.0, 0.5]}, "keep_rates"),
    ({"seed": 4}, "seed"),
    ({"profile": "smoke"}, "profile"),
    ({"extra": 1}, "extra"),
])
def test_load_refuses_table_made_with_other_params(tmp_path, change, named):
    results.save_table("ch", "t", _frame(), PARAMS, root=tmp_path)
    with pytest.raises(results.StaleResultError) as err:
        results.load_table("ch", "t", {**PARAMS, **change}, root=tmp_path)
    assert named in str(err.value) and "t.csv" in str(err.value)


def test_load_refuses_when_a_param_is_missing_from_the_request(tmp_path):
    results.save_table("ch", "t", _frame(), PARAMS, root=tmp_path)
    fewer = {k: v for k, v in PARAMS.items() if k != "seed"}
    with pytest.raises(results.StaleResultError, match="seed"):
        results.load_table("ch", "t", fewer, root=tmp_path)


def test_missing_and_hand_edited_results_are_refused(tmp_path):
    with pytest.raises(results.MissingResultError, match="ch/t"):
        results.load_table("ch", "t", PARAMS, root=tmp_path)
    path = results.save_table("ch", "t", _frame(), PARAMS, root=tmp_path)
    path.write_text(path.read_text().replace("0.7", "0.9"))
    with pytest.raises(results.ResultsError, match="differ from what was saved"):
        results.load_table("ch", "t", PARAMS, root=tmp_path)


def test_json_round_trip_and_kind_checks(tmp_path):
    data = {"verdict": "mixed", "drops": [0.4, 1.2], "n": 3}
    results.save_json("ch", "summary", data, {"seed": 0}, root=tmp_path)
    assert results.load_json("ch", "summary", {"seed": 0}, root=tmp_path) == data
    with pytest.raises(results.StaleResultError):
        results.load_json("ch", "summary", {"seed": 1}, root=tmp_path)
    with pytest.raises(results.ResultsError, match="load_json"):
        results.load_table("ch", "summary", {"seed": 0}, root=tmp_path)
    # saving a table under the same name replaces the JSON file
    results.save_table("ch", "summary", _frame(), {"seed": 0}, root=tmp_path)
    assert not (tmp_path / "ch" / "summary.json").exists()
    assert len(results.load_table("ch", "summary", {"seed": 0}, root=tmp_path)) == 4


def test_load_or_compute_computes_only_when_params_change(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return _frame()

    first = results.load_or_compute("ch", "t", {"seed": 0}, compute, root=tmp_path)
    again = results.load_or_compute("ch", "t", {"seed": 0}, compute, root=tmp_path)
    assert len(calls) == 1
    pd.testing.assert_frame_equal(first, again)
    results.load_or_compute("ch", "t", {"seed": 1}, compute, root=tmp_path)
    assert len(calls) == 2
    assert results.read_meta("ch", "t", root=tmp_path)["params"] == {"seed": 1}


@pytest.mark.parametrize("params, match", [
    ({"x": float("nan")}, "finite"),
    ({"x": object()}, "JSON-like"),
    ({1: 2}, "strings"),
    (["not", "a", "dict"], "dict"),
])
def test_bad_params_are_refused(tmp_path, params, match):
    with pytest.raises(ConfigError, match=match):
        results.save_table("ch", "t", _frame(), params, root=tmp_path)


def test_bad_names_and_tables_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="chapter"):
        results.save_table("../up", "t", _frame(), {}, root=tmp_path)
    with pytest.raises(ConfigError, match="name"):
        results.save_table("ch", "T b", _frame(), {}, root=tmp_path)
    with pytest.raises(ConfigError, match="DataFrame"):
        results.save_table("ch", "t", [1, 2], {}, root=tmp_path)
    dated = pd.DataFrame({"when": pd.to_datetime(["2025-01-01"])})
    with pytest.raises(ConfigError, match="when"):
        results.save_table("ch", "t", dated, {}, root=tmp_path)


def test_root_follows_profile_and_env(monkeypatch, tmp_path):
    repo = results.repo_root()
    assert results.default_root() == repo / "results"
    monkeypatch.setenv("TPRUNE_PROFILE", "smoke")
    assert results.default_root() == repo / "_build" / "smoke" / "results"  # smoke never overwrites results/
    monkeypatch.setenv("TPRUNE_RESULTS", str(tmp_path))
    assert results.default_root() == tmp_path.resolve()
    monkeypatch.setenv("TPRUNE_PROFILE", "fast")
    with pytest.raises(ConfigError, match="TPRUNE_PROFILE"):
        results.current_profile()


def test_list_results_sees_every_sidecar(tmp_path):
    results.save_table("a", "t1", _frame(), {}, root=tmp_path)
    results.save_json("b", "t2", [1], {}, root=tmp_path)
    assert [(m["chapter"], m["name"]) for m in results.list_results(tmp_path)] == [("a", "t1"), ("b", "t2")]


def test_fallback_roots_are_read_only_and_param_checked(monkeypatch, tmp_path):
    published, own = tmp_path / "published", tmp_path / "rerun"
    results.save_table("ch", "t", _frame(), {"seed": 0}, root=published)
    monkeypatch.setenv("TPRUNE_RESULTS", str(own))
    monkeypatch.setenv("TPRUNE_RESULTS_FALLBACK", str(published))
    assert len(results.load_table("ch", "t", {"seed": 0})) == 4  # same params: the published table serves
    with pytest.raises(results.StaleResultError, match="seed"):
        results.load_table("ch", "t", {"seed": 1})
    calls = []
    results.load_or_compute("ch", "t", {"seed": 0}, lambda: calls.append(1) or _frame())
    assert calls == [] and not (own / "ch").exists()
    results.load_or_compute("ch", "t", {"seed": 1}, lambda: calls.append(1) or _frame())
    assert calls == [1] and (own / "ch" / "t.csv").exists()  # written to the own root only
    assert results.read_meta("ch", "t", root=published)["params"] == {"seed": 0}
    # an explicit root never falls back
    with pytest.raises(results.MissingResultError):
        results.load_table("ch", "other", {"seed": 0}, root=own)
