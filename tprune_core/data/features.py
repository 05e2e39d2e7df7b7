"""Log-mel filterbank features exactly as the AST and AudioMAE reference pipelines compute them.

One clip's features are `(frames, mel)`: kaldi fbank's own layout, 10 ms frame shift, 25 ms window,
so a clip of `s` seconds gives `int((s - 0.025) / 0.010) + 1` frames (1.0 s -> 98, 4.0 s -> 398, 5.0 s -> 498).
"""
from dataclasses import dataclass

import torch
import torchaudio.compliance.kaldi as kaldi

from ..errors import ConfigError

# Published (mean, std) of the fbank values, from the AST/AudioMAE recipes; used with official checkpoints.
NORM_STATS = {
    "audioset": (-4.2677393, 4.5689974),
    "esc50": (-6.6268077, 5.358466),
    "spc2": (-6.845978, 5.5654526),
}


@dataclass(frozen=True, kw_only=True)
class FeatureConfig:
    """Everything that shapes a feature grid. `norm`: "train" (statistics of the dataset's training split),
    a name in NORM_STATS, or an explicit (mean, std) pair."""
    frames: int
    sample_rate: int = 16000
    mel_bins: int = 128
    norm: str | tuple = "train"

    def __post_init__(self):
        for name in ("frames", "sample_rate", "mel_bins"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"FeatureConfig.{name}={value!r}: expected a positive int")
        resolve_norm(self.norm, allow_train=True)  # validate early


def resolve_norm(norm, allow_train: bool = False):
    """`norm` as a (mean, std) pair of floats; "train" is returned unchanged when allowed (the cache computes it)."""
    if isinstance(norm, str):
        if norm == "train" and allow_train:
            return norm
        if norm in NORM_STATS:
            return NORM_STATS[norm]
        choices = (["train"] if allow_train else []) + sorted(NORM_STATS)
        raise ConfigError(f"norm={norm!r}: expected one of {choices} or a (mean, std) pair")
    try:
        mean, std = (float(v) for v in norm)
    except (TypeError, ValueError):
        raise ConfigError(f"norm={norm!r}: expected a name or a (mean, std) pair of numbers") from None
    if not std > 0:
        raise ConfigError(f"norm={norm!r}: std must be positive")
    return mean, std


def fbank(wave, sample_rate: int = 16000, mel_bins: int = 128) -> torch.Tensor:
    """Kaldi log-mel fbank `(frames, mel_bins)` of a mono waveform, with the waveform's mean removed first."""
    wave = torch.as_tensor(wave, dtype=torch.float32)
    if wave.dim() == 2 and wave.shape[0] == 1:
        wave = wave[0]
    if wave.dim() != 1:
        raise ConfigError(f"wave of shape {tuple(wave.shape)}: expected a mono waveform (samples,) or (1, samples)")
    window = int(sample_rate * 0.025)
    if wave.numel() < window:
        raise ConfigError(f"wave of {wave.numel()} samples: expected at least one 25 ms window ({window} samples)")
    wave = wave - wave.mean()
    return kaldi.fbank(wave[None], htk_compat=True, sample_frequency=sample_rate, use_energy=False,
                       window_type="hanning", num_mel_bins=mel_bins, dither=0.0, frame_shift=10)


def pad_or_crop(fb: torch.Tensor, frames: int) -> torch.Tensor:
    """Exactly `frames` rows: crop from the start, or pad at the end with the clip's minimum (as AudioMAE)."""
    if fb.dim() != 2 or fb.shape[0] == 0:
        raise ConfigError(f"fbank of shape {tuple(fb.shape)}: expected a non-empty (frames, mel) tensor")
    if frames <= 0:
        raise ConfigError(f"frames={frames}: expected a positive int")
    n = fb.shape[0]
    if n >= frames:
        return fb[:frames]
    return torch.cat([fb, fb.new_full((frames - n, fb.shape[1]), fb.min().item())])


def normalize(fb: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """`(fb - mean) / (2 * std)`, the AST/AudioMAE input scaling."""
    if not std > 0:
        raise ConfigError(f"std={std}: expected a positive number")
    return (fb - mean) / (2 * std)


def crop_frames(x: torch.Tensor, frames: int, random: bool, generator=None) -> torch.Tensor:
    """(B, T, mel) -> (B, frames, mel): a random window per clip (training) or the first ``frames`` (evaluation,
    matching pad_or_crop)."""
    t = x.shape[1]
    if t == frames:
        return x
    if t < frames:
        raise ConfigError(f"features have {t} frames; the model needs at least {frames}")
    if not random:
        return x[:, :frames]
    start = torch.randint(0, t - frames + 1, (x.shape[0],), generator=generator)
    idx = (start[:, None] + torch.arange(frames)).to(x.device)
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[2]))
