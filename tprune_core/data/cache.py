"""Featurize a dataset split once, keep it on disk, and hand out normalized `(N, frames, mel)` tensors.

    fs = load_features("urbansound8k", "train", frames=400)   # fs.x (N, 400, 128) float32, fs.y, fs.ids, fs.norm

On disk (float16, under `$TPRUNE_CACHE/features`, default `<repo>/.cache/tprune/features`) each file holds the
*un-normalized* padded/cropped fbank of one split plus the sum and sum of squares of its clips' real (unpadded)
frames. Its name carries a hash of everything that changes those numbers: dataset name, protocol, split, clip ids,
labels, groups, each file's name, size and mtime (the generator version for synthetic data), sample rate, mel bins,
frames, the fbank settings and CODE_VERSION; for a folder dataset (tprune_core.data.folders) also the folder's resolved
path, so two folders never share a file and adding, removing or editing a clip changes the key; for a multi-label
set also every clip's classes and the class list (whose length is the width of the targets). Normalization is
applied when loading, from the training split's cached statistics (norm="train"), a published pair (a NORM_STATS
name) or an explicit (mean, std), so changing it never returns stale numbers either.
"""
import hashlib
import json
import math
import re
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..errors import AudioError, ConfigError, DatasetError, counted
from ..fsio import atomic_write
from ..paths import cache_root
from ..rules import ON_ERROR
from .datasets import ClipSet, load_dataset
from .features import FeatureConfig, fbank, normalize, pad_or_crop, resolve_norm
from .folders import LAYOUTS as FOLDER_LAYOUTS
from .targets import multi_hot

CODE_VERSION = 1  # bump when featurization changes in a way the key does not see
FBANK = dict(htk_compat=True, use_energy=False, window_type="hanning", dither=0.0, frame_shift=10, mean_removed=True)


@dataclass
class FeatureSet:
    x: torch.Tensor                  # (N, frames, mel): normalized float32 (load_features) or raw float16 (featurize)
    y: torch.Tensor                  # (N,) int64 labels, or (N, C) float32 multi-hot rows for a multi-label set
    ids: list                        # clip ids, row-aligned with x
    classes: list
    norm: tuple | None               # (mean, std) applied to x; None for raw features
    source: str                      # "real" or "synthetic"
    dataset: str                     # ClipSet.describe() of the split
    name: str = ""
    split: str = ""
    frames: int = 0
    mel_bins: int = 128
    sample_rate: int = 16000
    lengths: torch.Tensor = None     # real fbank frames per clip before padding/cropping
    stats: tuple = None              # (mean, std) of this split's own real frames
    skipped: list = field(default_factory=list)  # (clip_id, path, problem) of files left out with on_error="skip"
    path: Path | None = None         # the cache file
    from_cache: bool = False

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _stats(total, sq, count):
    mean = total / count
    return mean, math.sqrt(max(sq / count - mean * mean, 0.0))


def featurize(clips: ClipSet, frames: int, mel_bins: int = 128, sample_rate: int = 16000, on_error: str = "raise",
              progress: bool = True) -> FeatureSet:
    """Raw (un-normalized) float16 fbank grids of every clip in `clips`, from the disk cache or computed once."""
    digest, path = feature_key(clips, frames, mel_bins, sample_rate, on_error)
    data, hit = None, False
    if path.is_file():
        try:
            data = torch.load(path, mmap=True, weights_only=True)
            hit = data.get("digest") == digest
        except Exception as exc:  # a damaged cache file is recomputed, not trusted
            warnings.warn(f"{path}: unreadable feature cache ({exc}); featurizing again")
    if not hit:
        with one_thread():
            data = _compute(clips, frames, mel_bins, sample_rate, on_error, progress)
        data["digest"] = digest
        atomic_write(path, lambda f: torch.save(data, f))   # readers never see half a file
    skipped = report_skipped(data["skipped"], len(data["ids"]), clips, on_error)
    return raw_feature_set(clips, data, frames, mel_bins, sample_rate, skipped, path, hit)


