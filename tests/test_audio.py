"""load_audio: supported formats give the right samples; every kind of bad file gives an AudioError naming it."""
import os
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from conftest import write_mp3_in_wav
from tprune_core.audio import ShortDecodeWarning, check_decoded_length, load_audio
from tprune_core.errors import AudioError, TpruneError

SR = 16000


def sine(freq=440.0, seconds=0.25, sr=SR, amp=0.5):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float64)


@pytest.mark.parametrize("fmt,subtype,tol", [
    ("WAV", "PCM_U8", 1 / 64), ("WAV", "PCM_16", 1e-4), ("WAV", "PCM_24", 1e-6), ("WAV", "PCM_32", 1e-6),
    ("WAV", "FLOAT", 1e-7), ("WAV", "DOUBLE", 1e-7), ("FLAC", "PCM_16", 1e-4), ("FLAC", "PCM_24", 1e-6),
])
def test_bit_depths_load_to_the_written_signal(tmp_path, fmt, subtype, tol):
    x = sine()
    path = tmp_path / f"tone_{subtype}.{fmt.lower()}"
    sf.write(str(path), x, SR, format=fmt, subtype=subtype)
    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.dim() == 1 and wave.numel() == len(x)
    assert torch.allclose(wave.double(), torch.from_numpy(x), atol=tol)


def test_float_samples_above_one_are_kept(tmp_path):
    x = 1.5 * np.ones(800)
    sf.write(str(tmp_path / "loud.wav"), x, SR, subtype="FLOAT")
    assert torch.allclose(load_audio(tmp_path / "loud.wav"), torch.full((800,), 1.5))


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = sine(440), sine(1000, amp=0.2)
    sf.write(str(tmp_path / "st.wav"), np.stack([left, right], axis=1), SR, subtype="PCM_24")
    wave = load_audio(tmp_path / "st.wav")
    assert wave.shape == (len(left),)
    assert torch.allclose(wave.double(), torch.from_numpy((left + right) / 2), atol=1e-5)


def test_44k1_is_resampled_to_16k(tmp_path):
    x = sine(440, seconds=1.0, sr=44100)
    sf.write(str(tmp_path / "cd.wav"), x, 44100, subtype="PCM_16")
    wave = load_audio(tmp_path / "cd.wav")
    assert wave.numel() == 16000
    expected = AF.resample(torch.from_numpy(x).float(), 44100, 16000)
    assert torch.allclose(wave, expected, atol=1e-3)
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    assert abs(np.argmax(spectrum) * 16000 / wave.numel() - 440) <= 1  # the tone is still at 440 Hz


def test_other_target_rate_and_upsampling(tmp_path):
    sf.write(str(tmp_path / "tel.wav"), sine(300, seconds=0.5, sr=8000), 8000, subtype="PCM_16")
    assert load_audio(tmp_path / "tel.wav").numel() == 8000          # 8 kHz -> 16 kHz
    assert load_audio(tmp_path / "tel.wav", sample_rate=8000).numel() == 4000


def _err(path) -> str:
    with pytest.raises(AudioError) as info:
        load_audio(path)
    assert isinstance(info.value, TpruneError)
    assert str(path) in str(info.value)  # the message names the file
    return info.value.problem


def test_missing_file(tmp_path):
    assert "no such file" in _err(tmp_path / "absent.wav")


def test_empty_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    assert "empty file" in _err(tmp_path / "empty.wav")


