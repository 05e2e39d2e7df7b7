"""Dataset layouts, fixed splits disjoint by group, the synthetic generator, and data-root errors."""
import warnings

import numpy as np
import pytest
import torch

from conftest import SC_WORDS, make_speechcommands, make_us8k, write_tone
from tprune_core.datasets import (SyntheticDataWarning, detect_layout, find_datasets, load_dataset, synthetic)
from tprune_core.errors import ConfigError, DatasetError


def splits_of(name, root=None, **protocol):
    return {s: load_dataset(name, root, s, **protocol) for s in ("train", "val", "test")}


def assert_disjoint(sets, key):
    for a in sets:
        for b in sets:
            if a < b:
                assert not {key(c) for c in sets[a]} & {key(c) for c in sets[b]}, (a, b)


# ------------------------------------------------------------------ official layouts, built in tmp_path

def test_urbansound8k_official_folds_and_fsid(tmp_path):
    folder = make_us8k(tmp_path, folds=(1, 2, 3), recordings=6, slices=3)
    sets = splits_of("urbansound8k", folder)
    assert {c.clip_id.split("/")[0] for c in sets["test"]} == {"fold3"}  # default: the last fold
    assert {c.clip_id.split("/")[0] for c in sets["train"].clips + sets["val"].clips} == {"fold1", "fold2"}
    assert len(sets["val"]) > 0 and len(sets["train"]) > len(sets["val"])
    assert_disjoint(sets, key=lambda c: c.group)  # fsID
    assert sum(len(s) for s in sets.values()) == 3 * 6 * 3 == len(load_dataset("urbansound8k", folder, "all"))
    # the official ids stay: a copy holding classes 0 and 1 only still has all ten, in official order
    assert sets["test"].classes[:2] == ["air_conditioner", "car_horn"] and len(sets["test"].classes) == 10
    assert sets["test"].layout == "official"
    other = splits_of("urbansound8k", folder, test_fold=1)
    assert {c.clip_id.split("/")[0] for c in other["test"]} == {"fold1"}
    assert_disjoint(other, key=lambda c: c.group)


def test_urbansound8k_without_some_classes_keeps_official_ids(tmp_path):
    """A copy missing classes (a subset, or a fold without a rare class) is loaded, never renumbered, and warned
    about; a class id that contradicts the official list is refused, naming the CSV."""
    folder = make_us8k(tmp_path, folds=(1, 2), recordings=4)
    meta = folder / "metadata" / "UrbanSound8K.csv"
    lines = meta.read_text().splitlines()
    # relabel class 1 (car_horn) as class 7 (jackhammer): the copy now holds ids 0 and 7 only
    meta.write_text("\n".join([lines[0]] + [ln.replace(",1,car_horn", ",7,jackhammer") for ln in lines[1:]]) + "\n")
    with pytest.warns(UserWarning, match="car_horn"):
        cs = load_dataset("urbansound8k", folder, "all")
    assert cs.classes[7] == "jackhammer" and cs.classes[1] == "car_horn" and len(cs.classes) == 10
    assert sorted({c.label for c in cs}) == [0, 7]
    meta.write_text("\n".join([lines[0]] + [ln.replace(",1,car_horn", ",3,siren") for ln in lines[1:]]) + "\n")
    with pytest.raises(DatasetError, match="UrbanSound8K.csv.*official"):
        load_dataset("urbansound8k", folder, "all")


def test_urbansound8k_split_is_seeded(tmp_path):
    folder = make_us8k(tmp_path, folds=(1, 2), recordings=20, slices=2)
    val = lambda seed: {c.group for c in load_dataset("urbansound8k", folder, "val", seed=seed)}  # noqa: E731
    assert val(0) == val(0)
    assert any(val(0) != val(s) for s in (1, 2, 3))


def test_urbansound8k_errors(tmp_path):
    folder = make_us8k(tmp_path, folds=(1, 2))
    with pytest.raises(ConfigError, match="test_fold=7"):
        load_dataset("urbansound8k", folder, "test", test_fold=7)
    with pytest.raises(ConfigError, match="unknown protocol"):
        load_dataset("urbansound8k", folder, "test", val_fold=1)
    next((folder / "audio" / "fold2").iterdir()).unlink()
    with pytest.raises(DatasetError, match="missing"):
        load_dataset("urbansound8k", folder, "test")
    one = make_us8k(tmp_path / "one", folds=(5,))
    with pytest.raises(DatasetError, match="at least two folds"):
        load_dataset("urbansound8k", one)