def raw_feature_set(clips: ClipSet, data: dict, frames, mel_bins, sample_rate, skipped, path, hit) -> FeatureSet:
    """The un-normalized FeatureSet of a split from its stored ``data`` (x, y, ids, lengths, moments)."""
    return FeatureSet(x=data["x"], y=data["y"], ids=list(data["ids"]), classes=list(clips.classes), norm=None,
                      source=clips.source, dataset=clips.describe(), name=clips.name, split=clips.split, frames=frames,
                      mel_bins=mel_bins, sample_rate=sample_rate, lengths=data["lengths"],
                      stats=_stats(*data["moments"]), skipped=skipped, path=path, from_cache=hit)


def feature_key(clips: ClipSet, frames: int, mel_bins: int, sample_rate: int, on_error: str) -> tuple[str, Path]:
    """(digest, cache file) of a split's features: the digest covers everything that changes their numbers. Checks
    the settings first (a ConfigError names the bad one)."""
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error={on_error!r}: expected {' or '.join(map(repr, ON_ERROR))}")
    FeatureConfig(frames=frames, mel_bins=mel_bins, sample_rate=sample_rate)  # validates the numbers
    key = dict(version=CODE_VERSION, dataset=clips.name, source=clips.source, split=clips.split,
               protocol=clips.protocol, files=clips.signature(), sample_rate=sample_rate, mel_bins=mel_bins,
               frames=frames, fbank=FBANK)
    if clips.layout in FOLDER_LAYOUTS:
        key["folder"] = clips.root
    if clips.multilabel:
        key["classes"] = list(clips.classes)
    digest = _digest(key)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", clips.name)
    return digest, cache_root() / "features" / f"{stem}-{clips.split}-{frames}x{mel_bins}-{digest[:20]}.pt"


def report_skipped(skipped: list, kept: int, clips: ClipSet, on_error: str) -> list:
    """The files a split left out, as tuples: an AudioError naming the first when ``on_error="raise"`` (an earlier
    ``skip`` run stored them), else printed with their reasons."""
    skipped = [tuple(s) for s in skipped]
    if skipped:
        if on_error == "raise":
            cid, bad, problem = skipped[0]
            raise AudioError(bad, f"{problem} (found by an earlier on_error='skip' run that left out "
                                  f"{counted(len(skipped), 'file')}; fix {'it' if len(skipped) == 1 else 'them'} "
                                  f"or pass on_error='skip')")
        lines = "\n".join(f"  {p}: {msg}" for _, p, msg in skipped)
        print(f"tprune: skipped {len(skipped)} of {counted(len(skipped) + kept, 'file')} of {clips.describe()}:"
              f"\n{lines}", file=sys.stderr)
    return skipped