def test_random_bytes_named_wav(tmp_path):
    (tmp_path / "noise.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    assert "not an audio file" in _err(tmp_path / "noise.wav")


def test_text_file_named_flac(tmp_path):
    (tmp_path / "notes.flac").write_text("these are not samples\n" * 50)
    assert "not an audio file" in _err(tmp_path / "notes.flac")


def test_truncated_wav(tmp_path):
    sf.write(str(tmp_path / "full.wav"), sine(), SR, subtype="PCM_16")
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    assert "truncated" in _err(tmp_path / "cut.wav")


@pytest.mark.parametrize("keep", [0.5, 0.02])
def test_truncated_flac(tmp_path, keep):
    rng = np.random.default_rng(1)
    sf.write(str(tmp_path / "full.flac"), 0.3 * rng.standard_normal(SR), SR)  # noise: does not compress away
    data = (tmp_path / "full.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[: int(len(data) * keep)])
    problem = _err(tmp_path / "cut.flac")
    assert "truncated" in problem or "corrupt" in problem


def test_corrupted_flac_frames(tmp_path):
    rng = np.random.default_rng(2)
    sf.write(str(tmp_path / "ok.flac"), 0.3 * rng.standard_normal(SR), SR)
    data = bytearray((tmp_path / "ok.flac").read_bytes())
    data[len(data) // 3: len(data) // 3 + 2000] = rng.bytes(2000)
    (tmp_path / "bad.flac").write_bytes(bytes(data))
    problem = _err(tmp_path / "bad.flac")
    assert "corrupt" in problem or "truncated" in problem


@pytest.mark.parametrize("value,word", [(np.nan, "NaN"), (np.inf, "infinite"), (-np.inf, "infinite")])
def test_non_finite_samples(tmp_path, value, word):
    x = sine()
    x[100:103] = value
    sf.write(str(tmp_path / "bad.wav"), x, SR, subtype="FLOAT")
    problem = _err(tmp_path / "bad.wav")
    assert word in problem and "3" in problem


def test_one_nan_is_one_sample(tmp_path):
    x = sine()
    x[7] = np.nan
    sf.write(str(tmp_path / "one.wav"), x, SR, subtype="FLOAT")
    assert _err(tmp_path / "one.wav").startswith("1 NaN sample and 0 infinite samples;")


def test_zero_length_audio(tmp_path):
    sf.write(str(tmp_path / "none.wav"), np.zeros(0), SR, subtype="PCM_16")
    assert os.path.getsize(tmp_path / "none.wav") > 0  # a valid header, no samples
    assert "zero-length" in _err(tmp_path / "none.wav")


def test_synthetic_path_points_to_the_dataset():
    with pytest.raises(AudioError, match="load_dataset"):
        load_audio("synthetic://speech/seed0/3")


# ------------------------------------------------------------------ decoded a little short of the header

@pytest.mark.parametrize("sr,seconds", [(16000, 0.42), (22050, 1.0), (44100, 2.0)])
def test_mp3_in_wav_a_little_short_loads_with_a_warning_naming_it(tmp_path, sr, seconds):
    """MP3 data in a .wav decodes a few hundred samples short of the length libsndfile declares; it was refused as
    a "truncated file" though the audio is whole."""
    path = write_mp3_in_wav(tmp_path / f"bird_{sr}.wav", seconds, sr)
    with sf.SoundFile(str(path)) as f:
        declared, decoded = f.frames, len(f.read())
    assert 0 < declared - decoded < 500                       # the case this tolerance is for
    with pytest.warns(ShortDecodeWarning, match=rf"{path}: decoded {decoded} frames, {declared - decoded} "):
        wave = load_audio(path, sample_rate=sr)
    assert wave.numel() == decoded and torch.isfinite(wave).all()
    assert abs(np.argmax(np.abs(np.fft.rfft(wave.numpy()))) * sr / wave.numel() - 440) < 5   # the tone is there


@pytest.mark.parametrize("declared,decoded,accepted", [
    (16000, 16000 - 420, True),        # the MP3-in-WAV shortfall
    (16000, 16000 - 2304, True),       # up to two MP3 frames ...
    (16000, 16000 - 2305, False),
    (200000, 200000 - 10000, True),    # ... or 5% of a long file
    (200000, 200000 - 10001, False),
    (4000, 4000 - 1000, True),         # but never more than a quarter of a short one
    (4000, 4000 - 1001, False),
    (16000, 8000, False),              # half the clip: a truncated file
])
def test_short_decode_tolerance(tmp_path, declared, decoded, accepted):
    path = tmp_path / "clip.wav"
    if accepted:
        with pytest.warns(ShortDecodeWarning, match=str(path)):
            check_decoded_length(path, declared, decoded)
    else:
        with pytest.raises(AudioError, match=rf"{path}: truncated file: the header declares {declared} frames but "
                                             rf"only {decoded} could be read"):
            check_decoded_length(path, declared, decoded)


def test_a_clip_as_long_as_its_header_gives_no_warning(tmp_path):
    sf.write(str(tmp_path / "ok.wav"), sine(), SR)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_audio(tmp_path / "ok.wav")
        check_decoded_length(tmp_path / "ok.wav", 100, 100)
