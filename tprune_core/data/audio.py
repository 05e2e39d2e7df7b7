"""Read any audio file soundfile understands into a mono float32 waveform at the model's sample rate.

Handled (and tested): WAV/FLAC/OGG/AIFF/... as libsndfile reads them; any number of channels (averaged to mono);
any sample rate (resampled with `torchaudio.functional.resample`); 8-bit unsigned, 16/24/32-bit signed PCM
(scaled to [-1, 1) by libsndfile) and 32/64-bit float samples (kept as they are, values above 1 included).

Refused with an `AudioError` naming the file: a missing or empty file, bytes that are not audio, a truncated or
corrupt file (a WAV whose header promises more data than the file holds, a FLAC stream that breaks off, a decoded
length far short of the header's frame count), a file with no samples, and NaN or infinite samples.

Accepted with a `ShortDecodeWarning` naming the file: a decoded length a little short of the header's frame count
(`check_decoded_length`): MP3 data inside a .wav without a LAME/Xing header decodes 100-420 samples short of the
count libsndfile estimates from the stream (the encoder's delay and padding), though the audio is whole. Accepted:
up to 2,304 frames (two MP3 frames of 1,152) or 5% of the header's count, whichever is more, but never more than a
quarter of it; a larger shortfall is a truncated file.
"""
import re
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from ..errors import AudioError, counted

EXPECTED = "an audio file soundfile can read (WAV, FLAC, OGG, AIFF, ...)"
# libsndfile's header log for a WAV whose data chunk is longer than the file: "data : 32000 (should be 15978)"
_SHORT_CHUNK = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_UNKNOWN_LENGTH = (0xFFFFFFFF, 0x7FFFFFFF, 0)  # streamed WAVs written before their length was known
SHORT_DECODE_FRAMES = 2304      # two MP3 frames: more than any encoder's delay plus padding
SHORT_DECODE_FRACTION = 0.05    # long files: a few percent
SHORT_DECODE_CAP = 0.25         # short files: a quarter missing is a truncated file, whatever the frame count


class ShortDecodeWarning(UserWarning):
    """A file decoded a little shorter than its header declares; the decoded samples are used."""


def check_decoded_length(path, declared: int, decoded: int) -> None:
    """Warn when `decoded` frames fall a little short of the header's `declared` count; raise AudioError (a
    truncated file) when they fall further short than the tolerance in the module docstring."""
    missing = declared - decoded
    if missing <= 0:
        return
    allowed = min(max(SHORT_DECODE_FRAMES, SHORT_DECODE_FRACTION * declared), SHORT_DECODE_CAP * declared)
    if missing > allowed:
        raise AudioError(path, f"truncated file: the header declares {declared} frames but only {decoded} could be "
                               f"read ({missing / declared:.0%} missing; up to {int(allowed)} would be accepted)")
    warnings.warn(f"{path}: decoded {decoded} frames, {missing} ({missing / declared:.1%}) fewer than the "
                  f"{declared} its header declares; using the decoded audio (a decoder's delay and padding, as for "
                  f"MP3 data in a .wav, are accepted up to {int(allowed)} frames)", ShortDecodeWarning, stacklevel=3)


def read_audio(path) -> tuple[np.ndarray, int]:
    """The file's samples as float32 `(samples, channels)` and its native sample rate, validated."""
    if str(path).startswith("synthetic://"):
        raise AudioError(path, "a synthetic clip has no file; load it through its dataset: "
                               "load_dataset('synthetic', ...).load(i)")
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, f"no such file; expected {EXPECTED}")
    if path.stat().st_size == 0:
        raise AudioError(path, f"empty file (0 bytes); expected {EXPECTED}")
    try:
        with sf.SoundFile(str(path)) as f:
            declared, rate, log = f.frames, f.samplerate, f.extra_info
            data = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, EOFError) as exc:
        msg = str(exc)
        if "Format not recognised" in msg or "unknown format" in msg.lower():
            raise AudioError(path, f"not an audio file (format not recognised); expected {EXPECTED}") from None
        raise AudioError(path, f"truncated or corrupt audio ({msg.strip()})") from None
    m = _SHORT_CHUNK.search(log or "")
    if m and int(m.group(1)) not in _UNKNOWN_LENGTH and int(m.group(1)) > int(m.group(2)):
        raise AudioError(path, f"truncated file: the header declares {m.group(1)} bytes of audio data "
                               f"but only {m.group(2)} are present")
    check_decoded_length(path, declared, len(data))
    if data.size == 0:
        raise AudioError(path, "zero-length audio (no samples); expected at least one sample")
    bad = ~np.isfinite(data)
    if bad.any():
        n_nan = int(np.isnan(data).sum())
        n_inf = int(bad.sum()) - n_nan
        raise AudioError(path, f"{counted(n_nan, 'NaN sample')} and {counted(n_inf, 'infinite sample')}; expected "
                               f"finite values")
    return data, rate


def load_audio(path, sample_rate: int = 16000) -> torch.Tensor:
    """Mono float32 waveform of shape `(samples,)` at `sample_rate` Hz; raises `AudioError` on unusable files."""
    data, rate = read_audio(path)
    wave = torch.from_numpy(data.mean(axis=1, dtype=np.float32))  # downmix: average the channels
    if rate != sample_rate:
        wave = AF.resample(wave, rate, sample_rate)
    return wave.contiguous()
