"""Folders of audio as datasets (class folders, pre-split folders, metadata.csv), VoxCeleb1, and the feature cache
and error paths for them."""
import shutil
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from conftest import make_class_folders, make_us8k, make_voxceleb1, write_tone
from tprune_core import cache
from tprune_core.audio import load_audio
from tprune_core.cache import featurize, load_features
from tprune_core.datasets import find_datasets, load_dataset
from tprune_core.errors import AudioError, ConfigError, DatasetError


def quiet(name, *args, **kw):
    """load_dataset without the clip-by-clip split warning (tested on its own)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_dataset(name, *args, **kw)


def all_splits(name, **kw):
    return {s: quiet(name, split=s, **kw) for s in ("train", "val", "test")}


def write_csv(folder, lines):
    (folder / "metadata.csv").write_text("\n".join(lines) + "\n")


def make_grouped(folder, sources=6, per_source=3, labels=("bark", "meow")):
    """metadata.csv dataset: `sources` recordings per label, each cut into `per_source` clips (the group)."""
    folder.mkdir(parents=True)
    lines = ["file,label,group"]
    for li, label in enumerate(labels):
        for s in range(sources):
            for k in range(per_source):
                name = f"clips/{label}{s}_{k}.wav"
                (folder / "clips").mkdir(exist_ok=True)
                write_tone(folder / name, seconds=0.2, freq=300 + 200 * li + 10 * k)
                lines.append(f"{name},{label},{label}-rec{s}")
    write_csv(folder, lines)
    return folder


# ------------------------------------------------------------------ class folders

def test_class_folders_load_by_path_and_by_name(tmp_path, monkeypatch):
    folder = make_class_folders(tmp_path / "data", per_class=8)
    with pytest.warns(UserWarning, match="clip by clip"):
        train = load_dataset(str(folder), split="train")
    assert train.classes == ["crow", "owl", "wren"] and train.layout == "classes" and train.name == "birds"
    sets = all_splits(folder)
    ids = [c.clip_id for s in sets.values() for c in s]
    assert sorted(ids) == sorted(f"{lab}/c{k}.{['wav', 'flac', 'ogg'][k % 3]}" for lab in train.classes
                                 for k in range(8))
    assert all({c.label for c in s} == {0, 1, 2} for s in sets.values())  # stratified: every class in every split
    assert (len(sets["train"]), len(sets["val"]), len(sets["test"])) == (18, 3, 3)
    for c in sets["train"]:
        assert c.clip_id.split("/")[0] == train.classes[c.label]
    # the default length is the median clip length (0.3 .. 1.0 s here), stated in the description
    lengths = [sf.info(c.path).duration for s in sets.values() for c in s]
    assert train.seconds == pytest.approx(float(np.median(lengths)), abs=1e-3)
    assert "median of 24 clips" in train.describe() and str(folder) in train.describe()
    monkeypatch.setenv("TPRUNE_DATA", str(folder.parent))
    by_name = quiet("birds", split="train")
    assert [c.clip_id for c in by_name] == [c.clip_id for c in train] and by_name.root == str(folder)
    assert [c.clip_id for c in quiet("birds", root=folder, split="val")] == [c.clip_id for c in sets["val"]]


def test_seed_and_fractions_are_protocol_parameters(tmp_path):
    folder = make_class_folders(tmp_path, per_class=12)
    test = lambda **kw: [c.clip_id for c in quiet(folder, split="test", **kw)]  # noqa: E731
    assert test() == test(seed=0) and test(seed=1) != test(seed=0)
    assert len(test(fractions=[0.5, 0.25, 0.25])) == 9 and len(test()) == 6
    with pytest.raises(ConfigError, match="fractions"):
        quiet(folder, split="test", fractions=[1, 0, 0])
    with pytest.raises(ConfigError, match="unknown protocol parameter.*test_fold"):
        quiet(folder, split="test", test_fold=2)
    with pytest.raises(ConfigError, match="val_fraction"):
        quiet(folder, split="test", val_fraction=0.2)


def test_mixed_formats_rates_and_channels_featurize(tmp_cache, tmp_path):
    folder = make_class_folders(tmp_path)
    fs = load_features(folder, "all", frames=None, progress=False)
    cs = quiet(folder, split="all")
    assert fs.x.shape == (18, cs.default_frames(), 128) and torch.isfinite(fs.x).all()
    assert fs.ids == [c.clip_id for c in cs] and fs.classes == ["crow", "owl", "wren"]
    # an 8 kHz stereo FLAC comes out resampled: 0.4 s -> 38 frames of 10 ms, like a 16 kHz file of that length
    row = fs.ids.index("owl/c1.flac")
    assert int(fs.lengths[row]) == 38
    assert fs.path.name.startswith("birds-all-")


def test_cache_is_keyed_by_folder_and_contents(tmp_cache, tmp_path):
    folder = make_class_folders(tmp_path / "a")
    first = featurize(quiet(folder, split="all"), 32, progress=False)
    assert featurize(quiet(folder, split="all"), 32, progress=False).from_cache
    copy = tmp_path / "b" / "birds"
    shutil.copytree(folder, copy)                                  # same names, sizes and mtimes
    other = featurize(quiet(copy, split="all"), 32, progress=False)
    assert not other.from_cache and other.path != first.path
    write_tone(folder / "owl" / "new.wav", seconds=0.3)            # a clip added: nothing stale is served
    again = featurize(quiet(folder, split="all"), 32, progress=False)
    assert not again.from_cache and len(again) == len(first) + 1 and "owl/new.wav" in again.ids
    (folder / "owl" / "new.wav").unlink()
    assert featurize(quiet(folder, split="all"), 32, progress=False).path == first.path


# ------------------------------------------------------------------ pre-split folders and metadata.csv

def test_presplit_folders_keep_their_splits(tmp_path):
    folder = tmp_path / "presplit"
    for part, n in (("train", 4), ("val", 1), ("test", 2)):
        for label in ("up", "down"):
            (folder / part / label).mkdir(parents=True)
            for k in range(n):
                write_tone(folder / part / label / f"{k}.wav")
    (folder / "test" / "left").mkdir()                             # a class present in test only still counts
    write_tone(folder / "test" / "left" / "0.wav")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                             # given splits: nothing drawn, nothing warned
        sets = {s: load_dataset(folder, split=s) for s in ("train", "val", "test")}
    assert sets["train"].layout == "presplit" and sets["train"].classes == ["down", "left", "up"]
    assert {s: len(v) for s, v in sets.items()} == {"train": 8, "val": 2, "test": 5}
    assert all(c.clip_id.startswith(f"{s}/") for s, v in sets.items() for c in v)
    with pytest.raises(ConfigError, match="fractions.*gives its own splits"):
        load_dataset(folder, split="train", fractions=[0.8, 0.1, 0.1])
    (folder / "validation" / "up").mkdir(parents=True)             # two folders for one split: refused
    write_tone(folder / "validation" / "up" / "0.wav")
    with pytest.raises(DatasetError, match=r"\{'val': \['val', 'validation'\]\} name the same split"):
        load_dataset(folder, split="train")
    shutil.rmtree(folder / "validation")
    shutil.rmtree(folder / "val")                                  # without val/: carved from train, seeded
    with pytest.warns(UserWarning, match="train and val are drawn clip by clip"):
        val = load_dataset(folder, split="val", seed=3)
    assert 0 < len(val) < 8 and all(c.clip_id.startswith("train/") for c in val)


def test_metadata_groups_never_straddle(tmp_path):
    folder = make_grouped(tmp_path / "pets", sources=8, per_source=3)
    for seed in range(4):
        with warnings.catch_warnings():
            warnings.simplefilter("error")                         # split by group: no straddle warning
            sets = {s: load_dataset(folder, split=s, seed=seed) for s in ("train", "val", "test")}
        groups = {s: {c.group for c in v} for s, v in sets.items()}
        assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"]
        assert not groups["val"] & groups["test"]
        assert all(len(v) % 3 == 0 and len(v) > 0 for v in sets.values())  # whole recordings only
    assert sets["train"].classes == ["bark", "meow"] and sets["train"].layout == "metadata"
    assert sets["train"].protocol["split"] == "by group"


def test_metadata_split_column_is_used_and_checked(tmp_path):
    folder = make_grouped(tmp_path / "pets", sources=3, per_source=2)
    lines = (folder / "metadata.csv").read_text().splitlines()
    parts = {"rec0": "train", "rec1": "validation", "rec2": "test"}
    write_csv(folder, [lines[0] + ",split"] + [ln + "," + parts[ln.rsplit("-", 1)[1]] for ln in lines[1:]])
    sets = {s: load_dataset(folder, split=s) for s in ("train", "val", "test")}
    assert {c.group.split("-")[1] for c in sets["val"]} == {"rec1"} and len(sets["test"]) == 4
    # a group given in two splits is refused, naming the CSV
    write_csv(folder, [lines[0] + ",split"] + [ln + "," + ("test" if i == 1 else parts[ln.rsplit("-", 1)[1]])
                                               for i, ln in enumerate(lines[1:])])
    with pytest.raises(DatasetError, match=r"metadata.csv: groups \['bark-rec0'\] are in both"):
        load_dataset(folder, split="test")
    write_csv(folder, [lines[0] + ",split"] + [ln + ",dev" for ln in lines[1:]])
    with pytest.raises(DatasetError, match=r"metadata.csv, line 2: split 'dev'; expected one of train, val, test"):
        load_dataset(folder, split="test")


def test_metadata_errors_name_the_file(tmp_path):
    folder = make_grouped(tmp_path / "pets", sources=3, per_source=1)
    (folder / "clips" / "meow1_0.wav").unlink()
    with pytest.raises(DatasetError, match=r"1 file listed in .*metadata.csv is missing: .*meow1_0.wav"):
        load_dataset(folder, split="train")
    write_csv(folder, ["file,category", "clips/bark0_0.wav,bark"])
    with pytest.raises(DatasetError, match=r"metadata.csv has columns \['category', 'file'\], not file,label"):
        load_dataset(folder, split="train")
    write_csv(folder, ["file,label", "clips/bark0_0.wav,bark", "clips/bark1_0.wav,bark"])
    with pytest.raises(DatasetError, match=r"metadata.csv: 1 class found \(bark\); need at least 2 labels"):
        load_dataset(folder, split="train")


# ------------------------------------------------------------------ bad folders and names

def test_bad_folders_are_named(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match=f"{empty}: matches no dataset layout \\(empty folder\\)"):
        load_dataset(empty)
    folder = make_class_folders(tmp_path / "x")
    (folder / "bat").mkdir()
    with pytest.raises(DatasetError, match=f"{folder / 'bat'}: no audio files"):
        load_dataset(folder)
    with pytest.raises(DatasetError, match=f"{tmp_path / 'nowhere'}: no such folder"):
        load_dataset(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="dataset 'birdz'.*a path to a dataset folder"):
        load_dataset("birdz", root=tmp_path / "x")


def test_a_folder_with_one_class_says_so_in_one_line(tmp_path):
    folder = make_class_folders(tmp_path, classes=("owl",))
    with pytest.raises(DatasetError) as info:
        load_dataset(folder)
    assert str(info.value).startswith(f"{folder}: 1 class folder found (owl); need at least 2 (")
    assert len(str(info.value)) < 200 and "matches no dataset layout" not in str(info.value)
    (folder / "wren").mkdir()                                      # a second class folder, but empty
    with pytest.raises(DatasetError, match=r"1 class folder found \(owl\); need at least 2; wren holds no audio"):
        load_dataset(folder)


def test_counts_in_messages_agree_with_their_nouns(tmp_path):
    folder = make_grouped(tmp_path / "pets", sources=3, per_source=1)
    for gone in ("bark0_0", "meow1_0"):
        (folder / "clips" / f"{gone}.wav").unlink()
    with pytest.raises(DatasetError, match=r"2 files listed in .*metadata.csv are missing, e.g. \["):
        load_dataset(folder)
    birds = make_class_folders(tmp_path / "b")
    write_tone(birds / "stray.wav")
    with pytest.warns(UserWarning, match="1 audio file lies outside any class folder and is not used"):
        one = load_dataset(birds, split="train").subset([0])
    assert "1 clip, 3 classes" in one.describe()
    write_tone(birds / "stray2.wav")
    with pytest.warns(UserWarning, match="2 audio files lie outside any class folder and are not used"):
        load_dataset(birds, split="train")


def test_a_path_to_a_builtin_layout_loads_that_dataset(tmp_path):
    us8k = make_us8k(tmp_path, folds=(1, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                            # the two-class copy warns of absent classes
        cs = load_dataset(str(us8k), split="test")
        assert cs.name == "urbansound8k" and len(cs) == len(load_dataset("urbansound8k", us8k, "test"))


# ------------------------------------------------------------------ featurizing errors name the file

def test_one_sample_wav_is_named_by_load_features(tmp_cache, tmp_path):
    folder = make_class_folders(tmp_path)
    tiny = folder / "owl" / "tiny.wav"
    sf.write(str(tiny), np.array([0.1]), 16000)
    with pytest.raises(AudioError, match=f"{tiny}: 1 sample at 16000 Hz is shorter than one 25 ms"):
        load_features(folder, "all", frames=32, progress=False)
    fs = load_features(folder, "all", frames=32, progress=False, on_error="skip")
    assert [s[1] for s in fs.skipped] == [str(tiny)] and "owl/tiny.wav" not in fs.ids


def test_bare_featurizing_errors_are_wrapped_with_the_file(tmp_cache, tmp_path, monkeypatch):
    folder = make_class_folders(tmp_path)
    def broken(*a, **kw):
        raise RuntimeError("kaldi exploded")
    monkeypatch.setattr(cache, "fbank", broken)
    with pytest.raises(AudioError, match=r"birds/crow/c0.wav: featurizing failed: RuntimeError: kaldi exploded"):
        load_features(folder, "all", frames=32, progress=False)
    monkeypatch.setattr(cache, "fbank", lambda *a, **kw: torch.full((5, 128), float("nan")))
    with pytest.raises(AudioError, match="c0.wav: the fbank holds NaN"):
        load_features(folder, "all", frames=32, progress=False)


# ------------------------------------------------------------------ listing

def test_find_datasets_lists_folders_under_their_names(tmp_path):
    root = tmp_path / "data"
    make_class_folders(root)
    make_grouped(root / "pets")
    make_us8k(root, folds=(1, 2))                                  # audio/fold<k> looks like class folders
    (root / "speechcommands-extra-v0.01" / "yes").mkdir(parents=True)  # part of speechcommands, not listed
    (root / "speechcommands-extra-v0.01" / "no").mkdir()
    for w in ("yes", "no"):
        write_tone(root / "speechcommands-extra-v0.01" / w / "a.wav")
    (root / "notes").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        entries = {e["name"]: e for e in find_datasets(root) if e["source"] == "real"}
        assert entries["birds"]["found"] and entries["birds"]["clips"] == 18 and entries["birds"]["classes"] == 3
        assert entries["pets"]["layout"] == "metadata" and entries["pets"]["class_names"] == ["bark", "meow"]
        assert entries["urbansound8k"]["found"]
        assert set(entries) == {"urbansound8k", "speechcommands", "esc50", "voxceleb1", "birds", "pets"}
        assert [e["name"] for e in find_datasets(root / "birds") if e["found"] and e["source"] == "real"] == ["birds"]
        (root / "birds" / "owl" / "bad.wav").write_bytes(b"")      # listed, but its files are not read here
        (root / "pets" / "clips" / "meow0_0.wav").unlink()
        entries = {e["name"]: e for e in find_datasets(root)}
    assert entries["birds"]["clips"] == 19
    assert not entries["pets"]["found"] and "meow0_0.wav" in entries["pets"]["problem"]


# ------------------------------------------------------------------ VoxCeleb1

def test_voxceleb1_official_split_by_path_and_name(tmp_path, monkeypatch):
    folder = make_voxceleb1(tmp_path / "data", speakers=3, videos=3, utterances=2)
    sets = {s: load_dataset(folder, split=s) for s in ("train", "val", "test")}
    assert sets["train"].name == "voxceleb1" and sets["train"].classes == ["id10001", "id10002", "id10003"]
    assert all(len(v) == 6 for v in sets.values())
    assert {c.group.split("/")[1][-1] for c in sets["test"]} == {"0"}  # video 0 of every speaker
    assert all(c.clip_id.split("/")[0] == sets["test"].classes[c.label] for c in sets["test"])
    assert sets["test"].seconds == 4.0 and sets["test"].default_frames() == 400
    assert "first 4 s" in sets["test"].describe() and sets["test"].protocol["videos_in_two_splits"] == 0
    monkeypatch.setenv("TPRUNE_DATA", str(folder.parent))
    assert [c.clip_id for c in load_dataset("voxceleb1", split="val")] == [c.clip_id for c in sets["val"]]
    assert load_dataset("voxceleb1", split="val", seconds=2.5).default_frames() == 256
    entry = next(e for e in find_datasets() if e["name"] == "voxceleb1")
    assert entry["found"] and entry["clips"] == 18 and entry["classes"] == 3


def test_voxceleb1_features_are_cropped_from_the_start(tmp_cache, tmp_path):
    folder = make_voxceleb1(tmp_path, speakers=2, videos=3, utterances=1, seconds=0.5)
    long = folder / "wav" / "id10001" / "vid0x0" / "00001.wav"
    write_tone(long, seconds=5.0, freq=300)
    fs = load_features(folder, "test", frames=None, norm=(0.0, 0.5), progress=False)
    assert fs.x.shape[1] == 400 and int(fs.lengths[fs.ids.index("id10001/vid0x0/00001")]) == 498


def test_voxceleb1_bad_lines_are_named(tmp_path):
    folder = make_voxceleb1(tmp_path, speakers=2, videos=3, utterances=1)
    listing = folder / "iden_split.txt"
    text = listing.read_text()
    listing.write_text(text + "4 id10001/vid0x1/00001.wav\n")
    with pytest.raises(DatasetError, match=r"iden_split.txt, line 7: split '4'; expected 1 \(train\)"):
        load_dataset(folder)
    listing.write_text(text + "1 id10009/vidz/00001.wav\n")
    with pytest.raises(DatasetError, match=r"1 file listed in .*iden_split.txt is missing: .*id10009"):
        load_dataset(folder)


# ------------------------------------------------------------------ real clips, re-encoded

@pytest.mark.realdata
def test_real_clips_in_mixed_formats(tmp_cache, tmp_path, data_root, monkeypatch):
    """Real Speech Commands clips (FLAC, Ogg Opus) copied into class folders, some re-encoded to 8 kHz stereo WAV:
    they load, featurize, and the re-encoded clips keep their content below 4 kHz."""
    folder = tmp_path / "data" / "words"
    originals = {}
    for word in ("yes", "no", "stop"):
        (folder / word).mkdir(parents=True)
        flacs = sorted((data_root / "speechcommands-test-v0.02" / word).glob("*.flac"))[:4]
        oggs = sorted((data_root / "speechcommands-extra-v0.01" / word).glob("*.ogg"))[:3]
        for k, src in enumerate(flacs):
            if k % 2:
                x8 = AF.resample(load_audio(src), 16000, 8000).numpy()
                sf.write(str(folder / word / f"{src.stem}.wav"), np.stack([x8, 0.8 * x8], 1), 8000)
                originals[f"{word}/{src.stem}.wav"] = src
            else:
                shutil.copy(src, folder / word / src.name)
        for src in oggs:
            shutil.copy(src, folder / word / src.name)
    monkeypatch.setenv("TPRUNE_DATA", str(folder.parent))
    cs = quiet("words", split="all")
    assert cs.classes == ["no", "stop", "yes"] and len(cs) == 21 and 0.5 < cs.seconds <= 1.0
    fs = load_features("words", "all", frames=None, progress=False, norm=(0.0, 0.5))
    assert fs.x.shape == (21, 112, 128) and not fs.skipped
    low = 80  # mel bins below ~3.3 kHz: what an 8 kHz file still holds
    for cid, src in originals.items():
        ref = cache.fbank(load_audio(src))
        row = fs.ids.index(cid)
        got = fs.x[row]                                            # normalize(x, 0, 0.5) leaves x unchanged
        n = min(len(ref), int(fs.lengths[row]))
        r = np.corrcoef(ref[:n, :low].flatten().numpy(), got[:n, :low].flatten().numpy())[0, 1]
        assert r > 0.99, (cid, r)


def test_clip_by_clip_warning_is_given_once_per_folder(tmp_path):
    """Every run loads each split again: the ungrouped-split warning must not repeat for each load."""
    folder = make_class_folders(tmp_path / "data", per_class=8)
    with pytest.warns(UserWarning, match="drawn clip by clip") as seen:
        for split in ("train", "val", "test", "train"):
            load_dataset(folder, split=split)
    assert sum("drawn clip by clip" in str(w.message) for w in seen) == 1
