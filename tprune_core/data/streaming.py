"""Streaming features: a split featurized once into shard files on disk, its rows read a batch at a time.

    fs = stream_features("synthetic", "train", frames=96)   # a FeatureSet whose .x reads rows from disk
    fs.x[idx]                                                # (len(idx), 96, 128) float32, normalized
    load_split(cfg, "train")                                 # train.py: streams when cfg.stream says so (or auto)

What stays in memory: labels, ids and lengths of the split, and the rows one indexing asks for (a batch). Writing
holds one clip at a time: rows go straight into the shard file being written. So a split of any size trains in the
memory of a batch (bench/stream_memory.py measures it); the in-memory path (``cache.load_features``) holds the whole
split as float32.

The numbers are those of the in-memory path, bit for bit: both featurize through ``cache.clip_grids`` (same fbank,
padding, float16 grid), the running sums behind the normalization statistics are added in the same clip order (a
shard's part file carries them on), and a row is normalized with ``features.normalize``'s elementwise arithmetic. So
whether a run streams is operational (``TrainConfig.stream`` is left out of the run hash), and a test compares the
two paths with ``torch.equal`` (tests/test_streaming.py).

On disk, beside the in-memory cache file and keyed by the same digest (``cache.feature_key``):

    <stem>-<split>-<frames>x<mel>-<digest>.shards/
        rows-00000.f16   raw float16 rows (frames x mel each, C order) of the shard's clips that featurized
        part-00000.pt    that shard's ids, targets, lengths, skipped files and the running sums after it
        index.pt         written last (a complete split): all of the above for the whole split

Every file is written atomically (``fsio.atomic_write``) and a part only after its rows, so a kill while writing
loses at most the shard in progress: the next call continues after the last complete part.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DatasetError
from ..fsio import atomic_write
from .cache import (FeatureSet, _targets, clip_grids, featurize, feature_key, load_features, one_thread,
                    raw_feature_set, report_skipped)
from .datasets import ClipSet

SHARD_BYTES = 256 * 2**20          # float16 rows per shard file: a 10 s AudioSet clip is 256 KiB, 1024 per shard
STREAM_ABOVE_BYTES = 4 * 2**30     # auto: stream a split whose float32 features on this node would exceed this
INDEX_VERSION = 1                  # bump when the shard layout changes
READ_BYTES = 2**20                 # float16 rows read at a time into a normalized batch


class ShardedRows:
    """A split's ``(N, frames, mel)`` features in shard files, read on indexing: an int gives one row, a slice, a
    list, an array or an int tensor a batch. Raw rows come back float16 (as ``cache.featurize`` holds them);
    ``normalized(mean, std)`` gives the view that returns float32 rows normalized as ``features.normalize`` does
    (as ``cache.load_features``). Holds paths and numbers only: cheap to pickle into DataLoader workers."""

    def __init__(self, folder, counts: list, frames: int, mel_bins: int, norm: tuple | None = None):
        self.folder, self.counts, self.norm = Path(folder), [int(c) for c in counts], norm
        self.starts = np.cumsum([0] + self.counts)
        self.shape = torch.Size((int(self.starts[-1]), frames, mel_bins))
        self.row_bytes = frames * mel_bins * 2

    def normalized(self, mean: float, std: float) -> "ShardedRows":
        if not std > 0:
            raise ConfigError(f"std={std}: expected a positive number")
        return ShardedRows(self.folder, self.counts, self.shape[1], self.shape[2], norm=(mean, std))

    def dim(self) -> int:
        return 3

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> torch.Tensor:
        single = isinstance(key, (int, np.integer)) or (torch.is_tensor(key) and key.dim() == 0)
        idx = self._indices(key)
        x = self._read(idx).view(len(idx), *self.shape[1:])
        if self.norm is not None:   # features.normalize's arithmetic, in place on the batch's one float32 copy
            mean, std = self.norm
            x = x.sub_(mean).div_(2 * std)
        return x[0] if single else x

    def _indices(self, key) -> np.ndarray:
        n = len(self)
        if isinstance(key, slice):
            return np.arange(n)[key]
        if torch.is_tensor(key):
            key = key.cpu().numpy()
        idx = np.atleast_1d(np.asarray(key))
        if idx.dtype == bool or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"ShardedRows: index with ints, slices or int arrays, not {idx.dtype}")
        idx = np.where(idx < 0, idx + n, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"ShardedRows: index out of range for {n} rows ({self.folder})")
        return idx

    def _read(self, idx: np.ndarray) -> torch.Tensor:
        """Rows ``idx`` as one (len(idx), frames * mel) tensor: float16 as stored, or float32 when normalized (read
        through a small float16 buffer, so that a batch costs one allocation and the allocator reuses it batch after
        batch). Per shard file, one ``preadv`` per run of consecutive rows: plain reads, not a memory map, so the
        pages read stay in the page cache, out of this process's resident memory."""
        out = torch.empty(len(idx), self.shape[1] * self.shape[2],
                          dtype=torch.float16 if self.norm is None else torch.float32)
        shard = np.searchsorted(self.starts, idx, side="right") - 1
        for k in np.unique(shard):
            pos = np.nonzero(shard == k)[0]
            local = idx[pos] - self.starts[k]
            path = self.folder / rows_name(k)
            fd = os.open(path, os.O_RDONLY)
            try:
                run = 0
                for j in range(1, len(pos) + 1):   # a run ends where the next row is not the next on disk and out
                    if j == len(pos) or local[j] != local[j - 1] + 1 or pos[j] != pos[j - 1] + 1:
                        self._read_run(fd, out[pos[run]:pos[j - 1] + 1], int(local[run]), path)
                        run = j
            finally:
                os.close(fd)
        return out

    def _read_run(self, fd: int, out: torch.Tensor, first: int, path: Path):
        """Consecutive rows from row ``first`` of an open shard into ``out``: straight in when it is float16, else
        through a buffer of at most READ_BYTES (float16 -> float32 is exact, as ``Tensor.float``)."""
        if out.dtype == torch.float16:
            _pread_into(fd, out.numpy(), first * self.row_bytes, path)
            return
        step = max(1, READ_BYTES // self.row_bytes)
        buf = np.empty((min(step, len(out)), out.shape[1]), np.float16)
        for a in range(0, len(out), step):
            rows = buf[:min(step, len(out) - a)]
            _pread_into(fd, rows, (first + a) * self.row_bytes, path)
            out[a:a + len(rows)].copy_(torch.from_numpy(rows))


def _pread_into(fd: int, buf: np.ndarray, offset: int, path: Path):
    """Fill ``buf`` from ``offset`` of the open file; a file that ends too soon is a DatasetError naming it."""
    view, done = memoryview(buf).cast("B"), 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise DatasetError(f"{path}: ends at byte {offset + done}, rows need {offset + len(view)}; the shard "
                               f"is damaged: delete its folder {path.parent} and it is written again")
        done += got


def rows_name(k: int) -> str:
    return f"rows-{k:05d}.f16"


def shard_split(clips: ClipSet, frames: int, mel_bins: int = 128, sample_rate: int = 16000, on_error: str = "raise",
                progress: bool = True, shard_bytes: int = SHARD_BYTES) -> FeatureSet:
    """Raw (un-normalized) features of every clip in ``clips`` as shard files, written once (``cache.featurize``'s
    signature and result, with ``x`` a ``ShardedRows``)."""
    digest, path = feature_key(clips, frames, mel_bins, sample_rate, on_error)
    per_shard = max(1, int(shard_bytes) // (frames * mel_bins * 2))
    folder = path.with_name(f"{path.stem}-{per_shard}.shards")
    data = _read_index(folder / "index.pt", digest)
    hit = data is not None
    if not hit:
        with one_thread():
            data = _write_shards(clips, folder, digest, per_shard, frames, mel_bins, sample_rate, on_error, progress)
    skipped = report_skipped(data["skipped"], len(data["ids"]), clips, on_error)
    data["x"] = ShardedRows(folder, data["counts"], frames, mel_bins)
    return raw_feature_set(clips, data, frames, mel_bins, sample_rate, skipped, folder, hit)


def _read_index(path: Path, digest: str) -> dict | None:
    """A complete shard set's index when it is there and belongs to ``digest``; None: (re)write it."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, weights_only=True)
    except Exception:   # a damaged index is rebuilt from its parts, not trusted
        return None
    return data if (data.get("digest"), data.get("version")) == (digest, INDEX_VERSION) else None


def _write_shards(clips, folder, digest, per_shard, frames, mel_bins, sample_rate, on_error, progress) -> dict:
    parts, moments = [], (0.0, 0.0, 0.0)
    for k in range(-(-len(clips) // per_shard)):
        part = _read_index(folder / f"part-{k:05d}.pt", digest)   # written by a run that was stopped
        rows = folder / rows_name(k)
        if part is None or not rows.is_file() or rows.stat().st_size != part["rows"] * frames * mel_bins * 2:
            part = _write_shard(clips, folder, k, range(k * per_shard, min((k + 1) * per_shard, len(clips))),
                                moments, digest, frames, mel_bins, sample_rate, on_error, progress)
        parts.append(part)
        moments = part["moments"]
    if not sum(p["rows"] for p in parts):
        raise DatasetError(f"{clips.describe()}: no clip could be featurized "
                           f"({sum(len(p['skipped']) for p in parts)} failed)")
    data = dict(digest=digest, version=INDEX_VERSION, ids=[i for p in parts for i in p["ids"]],
                y=torch.cat([p["y"] for p in parts]), counts=[p["rows"] for p in parts],
                lengths=torch.cat([p["lengths"] for p in parts]), moments=moments,
                skipped=[s for p in parts for s in p["skipped"]])
    atomic_write(folder / "index.pt", lambda f: torch.save(data, f))
    return data


def _write_shard(clips, folder, k, indices, moments, digest, frames, mel_bins, sample_rate, on_error, progress):
    """Featurize the clips ``indices`` into shard ``k``, a row at a time straight into its file; ``moments``: the
    running (sum, sum of squares, count) before it, carried on in clip order as the in-memory path adds them."""
    keep, lengths, skipped = [], [], []
    total, sq, count = moments

    def write_rows(f):
        nonlocal total, sq, count
        for i, grid, n, (s, s2, c) in clip_grids(clips, indices, frames, mel_bins, sample_rate, on_error, skipped,
                                                 progress):
            total, sq, count = total + s, sq + s2, count + c
            f.write(grid.contiguous().numpy().tobytes())
            keep.append(i)
            lengths.append(n)

    atomic_write(folder / rows_name(k), write_rows)
    part = dict(digest=digest, version=INDEX_VERSION, rows=len(keep), ids=[clips[i].clip_id for i in keep],
                y=_targets(clips, keep), lengths=torch.tensor(lengths, dtype=torch.int32), moments=(total, sq, count),
                skipped=skipped)
    atomic_write(folder / f"part-{k:05d}.pt", lambda f: torch.save(part, f))
    return part


def stream_features(name, split: str, frames=None, **kw) -> FeatureSet:
    """``cache.load_features`` with the split (and, for norm="train", the training split) as shard files."""
    return load_features(name, split, frames, featurizer=shard_split, **kw)


def featurizer_for(stream: bool | None, processes: int = 1):
    """The featurizer ``TrainConfig.stream`` asks for: True shards, False keeps the split in memory, None decides
    per split: shards when ``processes`` float32 copies of its features (one per training process on this node)
    would exceed STREAM_ABOVE_BYTES."""
    if stream not in (None, True, False):
        raise ConfigError(f"TrainConfig.stream: expected None (auto), True or False, got {stream!r}")
    if stream is not None:
        return shard_split if stream else featurize

    def auto(clips, frames, mel_bins=128, sample_rate=16000, on_error="raise", progress=True):
        big = len(clips) * frames * mel_bins * 4 * processes > STREAM_ABOVE_BYTES
        return (shard_split if big else featurize)(clips, frames, mel_bins, sample_rate, on_error, progress)
    return auto