@contextmanager
def one_thread():
    """One clip's fbank is far too small to split across threads: with several threads and a busy machine it ran
    100x slower (spin-waiting workers), so featurize single-threaded and restore the setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def clip_fbank(clips: ClipSet, i: int, sample_rate: int = 16000, mel_bins: int = 128) -> tuple[torch.Tensor, int]:
    """(fbank, samples) of clip `i`. Every failure, whatever raised it (soundfile, resampling, kaldi), is an
    AudioError naming the file: unreadable, shorter than one 25 ms window, NaN/inf samples or features."""
    path = clips[i].path
    try:
        wave = clips.load(i, sample_rate)
        if wave.numel() < sample_rate * 0.025:
            raise AudioError(path, f"{counted(wave.numel(), 'sample')} at {sample_rate} Hz is shorter than one "
                                   f"25 ms fbank window; expected at least {int(sample_rate * 0.025)}")
        fb = fbank(wave, sample_rate, mel_bins)
    except AudioError:
        raise
    except Exception as exc:  # a bare torch / soundfile / numpy error would not say which file
        raise AudioError(path, f"featurizing failed: {type(exc).__name__}: {exc}") from exc
    if not torch.isfinite(fb).all():
        raise AudioError(path, "the fbank holds NaN or infinite values; expected finite features")
    return fb, wave.numel()


def clip_grids(clips: ClipSet, indices, frames, mel_bins, sample_rate, on_error, skipped: list, progress):
    """For each clip ``i`` of ``indices`` that featurizes, in order: (i, its float16 ``(frames, mel)`` grid, its real
    frames, (sum, sum of squares, count) of its real fbank values). A failing clip raises (``on_error="raise"``) or is
    appended to ``skipped`` as (clip_id, path, problem). The in-memory cache and the shard writer
    (tprune_core.data.streaming) both featurize through this, so their numbers are the same."""
    bar = tqdm(indices, desc=f"featurizing {clips.name}/{clips.split}", unit="clip", file=sys.stderr,
               disable=not progress, mininterval=0.5 if sys.stderr.isatty() else 5.0)
    for i in bar:
        clip = clips[i]
        try:
            fb, _ = clip_fbank(clips, i, sample_rate, mel_bins)
        except AudioError as exc:
            if on_error == "raise":
                raise
            skipped.append((clip.clip_id, clip.path, exc.problem))
            continue
        f64 = fb.double()
        yield i, pad_or_crop(fb, frames).half(), fb.shape[0], (f64.sum().item(), (f64 * f64).sum().item(),
                                                               f64.numel())


def _compute(clips, frames, mel_bins, sample_rate, on_error, progress) -> dict:
    x = torch.empty(len(clips), frames, mel_bins, dtype=torch.float16)
    keep, lengths, skipped = [], [], []
    total = sq = count = 0.0
    for i, grid, n, (s, s2, c) in clip_grids(clips, range(len(clips)), frames, mel_bins, sample_rate, on_error,
                                             skipped, progress):
        total, sq, count = total + s, sq + s2, count + c
        x[len(keep)] = grid
        keep.append(i)
        lengths.append(n)
    if not keep:
        raise DatasetError(f"{clips.describe()}: no clip could be featurized ({len(skipped)} failed)")
    return dict(x=x[:len(keep)].clone(), y=_targets(clips, keep),
                ids=[clips[i].clip_id for i in keep], lengths=torch.tensor(lengths, dtype=torch.int32),
                moments=(total, sq, count), skipped=skipped)


def _targets(clips: ClipSet, keep: list) -> torch.Tensor:
    """Class ids (N,) int64, or multi-hot rows (N, C) float32 for a multi-label set, of the clips ``keep``."""
    if clips.multilabel:
        return multi_hot([clips[i].labels for i in keep], len(clips.classes))
    return torch.tensor([clips[i].label for i in keep], dtype=torch.int64)


def load_features(name, split: str, frames=None, root=None, mel_bins: int = 128, norm="train",
                  on_error: str = "raise", sample_rate: int = 16000, progress: bool = True, featurizer=None,
                  **protocol) -> FeatureSet:
    """Normalized float32 features of one split. `frames` is an int, None (a full clip, rounded up to a multiple
    of 16) or a FeatureConfig (which then also gives sample_rate, mel_bins and norm). `norm`: "train" (mean/std of
    this protocol's training split, cached with it), a NORM_STATS name, or a (mean, std) pair. `featurizer`: what
    turns a ClipSet into raw features, `featurize`'s signature (default `featurize`: the whole split in memory;
    `tprune_core.data.streaming.shard_split`: shard files whose rows are read, and normalized, per batch)."""
    featurizer = featurizer or featurize
    if isinstance(frames, FeatureConfig):
        cfg = frames
        if (mel_bins, norm, sample_rate) != (128, "train", 16000):
            raise ConfigError("load_features: pass mel_bins/norm/sample_rate inside the FeatureConfig, not beside it")
        frames, mel_bins, norm, sample_rate = cfg.frames, cfg.mel_bins, cfg.norm, cfg.sample_rate
    norm = resolve_norm(norm, allow_train=True)
    clips = load_dataset(name, root, split, **protocol)
    frames = clips.default_frames() if frames is None else frames
    fs = featurizer(clips, frames, mel_bins, sample_rate, on_error, progress)
    if norm == "train":
        if split == "train":
            mean, std = fs.stats
        else:
            with warnings.catch_warnings():  # the default->synthetic warning was already given for this split
                warnings.simplefilter("ignore")
                train = load_dataset(name, root, "train", **protocol)
            mean, std = featurizer(train, frames, mel_bins, sample_rate, on_error, progress).stats
    else:
        mean, std = norm
    # rows on disk (streaming) are normalized as they are read
    fs.x = fs.x.normalized(mean, std) if hasattr(fs.x, "normalized") else normalize(fs.x.float(), mean, std)
    fs.norm = (mean, std)
    return fs
