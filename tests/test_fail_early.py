"""Fail early, lose nothing (issue 29): `tprune train` reads and checks every split before the first training step,
leaves unreadable files out on request and lists them in the run's record, and says which clip length it reads and
how many clips that crops. On tiny generated folders; the one training run is a 1-epoch ViT-tiny on 32 frames."""
import json

import pytest

from conftest import make_class_folders, write_mp3_in_wav, write_tone
from tprune_core import train as T
from tprune_core.audio import ShortDecodeWarning
from tprune_core.cache import load_features
from tprune_core.cli import main
from tprune_core.cli.train import _choose_clip_length
from tprune_core.errors import ConfigError
from tprune_core.runtime import read_json

TINY = ["--epochs", "1", "--batch-size", "4", "--threads", "1"]


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def make_presplit(root, name="calls", sizes=(6, 2, 2), classes=("owl", "wren")):
    """<name>/{train,val,test}/<label>/<k>.wav, clip k lasting 0.2 + 0.05 k s: a median of 0.25 s over the folder,
    half the training clips (0.35-0.45 s) longer than the 32 frames (0.335 s) that length rounds up to."""
    folder = root / name
    for part, n in zip(("train", "val", "test"), sizes):
        for ci, label in enumerate(classes):
            (folder / part / label).mkdir(parents=True)
            for k in range(n):
                write_tone(folder / part / label / f"{k}.wav", seconds=0.2 + 0.05 * k, freq=300 + 400 * ci)
    return folder


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a training step could start: fit must never be reached."""
    def fit(*args, **kwargs):
        raise AssertionError("training started")
    monkeypatch.setattr(T, "fit", fit)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_an_empty_file_in_any_split_fails_before_training_naming_it(capsys, tmp_cache, tmp_path, no_training,
                                                                     split):
    folder = make_presplit(tmp_path)
    broken = folder / split / "owl" / "broken.wav"
    broken.write_bytes(b"")
    code, out, err = run(capsys, "train", "--dataset", str(folder), *TINY)
    assert code == 2 and out == ""
    assert f"tprune: error: {broken}: empty file (0 bytes)" in err
    assert f"({split} split, read before training: nothing was trained;" in err and "--on-error skip" in err
    assert not list(tmp_cache.glob("zoo/*/state.pt"))              # no run began


def test_skip_trains_without_the_bad_file_and_records_it(capsys, tmp_cache, tmp_path, one_thread):
    folder = make_presplit(tmp_path)
    broken = folder / "test" / "owl" / "broken.wav"
    broken.write_bytes(b"")
    code, out, err = run(capsys, "train", "--dataset", str(folder), "--on-error", "skip", "--json", *TINY)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["config"]["on_error"] == "skip" and summary["test"]["n_clips"] == 4   # 5 test files, 1 left out
    (record,) = summary["skipped"]
    assert record["file"] == str(broken) and record["split"] == "test" and record["reason"].startswith("empty file")
    assert read_json(tmp_cache / "zoo" / summary["hash"] / "train.json")["skipped"] == summary["skipped"]
    # printed with the reason before training starts, and summed up with the splits read
    assert f"  {broken}: empty file (0 bytes)" in err
    assert "read and checked every split of" in err and "12 train, 4 val, 4 test clips; 1 unreadable file skipped" in err
    # the clip length: the folder's median (20 readable clips), rounded up to whole patches, and what it crops
    assert "clip length 0.25 s (median of 20 clips), read as 32 frames (0.335 s: whole 16-frame patches)" in err
    assert "6 of 12 training clips are longer and lose their end, 6 are shorter and are padded" in err
    assert summary["config"]["frames"] == 32 and summary["clip_length"] == {
        "frames": 32, "seconds": 0.335, "model_frames": 32, "clips": 12, "cropped": 6, "padded": 6}
    # the run's own setting carries over to evaluation: the skipped test file stays out
    code, out, err = run(capsys, "eval", "--checkpoint", summary["hash"], "--method", "none", "--json")
    assert code == 0 and json.loads(out)["n_clips"] == 4


def test_on_error_leaves_existing_run_hashes_alone(monkeypatch):
    monkeypatch.delenv("TPRUNE_DATA", raising=False)
    assert T.TrainConfig(on_error="raise").hash() == T.TrainConfig().hash() == "e035017b03c9"   # pinned in test_train
    assert T.TrainConfig(on_error="skip").hash() != T.TrainConfig().hash()   # a run that may lack files is its own
    with pytest.raises(ConfigError, match=r"TrainConfig.on_error: expected 'raise' or 'skip', got 'ignore'"):
        T.TrainConfig(on_error="ignore")


# ------------------------------------------------------------------ the clip length

def _args(*argv):
    from tprune_core.cli import build_parser
    return build_parser().parse_args(["train", *argv])


def test_seconds_sets_the_clip_length_through_the_protocol(tmp_path):
    folder = make_presplit(tmp_path)
    kw = {"dataset": str(folder)}
    line = _choose_clip_length(_args("--dataset", str(folder), "--seconds", "0.5"), kw)
    assert kw == {"dataset": str(folder), "protocol": {"seconds": 0.5}, "frames": 48, "data_frames": None}
    assert line == "tprune train: clip length 0.5 s (--seconds), read as 48 frames (0.495 s: whole 16-frame patches)"
    kw = {"dataset": str(folder), "frames": 32}                    # a shorter model input: random crops inside
    _choose_clip_length(_args("--dataset", str(folder), "--seconds", "0.5", "--frames", "32"), kw)
    assert kw["frames"] == 32 and kw["data_frames"] == 48
    kw = {"dataset": "esc50"}                                      # fixed-length clips: no protocol parameter
    _choose_clip_length(_args("--dataset", "esc50", "--seconds", "2"), kw)
    assert kw == {"dataset": "esc50", "frames": 208, "data_frames": None}
    with pytest.raises(ConfigError, match="--seconds 0.2 reads 32 frames, fewer than --frames 48"):
        _choose_clip_length(_args("--seconds", "0.2", "--frames", "48"), {"dataset": "esc50"})
    with pytest.raises(ConfigError, match="--seconds and --data-frames both"):
        _choose_clip_length(_args("--seconds", "0.2", "--data-frames", "48"), {"dataset": "esc50"})


def test_built_in_datasets_keep_their_default_frames(fake_esc50):
    kw = {"dataset": "speechcommands"}
    line = _choose_clip_length(_args(), kw)
    assert kw == {"dataset": "speechcommands"}                    # TrainConfig's 96 frames: the zoo's hashes hold
    assert line == "tprune train: clip length 0.975 s, read as 96 frames (the default --frames); --seconds S changes it"
    assert "(--frames)" in _choose_clip_length(_args("--frames", "64"), {"dataset": "speechcommands", "frames": 64})
    kw = {"dataset": str(fake_esc50)}                              # a path to a built-in layout: as by its name
    assert "(the default --frames)" in _choose_clip_length(_args("--dataset", str(fake_esc50)), kw)
    assert kw == {"dataset": str(fake_esc50)}
    kw = {"dataset": str(fake_esc50), "frames": 48}                # --set frames=48 is a choice too
    assert "(--set)" in _choose_clip_length(_args("--dataset", str(fake_esc50), "--set", "frames=48"), kw)


def test_help_names_folders_seconds_and_on_error(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--dataset NAME|PATH" in text and "a path to a folder of your own audio" in text
    assert "--seconds S" in text and "median clip length" in text and "--on-error {raise,skip}" in text


# ------------------------------------------------------------------ messages before any audio is read

def test_a_one_class_folder_fails_in_one_line(capsys, tmp_cache, tmp_path, no_training):
    folder = make_class_folders(tmp_path, classes=("owl",))
    code, out, err = run(capsys, "train", "--dataset", str(folder), *TINY)
    assert code == 2 and f"{folder}: 1 class folder found (owl); need at least 2" in err and len(err) < 250


def test_mp3_in_wav_clips_a_little_short_are_featurized(tmp_cache, tmp_path):
    folder = make_class_folders(tmp_path, per_class=3)
    odd = write_mp3_in_wav(folder / "owl" / "mp3inside.wav", seconds=0.6, sr=22050)
    with pytest.warns(ShortDecodeWarning, match=f"{odd}: decoded"):
        fs = load_features(folder, "all", frames=32, progress=False)
    assert "owl/mp3inside.wav" in fs.ids and not fs.skipped

