"""fbank matches a direct torchaudio call; pad/crop, normalization and FeatureConfig behave as documented."""
import dataclasses

import pytest
import torch
import torchaudio.compliance.kaldi as kaldi

from tprune_core.errors import ConfigError
from tprune_core.features import NORM_STATS, FeatureConfig, fbank, normalize, pad_or_crop, resolve_norm


def reference(wave, sr=16000, mel=128):
    w = wave[None] - wave.mean()
    return kaldi.fbank(w, htk_compat=True, sample_frequency=sr, use_energy=False, window_type="hanning",
                       num_mel_bins=mel, dither=0.0, frame_shift=10)


@pytest.mark.parametrize("samples,frames", [(16000, 98), (64000, 398), (80000, 498), (400, 1)])
def test_fbank_matches_direct_torchaudio_call(samples, frames):
    wave = 0.1 * torch.randn(samples, generator=torch.Generator().manual_seed(samples)) + 0.05  # with a DC offset
    fb = fbank(wave)
    assert fb.shape == (frames, 128)
    assert torch.equal(fb, reference(wave))


def test_fbank_removes_the_waveform_mean_and_accepts_channel_dim():
    wave = 0.1 * torch.randn(16000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(fbank(wave + 0.3), fbank(wave), atol=1e-3)
    assert torch.equal(fbank(wave[None]), fbank(wave))
    assert fbank(wave, mel_bins=64).shape == (98, 64)


def test_fbank_rejects_bad_shapes():
    with pytest.raises(ConfigError, match="mono"):
        fbank(torch.zeros(2, 16000))
    with pytest.raises(ConfigError, match="25 ms"):
        fbank(torch.zeros(399))


def test_pad_uses_the_clip_minimum_and_keeps_the_data():
    fb = torch.arange(12.0).reshape(4, 3) - 5
    out = pad_or_crop(fb, 7)
    assert out.shape == (7, 3)
    assert torch.equal(out[:4], fb)
    assert torch.all(out[4:] == fb.min())


def test_crop_keeps_the_start_and_exact_length_is_unchanged():
    fb = torch.randn(10, 4)
    assert torch.equal(pad_or_crop(fb, 6), fb[:6])
    assert torch.equal(pad_or_crop(fb, 10), fb)
    with pytest.raises(ConfigError):
        pad_or_crop(torch.zeros(0, 4), 5)
    with pytest.raises(ConfigError):
        pad_or_crop(fb, 0)


def test_normalize_formula_and_published_stats():
    fb = torch.tensor([[-4.2677393, 0.0]])
    mean, std = NORM_STATS["audioset"]
    out = normalize(fb, mean, std)
    assert out[0, 0].abs() < 1e-6 and torch.isclose(out[0, 1], torch.tensor(4.2677393 / (2 * 4.5689974)))
    assert NORM_STATS["esc50"] == (-6.6268077, 5.358466) and NORM_STATS["spc2"] == (-6.845978, 5.5654526)
    with pytest.raises(ConfigError):
        normalize(fb, 0.0, 0.0)


def test_resolve_norm():
    assert resolve_norm("spc2") == NORM_STATS["spc2"]
    assert resolve_norm((1, 2)) == (1.0, 2.0)
    assert resolve_norm("train", allow_train=True) == "train"
    for bad in ["train", "imagenet", (1.0, -1.0), (1.0,), "x"]:
        with pytest.raises(ConfigError):
            resolve_norm(bad)


def test_feature_config_is_frozen_and_validated():
    cfg = FeatureConfig(frames=400)
    assert (cfg.sample_rate, cfg.mel_bins, cfg.frames, cfg.norm) == (16000, 128, 400, "train")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.frames = 10
    assert FeatureConfig(frames=400) == cfg and hash(FeatureConfig(frames=400, norm=(1.0, 2.0)))
    for bad in [dict(frames=0), dict(frames=100, mel_bins=-1), dict(frames=100, norm="nope"), dict(frames=1.5)]:
        with pytest.raises(ConfigError):
            FeatureConfig(**bad)
    with pytest.raises(TypeError):
        FeatureConfig(16000, 128, 400)  # keyword-only: positional use would silently swap fields
