"""Feature cache: a second load hits the disk, any changed parameter misses it, normalization and bad files."""
import os

import numpy as np
import pytest
import torch

from conftest import write_tone
from tprune_core.audio import load_audio
from tprune_core.cache import featurize, load_features
from tprune_core.datasets import ClipSet, load_dataset
from tprune_core.errors import AudioError, ConfigError
from tprune_core.features import NORM_STATS, FeatureConfig, fbank, normalize, pad_or_crop

SYN = dict(flavour="speech", per_class=5)  # 50 clips: 30 train / 10 val / 10 test, featurized in well under a second


def forbid_loading(monkeypatch):
    def boom(self, i, sample_rate=16000):
        raise AssertionError("audio was read although the cache should have been used")
    monkeypatch.setattr(ClipSet, "load", boom)


def test_second_load_hits_the_cache(tmp_cache, monkeypatch):
    first = load_features("synthetic", "val", 112, progress=False, **SYN)
    assert not first.from_cache and first.path.is_file() and first.path.is_relative_to(tmp_cache)
    forbid_loading(monkeypatch)
    second = load_features("synthetic", "val", 112, progress=False, **SYN)
    assert second.from_cache and second.path == first.path
    assert torch.equal(first.x, second.x) and torch.equal(first.y, second.y) and first.ids == second.ids
    assert second.x.dtype == torch.float32 and second.x.shape == (10, 112, 128)
    assert not list(tmp_cache.rglob("*.tmp"))  # atomic writes leave no temporary files


@pytest.mark.parametrize("change", [dict(frames=128), dict(mel_bins=64), dict(seed=1), dict(per_class=6),
                                   dict(seconds=0.5), dict(flavour="ambient"), dict(sample_rate=8000)])
def test_any_changed_parameter_misses_the_cache(tmp_cache, change):
    base = dict(frames=112, mel_bins=128, sample_rate=16000, **SYN)
    old = featurize(load_dataset("synthetic", split="val", **{k: base[k] for k in SYN}), base["frames"],
                    base["mel_bins"], base["sample_rate"], progress=False)
    new_args = dict(base, **change)
    clips = load_dataset("synthetic", split="val", flavour=new_args["flavour"], per_class=new_args["per_class"],
                         **{k: new_args[k] for k in ("seed", "seconds") if k in new_args})
    new = featurize(clips, new_args["frames"], new_args["mel_bins"], new_args["sample_rate"], progress=False)
    assert not new.from_cache and new.path != old.path
    assert len(list((tmp_cache / "features").glob("*.pt"))) == 2


