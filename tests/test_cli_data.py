"""`tprune data list|check|fetch|featurize` through tprune_core.cli.main, results on stdout."""
import json
import socket

import numpy as np
import pytest
import soundfile as sf

from conftest import make_class_folders
from tprune_core.cli import main
from tprune_core.datasets import load_dataset


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.realdata
def test_list_json_reports_the_shared_data(capsys, data_root, monkeypatch):
    monkeypatch.setenv("TPRUNE_DATA", str(data_root))
    code, out, _ = run(capsys, "data", "list", "--json")
    assert code == 0
    entries = {e["name"]: e for e in json.loads(out) if e["source"] == "real"}
    assert entries["urbansound8k"]["clips"] == 1710 and entries["urbansound8k"]["classes"] == 10
    # the default speech protocol pools the extra speakers (4,482 test-copy clips + 6,894 extra)
    assert entries["speechcommands"]["clips"] == 4482 + 6894 and entries["speechcommands"]["classes"] == 11
    assert entries["speechcommands"]["splits"]["test"] >= 1500
    for name in ("urbansound8k", "speechcommands"):
        assert entries[name]["path"] and sum(entries[name]["splits"].values()) == entries[name]["clips"]
    code, out, _ = run(capsys, "data", "list")
    assert code == 0 and "1710 clips" in out and "11376 clips" in out


def test_list_with_root(capsys, fake_esc50):
    code, out, _ = run(capsys, "data", "list", "--json", "--root", str(fake_esc50.parent))
    assert code == 0
    entries = json.loads(out)
    assert all({"name", "path", "clips", "classes"} <= set(e) for e in entries)
    esc = next(e for e in entries if e["name"] == "esc50")
    assert esc["clips"] == 10 and esc["classes"] == 2 and esc["path"] == str(fake_esc50)


def test_list_unknown_folder_is_an_error(capsys, tmp_path):
    (tmp_path / "stuff").mkdir()
    code, out, err = run(capsys, "data", "list", "--root", str(tmp_path / "stuff"))
    assert code == 2 and out == "" and str(tmp_path / "stuff") in err and "expected" in err


def test_check_good_and_bad(capsys, fake_esc50):
    code, out, _ = run(capsys, "data", "check", "esc50", "--root", str(fake_esc50))
    assert code == 0 and "\n0 problems\n" in out and "read 10 of 10 files" in out
    bad = load_dataset("esc50", fake_esc50, "all")[4].path
    open(bad, "wb").write(b"\x00garbage" * 20)
    code, out, _ = run(capsys, "data", "check", "esc50", "--root", str(fake_esc50))
    assert code == 1 and "\n1 problem\n" in out and bad in out


def test_featurize_with_skip_lists_the_skipped_file(capsys, tmp_cache, fake_esc50):
    bad = load_dataset("esc50", fake_esc50, "test")[0].path
    open(bad, "wb").write(b"")
    code, _, err = run(capsys, "data", "featurize", "esc50", "--root", str(fake_esc50), "--split", "test",
                       "--frames", "16")
    assert code == 2 and bad in err and "empty file" in err
    code, out, err = run(capsys, "data", "featurize", "esc50", "--root", str(fake_esc50), "--split", "test",
                         "--frames", "16", "--on-error", "skip")
    assert code == 0 and "1 skipped" in out and f"skipped: {bad}" in out and bad in err


def test_fetch_unreachable_url_fails_cleanly(capsys, tmp_path):
    with socket.socket() as s:  # a port on which nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out, err = run(capsys, "data", "fetch", "esc50", "--to", str(tmp_path / "d"),
                         "--url", f"http://127.0.0.1:{port}/none.zip")
    assert code == 2 and "download failed" in err and out == ""


# ------------------------------------------------------------------ folders of audio