def test_esc50_folds_and_sources(fake_esc50):
    sets = splits_of("esc50", fake_esc50)
    assert [len(sets[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert {c.clip_id[0] for c in sets["test"]} == {"5"} and {c.clip_id[0] for c in sets["val"]} == {"4"}
    assert_disjoint(sets, key=lambda c: c.group)
    assert sets["test"].classes == ["dog", "rain"]
    assert {c.clip_id[0] for c in load_dataset("esc50", fake_esc50, "test", test_fold=1, val_fold=2)} == {"1"}
    with pytest.raises(ConfigError, match="must differ"):
        load_dataset("esc50", fake_esc50, "test", test_fold=3, val_fold=3)


def test_esc50_source_in_two_folds_is_refused(fake_esc50):
    csv = fake_esc50 / "meta" / "esc50.csv"
    lines = csv.read_text().splitlines()
    src_fold5 = lines[-1].split(",")[5]
    lines[1] = ",".join(lines[1].split(",")[:5] + [src_fold5, "A"])  # a fold-1 clip now claims a fold-5 source
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="both"):
        load_dataset("esc50", fake_esc50, "test")


def test_speechcommands_official_lists_and_unknown(tmp_path):
    folder = make_speechcommands(tmp_path, official=True, speakers=12)
    sets = splits_of("speechcommands", folder)
    assert sets["train"].classes == SC_WORDS + ["_unknown_"]
    assert [len(sets[s]) for s in ("train", "val", "test")] == [11 * 8, 11 * 2, 11 * 2]
    assert_disjoint(sets, key=lambda c: c.group)  # speakers
    unknown = [c for c in sets["train"] if c.label == 10]
    assert unknown and all(c.clip_id.startswith("bed/") for c in unknown)
    everything = load_dataset("speechcommands", folder, "all")
    assert not any("_background_noise_" in c.path for c in everything)
    with pytest.raises(ConfigError, match="official"):
        load_dataset("speechcommands", folder, "train", seed=3)


def test_speechcommands_shared_copy_split_by_speaker(tmp_path):
    folder = make_speechcommands(tmp_path, official=False, speakers=40)
    sets = splits_of("speechcommands", folder)
    assert_disjoint(sets, key=lambda c: c.group)
    n = sum(len(s) for s in sets.values())
    assert abs(len(sets["train"]) / n - 0.7) < 0.05 and len(sets["val"]) and len(sets["test"])
    unknown = [c for s in sets.values() for c in s if c.label == 10]
    assert unknown and {c.group for c in unknown} <= {c.group for s in sets.values() for c in s if c.label == 0}
    again = load_dataset("speechcommands", folder, "test")
    assert [c.clip_id for c in again] == [c.clip_id for c in sets["test"]]
    other = load_dataset("speechcommands", folder, "test", seed=1, fractions=(0.5, 0.25, 0.25))
    assert [c.clip_id for c in other] != [c.clip_id for c in sets["test"]]


def make_speech_extra(root, speakers=30, words=("yes", "no", "up", "down", "left", "right", "stop", "go")):
    """An extra-speakers folder as shared: no on/off, `_unknown_` words in the name, speakers not in the test copy."""
    folder = root / "speechcommands-extra-v0.01"
    for w in list(words) + ["_unknown_"]:
        (folder / w).mkdir(parents=True)
        for i in range(speakers):
            name = f"cat_{0xE0 + i:08x}_nohash_0.ogg" if w == "_unknown_" else f"{0xE0 + i:08x}_nohash_0.ogg"
            write_tone(folder / w / name, subtype="VORBIS")
    return folder


def test_speechcommands_pooled_with_extra_speakers(tmp_path):
    """Train and validate on the extra folder plus part of the test copy, test on the test copy's other speakers
    only: speaker-disjoint, every class in test, on/off trained from the test copy alone."""
    folder = make_speechcommands(tmp_path, official=False, speakers=40)
    make_speech_extra(tmp_path)
    sets = {s: load_dataset("speechcommands", folder, s, extra=True) for s in ("train", "val", "test")}
    assert_disjoint(sets, key=lambda c: c.group)
    assert not any(c.clip_id.startswith("extra/") for s in ("val", "test") for c in sets[s])   # test copy only
    assert sum(c.clip_id.startswith("extra/") for c in sets["train"]) == 9 * 30                  # all extra trains
    assert {c.label for c in sets["test"]} == set(range(11))
    on_off = [c for c in sets["train"] if c.label in (6, 7)]
    assert on_off and not any(c.clip_id.startswith("extra/") for c in on_off)
    test_copy = len(load_dataset("speechcommands", folder, "all", extra=False))   # the copy alone
    assert abs(len(sets["test"]) / test_copy - 0.4) < 0.1
    assert sets["test"].protocol["split"] == "pooled by speaker"
    with pytest.raises(ConfigError, match="fractions"):
        load_dataset("speechcommands", folder, "train", extra=True, fractions=(0.7, 0.15, 0.15))


def test_speechcommands_pooled_refuses_a_shared_speaker(tmp_path):
    folder = make_speechcommands(tmp_path, official=False, speakers=40)
    extra = make_speech_extra(tmp_path)
    spoken_in_test = sorted((folder / "yes").iterdir())[0].stem.split("_nohash_")[0]
    write_tone(extra / "yes" / f"{spoken_in_test}_nohash_1.ogg", subtype="VORBIS")
    # the speaker may land in one split by chance; over seeds, some split must straddle and be refused
    errors = 0
    for seed in range(6):
        try:
            [load_dataset("speechcommands", folder, s, extra=True, seed=seed) for s in ("train", "test")]
        except DatasetError as exc:
            assert "speaker" in str(exc)
            errors += 1
    assert errors


def test_speechcommands_extra_missing_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("TPRUNE_DATA", raising=False)
    folder = make_speechcommands(tmp_path, official=False, speakers=12)
    with pytest.raises(DatasetError, match="extra"):
        load_dataset("speechcommands", folder, "train", extra=True)


# ------------------------------------------------------------------ layout detection and data roots

def test_unknown_layout_names_the_folder_and_expected_layouts(tmp_path):
    junk = tmp_path / "my_audio"
    junk.mkdir()
    write_tone(junk / "a.wav")
    with pytest.raises(DatasetError) as info:
        detect_layout(junk)
    assert str(junk) in str(info.value) and "metadata/UrbanSound8K.csv" in str(info.value)
    assert "meta/esc50.csv" in str(info.value) and "testing_list.txt" in str(info.value)
    with pytest.raises(DatasetError, match=str(junk)):
        load_dataset("urbansound8k", junk)
    with pytest.raises(DatasetError, match=str(junk)):
        find_datasets(junk)


def test_root_may_be_the_dataset_or_its_parent_and_the_data_variable_is_used(fake_esc50, monkeypatch):
    n = len(load_dataset("esc50", fake_esc50, "all"))
    assert n == len(load_dataset("esc50", fake_esc50.parent, "all")) == 10
    assert detect_layout(fake_esc50) == ("esc50", "official")
    monkeypatch.setenv("TPRUNE_DATA", str(fake_esc50.parent))
    assert len(load_dataset("esc50", split="all")) == n
    monkeypatch.delenv("TPRUNE_DATA")
    with pytest.raises(DatasetError, match="TPRUNE_DATA"):
        load_dataset("esc50")


def test_find_datasets_reports_found_and_missing(fake_esc50):
    entries = {e["name"] + e.get("flavour", ""): e for e in find_datasets(fake_esc50.parent)}
    assert entries["esc50"]["found"] and entries["esc50"]["clips"] == 10 and entries["esc50"]["classes"] == 2
    assert entries["esc50"]["splits"] == {"train": 6, "val": 2, "test": 2}
    assert not entries["urbansound8k"]["found"] and entries["urbansound8k"]["path"] is None
    assert entries["syntheticspeech"]["source"] == "synthetic" and entries["syntheticspeech"]["clips"] == 1000


def test_default_falls_back_to_synthetic_loudly(tmp_path):
    with pytest.warns(SyntheticDataWarning, match="SYNTHETIC"):
        cs = load_dataset("default:speech", tmp_path, "train", seed=1, test_fold=3)
    assert cs.source == "synthetic" and cs.name == "synthetic" and "SYNTHETIC" in cs.describe()
    assert "test_fold" in cs.note  # the parameter that did not apply is reported, not dropped silently
    assert cs.protocol["flavour"] == "speech" and cs.protocol["seed"] == 1


def test_default_uses_real_data_when_present(tmp_path):
    make_us8k(tmp_path, folds=(1, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SyntheticDataWarning)   # (the two-class copy does warn of absent classes)
        cs = load_dataset("default", tmp_path, "test")
    assert cs.source == "real" and cs.name == "urbansound8k"


def test_bad_names_and_splits():
    with pytest.raises(ConfigError, match="dataset 'audioset'"):
        load_dataset("audioset")
    with pytest.raises(ConfigError, match="split"):
        load_dataset("synthetic", split="dev")
    with pytest.raises(ConfigError, match="flavour"):
        synthetic(flavour="music")


# ------------------------------------------------------------------ synthetic

@pytest.mark.parametrize("flavour,seconds", [("speech", 1.0), ("ambient", 4.0)])
def test_synthetic_is_deterministic_and_split_by_source(flavour, seconds):
    sets = {s: synthetic(s, flavour=flavour) for s in ("train", "val", "test")}
    assert [len(sets[s]) for s in ("train", "val", "test")] == [700, 150, 150]
    assert_disjoint(sets, key=lambda c: c.group)
    for s in sets:  # every source emits each class once: balanced
        assert np.bincount([c.label for c in sets[s]], minlength=10).tolist() == [len(sets[s]) // 10] * 10
    clip = sets["val"][3]
    assert clip.path.startswith(f"synthetic://{flavour}/seed0/")
    a, b = sets["val"].load(3), synthetic("val", flavour=flavour).load(3)
    assert torch.equal(a, b) and a.numel() == int(seconds * 16000) and a.dtype == torch.float32
    assert torch.isfinite(a).all() and 0 < a.abs().max() <= 0.9 + 1e-6
    assert not torch.equal(a, synthetic("val", flavour=flavour, seed=1).load(3))
    assert sets["val"].load(3, sample_rate=8000).numel() == int(seconds * 8000)
    assert sets["train"].default_frames() == (112 if flavour == "speech" else 400)


def test_synthetic_speech_is_sparse_and_ambient_dense():
    def active_fraction(cs):  # fraction of 10 ms frames within 30 dB of the clip's loudest
        fracs = []
        for i in range(20):
            frames = cs.load(i).reshape(-1, 160).pow(2).mean(1)
            fracs.append((frames > frames.max() * 1e-3).float().mean().item())
        return np.mean(fracs)
    assert active_fraction(synthetic("test", flavour="speech")) < 0.6
    assert active_fraction(synthetic("test", flavour="ambient")) > 0.95


@pytest.mark.parametrize("flavour", ["speech", "ambient"])
def test_synthetic_classes_are_learnable(flavour):
    """A linear model on time-pooled log-mel statistics separates the classes well above chance (0.1)."""
    from sklearn.linear_model import LogisticRegression
    from tprune_core.features import fbank

    def data(split):
        cs = synthetic(split, flavour=flavour, per_class=20, seconds=1.0)
        feats = []
        for i in range(len(cs)):
            fb = fbank(cs.load(i))
            top = fb[fb.mean(1).topk(10).indices]  # the loudest frames carry the event
            feats.append(torch.cat([top.mean(0), top.std(0), fb.mean(0)]).numpy())
        return np.array(feats), np.array([c.label for c in cs])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: threads only add overhead on a busy machine
    try:
        (xtr, ytr), (xte, yte) = data("train"), data("test")
    finally:
        torch.set_num_threads(threads)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    acc = LogisticRegression(max_iter=2000).fit((xtr - mu) / sd, ytr).score((xte - mu) / sd, yte)
    assert acc > 0.5, acc


# ------------------------------------------------------------------ the shared real data

@pytest.mark.realdata
def test_real_urbansound8k(data_root):
    everything = load_dataset("urbansound8k", data_root, "all")
    assert len(everything) == 1710 and len(everything.classes) == 10
    assert sorted(everything.class_counts().values()) == sorted([200, 69, 200, 200, 200, 189, 67, 216, 169, 200])
    for test_fold, train_fold in ((10, "fold1"), (1, "fold10")):
        sets = splits_of("urbansound8k", data_root, test_fold=test_fold)
        assert {c.clip_id.split("/")[0] for c in sets["test"]} == {f"fold{test_fold}"}
        assert {c.clip_id.split("/")[0] for c in sets["train"].clips + sets["val"].clips} == {train_fold}
        assert_disjoint(sets, key=lambda c: c.group)
        n_train_fold = len(sets["train"]) + len(sets["val"])
        assert 0.1 < len(sets["val"]) / n_train_fold < 0.25
        assert len(set(c.label for c in sets["val"])) == 10
        assert sum(len(s) for s in sets.values()) == 1710


@pytest.mark.realdata
def test_real_speechcommands_pooled_protocol(data_root):
    """The shared data's speech protocol: >= 1,500 test clips of held-out test-copy speakers, all 11 classes."""
    sets = {s: load_dataset("speechcommands", data_root, s, extra=True) for s in ("train", "val", "test")}
    assert_disjoint(sets, key=lambda c: c.group)
    assert len(sets["test"]) >= 1500 and {c.label for c in sets["test"]} == set(range(11))
    assert sum(len(s) for s in sets.values()) == 4482 + 6894


@pytest.mark.realdata
def test_real_speechcommands(data_root):
    """The test-set copy alone (extra=False): 70/15/15 by speaker."""
    everything = load_dataset("speechcommands", data_root, "all", extra=False)
    assert len(everything) == 4482 and len(everything.classes) == 11
    assert everything.class_counts()["_unknown_"] == 408
    sets = splits_of("speechcommands", data_root, extra=False)
    assert_disjoint(sets, key=lambda c: c.group)
    assert sum(len(s) for s in sets.values()) == 4482
    assert 200 <= len({c.group for c in everything}) <= 320
    assert abs(len(sets["train"]) / 4482 - 0.7) < 0.02
    assert all(len(set(c.label for c in sets[s])) == 11 for s in sets)


def test_the_shared_speech_copy_pools_the_extra_speakers_by_default(data_root):
    """With the extra folder present, the default Speech Commands protocol is the pooled one: a test split of the
    copy's held-out speakers only (>= 1,500 clips, every class), and the same clips as asking for it."""
    from tprune_core.datasets import SPEECH_CLASSES, load_dataset, split_identity
    test = load_dataset("speechcommands", split="test")
    assert len(test) >= 1500 and {c.label for c in test.clips} == set(range(len(SPEECH_CLASSES)))
    assert not any(c.clip_id.startswith("extra/") for c in test.clips)
    assert [c.clip_id for c in test.clips] == [c.clip_id for c in load_dataset("speechcommands", split="test",
                                                                                 extra=True).clips]
    assert split_identity("speechcommands", {}) == "speech-pooled-2"
    assert split_identity("speechcommands", {"extra": False}) is None
    assert len(load_dataset("speechcommands", split="test", extra=False)) < len(test)


def test_auto_pools_only_an_extra_folder_beside_the_copy(tmp_path, monkeypatch):
    """A test copy elsewhere keeps its own 70/15/15 split even when $TPRUNE_DATA holds an extra folder."""
    folder = make_speechcommands(tmp_path / "mine", official=False, speakers=40)
    make_speech_extra(tmp_path / "data")
    monkeypatch.setenv("TPRUNE_DATA", str(tmp_path / "data"))
    assert load_dataset("speechcommands", folder, "test").protocol["split"] == "by speaker"
    make_speech_extra(tmp_path / "mine")
    assert load_dataset("speechcommands", folder, "test").protocol["split"] == "pooled by speaker"


def test_a_built_in_dataset_is_one_record(tmp_path, monkeypatch):
    """Adding a built-in dataset adds one `Builtin` record: finding it, its layout, its splits and its protocol
    line all come from the record."""
    from tprune_core.data import datasets as D
    from tprune_core.data.clips import Clip

    def build(folder, layout, seed=0):
        clips = {s: [Clip(str(folder / f"{s}{i}.wav"), i % 2, f"{s}{i}", f"{s}{i}") for i in range(4)]
                 for s in ("train", "val", "test")}
        return ["a", "b"], clips, {"seed": seed}, 1.0

    record = D.Builtin("toyset", ("ToySet",), ("official: toy.txt",),
                       lambda f: "official" if (f / "toy.txt").is_file() else None, build,
                       lambda protocol: f"toy split, seed {protocol.get('seed', 0)}")
    monkeypatch.setitem(D.BUILTINS, "toyset", record)
    (tmp_path / "ToySet").mkdir()
    (tmp_path / "ToySet" / "toy.txt").write_text("")
    assert D.locate("toyset", tmp_path) == (tmp_path / "ToySet", "official")
    clips = D.load_dataset("toyset", tmp_path, "val")
    assert clips.classes == ["a", "b"] and len(clips.clips) == 4 and D.is_builtin("toyset")
    assert D.describe_protocol("toyset", {"seed": 3}) == "toy split, seed 3"
    with pytest.raises(DatasetError, match="ToySet"):
        D.locate("toyset", tmp_path / "ToySet" / "nothing-here")