def test_changed_file_misses_the_cache(tmp_cache, fake_esc50):
    first = load_features("esc50", "test", 16, root=fake_esc50, norm="esc50", progress=False)
    assert load_features("esc50", "test", 16, root=fake_esc50, norm="esc50", progress=False).from_cache
    clip = load_dataset("esc50", fake_esc50, "test")[0]
    write_tone(clip.path, seconds=0.2, freq=1234.0)  # new content, size and mtime
    again = load_features("esc50", "test", 16, root=fake_esc50, norm="esc50", progress=False)
    assert not again.from_cache and again.path != first.path
    assert not torch.equal(again.x[0], first.x[0]) and torch.equal(again.x[1], first.x[1])
    st = os.stat(clip.path)
    os.utime(clip.path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # only the mtime changes
    assert not load_features("esc50", "test", 16, root=fake_esc50, norm="esc50", progress=False).from_cache


def test_features_match_the_direct_pipeline(tmp_cache, fake_esc50):
    fs = load_features("esc50", "test", 16, root=fake_esc50, norm="esc50", progress=False)
    clips = load_dataset("esc50", fake_esc50, "test")
    mean, std = NORM_STATS["esc50"]
    for i, clip in enumerate(clips):
        expected = normalize(pad_or_crop(fbank(load_audio(clip.path)), 16), mean, std)
        assert fs.ids[i] == clip.clip_id and fs.y[i] == clip.label
        assert torch.allclose(fs.x[i], expected, atol=2e-3)  # float16 storage
    assert fs.norm == (mean, std) and fs.classes == ["dog", "rain"] and fs.source == "real"
    assert fs.lengths.tolist() == [8, 8]  # 0.1 s clips: 8 real frames, padded to 16


def test_train_normalization_uses_training_statistics(tmp_cache):
    val = load_features("synthetic", "val", 112, progress=False, **SYN)
    train = load_features("synthetic", "train", 112, progress=False, **SYN)
    raw_train = featurize(load_dataset("synthetic", split="train", **SYN), 112, progress=False)
    assert val.norm == train.norm == raw_train.stats
    real = torch.cat([raw_train.x[i, :n].float() for i, n in enumerate(raw_train.lengths.tolist())])
    assert np.isclose(train.norm[0], real.mean().item(), atol=1e-2)
    assert np.isclose(train.norm[1], real.std().item(), rtol=1e-2)
    named = load_features("synthetic", "val", 112, norm="spc2", progress=False, **SYN)
    assert named.norm == NORM_STATS["spc2"]
    pair = load_features("synthetic", "val", 112, norm=(0.0, 0.5), progress=False, **SYN)
    assert torch.allclose(pair.x, raw := featurize(load_dataset("synthetic", split="val", **SYN), 112,
                                                   progress=False).x.float())
    assert raw.shape == pair.x.shape
    with pytest.raises(ConfigError):
        load_features("synthetic", "val", 112, norm="imagenet", **SYN)


def test_feature_config_and_default_frames(tmp_cache):
    cfg = FeatureConfig(frames=48, mel_bins=64, norm="audioset")
    fs = load_features("synthetic", "test", cfg, progress=False, **SYN)
    assert fs.x.shape == (10, 48, 64) and fs.norm == NORM_STATS["audioset"]
    with pytest.raises(ConfigError):
        load_features("synthetic", "test", cfg, mel_bins=32, **SYN)
    assert load_features("synthetic", "test", norm="audioset", progress=False, **SYN).x.shape[1] == 112


def make_bad_esc50(fake_esc50):
    """Break one test-fold clip (truncated WAV) of the fake ESC-50."""
    bad = load_dataset("esc50", fake_esc50, "test")[1].path
    data = open(bad, "rb").read()
    open(bad, "wb").write(data[: len(data) // 2])
    return bad


def test_bad_file_raises_by_default_and_skip_reports_it(tmp_cache, fake_esc50, capsys):
    bad = make_bad_esc50(fake_esc50)
    with pytest.raises(AudioError, match="truncated") as info:
        load_features("esc50", "test", 16, root=fake_esc50, norm="esc50", progress=False)
    assert bad in str(info.value)
    fs = load_features("esc50", "test", 16, root=fake_esc50, norm="esc50", on_error="skip", progress=False)
    assert len(fs) == 1 and len(fs.skipped) == 1 and fs.skipped[0][1] == bad and "truncated" in fs.skipped[0][2]
    assert "skipped 1 of 2 files" in capsys.readouterr().err
    again = load_features("esc50", "test", 16, root=fake_esc50, norm="esc50", on_error="skip", progress=False)
    assert again.from_cache and len(again.skipped) == 1
    assert bad in capsys.readouterr().err  # reported again when served from the cache
    with pytest.raises(AudioError, match="on_error='skip'"):  # a cached skip never hides the problem
        load_features("esc50", "test", 16, root=fake_esc50, norm="esc50", progress=False)
    with pytest.raises(ConfigError):
        load_features("esc50", "test", 16, root=fake_esc50, on_error="ignore")


@pytest.mark.realdata
def test_real_subset_featurizes(tmp_cache, data_root):
    sc = load_dataset("speechcommands", data_root, "test")
    fs = featurize(sc.subset(range(0, len(sc), 67)), 128, progress=False)
    assert fs.x.shape == (len(range(0, len(sc), 67)), 128, 128) and torch.isfinite(fs.x.float()).all()
    assert fs.lengths.tolist() == [98] * len(fs)  # every clip is 1.0 s
    assert -15 < fs.stats[0] < 0 and 1 < fs.stats[1] < 10
    us = load_dataset("urbansound8k", data_root, "test")
    fu = featurize(us.subset(range(0, len(us), 93)), 400, progress=False)
    assert fu.x.shape == (9, 400, 128) and fu.lengths.tolist() == [398] * 9
    direct = pad_or_crop(fbank(load_audio(us[93].path)), 400)
    assert torch.allclose(fu.x[1].float(), direct, atol=1e-2)