def test_folder_dataset_listed_checked_and_featurized(capsys, tmp_cache, tmp_path, monkeypatch):
    folder = make_class_folders(tmp_path / "data")
    monkeypatch.setenv("TPRUNE_DATA", str(folder.parent))
    code, out, _ = run(capsys, "data", "list", "--json")
    entry = next(e for e in json.loads(out) if e["name"] == "birds")
    assert code == 0 and entry["path"] == str(folder) and entry["layout"] == "classes"
    assert entry["clips"] == 18 and entry["class_names"] == ["crow", "owl", "wren"]
    code, out, _ = run(capsys, "data", "list")
    assert code == 0 and f"{folder}  [train=12 val=3 test=3]" in out and "metadata.csv with columns" in out
    code, out, _ = run(capsys, "data", "check", "birds")
    assert code == 0 and "read 18 of 18 files" in out and "\n0 problems\n" in out and "median of 18 clips" in out
    code, out, _ = run(capsys, "data", "featurize", str(folder), "--split", "train")
    assert code == 0 and "12 clips x 64 frames x 128 mel" in out


def test_check_lists_every_failing_file(capsys, tmp_path):
    folder = make_class_folders(tmp_path)
    tiny, junk = folder / "owl" / "tiny.wav", folder / "crow" / "junk.wav"
    sf.write(str(tiny), np.array([0.1]), 16000)        # reads fine, but is shorter than one fbank window
    junk.write_bytes(b"\x00garbage" * 20)
    code, out, _ = run(capsys, "data", "check", str(folder))
    assert code == 1 and "\n2 problems\n" in out and "read 18 of 20 files" in out
    assert f"problem: {tiny}: 1 sample at 16000 Hz" in out and f"problem: {junk}: not an audio file" in out


def test_check_names_a_missing_listed_file(capsys, tmp_path):
    folder = make_class_folders(tmp_path)
    (folder / "metadata.csv").write_text("file,label\nowl/c0.wav,owl\nwren/gone.wav,wren\n")
    code, out, err = run(capsys, "data", "check", str(folder))
    assert code == 2 and out == "" and str(folder / "wren" / "gone.wav") in err


def test_train_and_eval_on_a_folder_path(capsys, tmp_cache, tmp_path, one_thread):
    """`tprune train --dataset PATH` and `tprune eval` reach the folder through TrainConfig.dataset."""
    folder = make_class_folders(tmp_path, per_class=6)
    code, out, _ = run(capsys, "train", "--dataset", str(folder), "--frames", "32", "--epochs", "1",
                       "--batch-size", "4", "--threads", "1", "--json")
    summary = json.loads(out)
    assert code == 0 and summary["config"]["dataset"] == str(folder)
    assert summary["classes"] == ["crow", "owl", "wren"] and summary["test"]["n_clips"] == 3
    code, out, _ = run(capsys, "eval", "--checkpoint", summary["hash"], "--method", "topk", "--keep-rate", "0.5",
                       "--split", "val", "--json")
    result = json.loads(out)
    assert code == 0 and result["dataset"] == str(folder) and result["n_clips"] == 3 and result["keep_rate"] == 0.5
    assert sorted(p.name.split("-")[1] for p in (tmp_cache / "features").glob("birds-*.pt")) == ["test", "train", "val"]


def test_a_run_on_a_folder_is_not_served_after_the_folder_changes(tmp_path):
    """The run hash of a user-folder dataset covers the folder's content: add a clip and the trained run is no
    longer the one a config names (built-in names keep their name-only hashes)."""
    from conftest import write_tone
    from tprune_core.mae import MAEConfig
    from tprune_core.train import TrainConfig
    folder = tmp_path / "birds"
    for label in ("owl", "wren"):
        (folder / label).mkdir(parents=True)
        for i in range(6):
            write_tone(folder / label / f"{label}{i}.wav", seconds=0.3, freq=300 + 200 * i)
    cfg = TrainConfig(dataset=str(folder), frames=32, epochs=1)
    before = cfg.hash()
    assert before == TrainConfig(dataset=str(folder), frames=32, epochs=1).hash()      # stable while unchanged
    mae = MAEConfig(sources=[{"dataset": str(folder), "protocol": {}, "frames": 32}], crop_frames=32)
    mae_before = mae.hash()
    write_tone(folder / "owl" / "owl_new.wav", seconds=0.3)
    assert cfg.hash() != before and mae.hash() != mae_before
    assert TrainConfig(dataset="synthetic", frames=32).hash() == TrainConfig(dataset="synthetic", frames=32).hash()
