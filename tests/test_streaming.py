"""Streaming features (tprune_core.streaming): shard files written once, rows read a batch at a time, the same
numbers as the in-memory cache, bit for bit; a training run on a set larger than the memory cap streams by itself
and ends with the weights of the in-memory run."""
import json

import pytest
import torch

from conftest import make_mixtures
from tprune_core import cache, streaming
from tprune_core import train as T
from tprune_core.datasets import load_dataset
from tprune_core.errors import DatasetError

SYNTH = dict(per_class=4, seconds=0.5)


def assert_same_features(a, b):
    assert torch.equal(a.x, b.x[:]) and a.x.dtype == b.x[:].dtype
    assert torch.equal(a.y, b.y) and a.ids == b.ids and torch.equal(a.lengths, b.lengths)
    assert a.stats == b.stats and a.norm == b.norm
    pick = torch.tensor([5, 0, 3, 4, len(a.x) - 1])   # a batch out of order, across shards
    assert torch.equal(a.x[pick], b.x[pick]) and torch.equal(a.x[2], b.x[2]) and torch.equal(a.x[-1], b.x[-1])
    assert torch.equal(a.x[1:7], b.x[1:7])


def test_streamed_features_equal_the_in_memory_ones(tmp_cache):
    for split in ("train", "val"):   # val: normalized with the training split's statistics
        memory = cache.load_features("synthetic", split, frames=48, progress=False, **SYNTH)
        streamed = streaming.stream_features("synthetic", split, frames=48, progress=False, **SYNTH)
        assert isinstance(streamed.x, streaming.ShardedRows) and streamed.x.shape == memory.x.shape
        assert_same_features(memory, streamed)
    clips = load_dataset("synthetic", None, "train", **SYNTH)
    small = streaming.shard_split(clips, 48, shard_bytes=3 * 48 * 128 * 2, progress=False)   # 3 clips a shard
    assert small.x.counts == [3] * 6 + [2] and not small.from_cache
    assert_same_features(cache.featurize(clips, 48, progress=False), small)
    assert streaming.shard_split(clips, 48, shard_bytes=3 * 48 * 128 * 2, progress=False).from_cache


def test_streamed_multilabel_targets_equal_the_in_memory_ones(tmp_cache, tmp_path):
    folder = make_mixtures(tmp_path, per_pair=6, seconds=0.3)
    memory = cache.load_features(str(folder), "train", frames=32, progress=False)
    streamed = streaming.stream_features(str(folder), "train", frames=32, progress=False)
    assert memory.y.dim() == 2
    assert_same_features(memory, streamed)


def test_shard_writing_resumes_after_a_kill(tmp_cache, monkeypatch):
    clips = load_dataset("synthetic", None, "train", **SYNTH)
    real, seen = cache.clip_grids, []

    def recorded(clips, indices, *args, die_at=None):
        for item in real(clips, indices, *args):
            if item[0] == die_at:
                raise KeyboardInterrupt   # killed while featurizing clip 8, in the third shard
            seen.append(item[0])
            yield item

    monkeypatch.setattr(streaming, "clip_grids", lambda *a: recorded(*a, die_at=8))
    with pytest.raises(KeyboardInterrupt):
        streaming.shard_split(clips, 48, shard_bytes=3 * 48 * 128 * 2, progress=False)
    assert seen == list(range(8))   # shards 0 and 1 complete, shard 2 lost with the kill
    monkeypatch.setattr(streaming, "clip_grids", recorded)
    seen.clear()
    resumed = streaming.shard_split(clips, 48, shard_bytes=3 * 48 * 128 * 2, progress=False)
    assert seen == list(range(6, len(clips)))   # went on after the last complete shard
    assert_same_features(cache.featurize(clips, 48, progress=False), resumed)   # running sums carried on exactly


def test_a_damaged_shard_is_named(tmp_cache):
    clips = load_dataset("synthetic", None, "val", **SYNTH)
    fs = streaming.shard_split(clips, 48, shard_bytes=4 * 48 * 128 * 2, progress=False)
    rows = fs.path / streaming.rows_name(1)
    rows.write_bytes(rows.read_bytes()[:1000])
    with pytest.raises(DatasetError, match="rows-00001.f16: ends at byte"):
        fs.x[5]
    with pytest.raises(IndexError, match="out of range"):
        fs.x[len(fs.x)]


def test_streaming_trains_a_set_larger_than_the_memory_cap(tmp_path, monkeypatch):
    """Auto mode on a synthetic set whose in-memory features exceed the cap: the run streams, no read asks for
    more than a batch of rows, and the weights are those of the in-memory run (the stream flag is not hashed)."""
    cfg = dict(family="ast", dataset="synthetic", protocol=SYNTH, frames=32, data_frames=48, epochs=2, batch_size=4,
               threads=1, progress=False, eval_batch_size=8)
    n_train = len(load_dataset("synthetic", None, "train", **SYNTH))
    cap = 48 * 128 * 4 * n_train // 10   # the training split is 10x the cap
    monkeypatch.setattr(streaming, "STREAM_ABOVE_BYTES", cap)
    largest, real_read = [], streaming.ShardedRows._read
    monkeypatch.setattr(streaming.ShardedRows, "_read", lambda self, idx: largest.append(len(idx)) or
                        real_read(self, idx))
    monkeypatch.setenv("TPRUNE_CACHE", str(tmp_path / "streamed"))
    streamed = T.TrainConfig(**cfg)
    done = json.loads((T.train_run(streamed) / "train.json").read_text())
    features = tmp_path / "streamed" / "features"
    assert {p.suffix for p in features.iterdir()} == {".shards"}   # every split streamed, none in memory
    assert largest and max(largest) <= 8   # a batch (4) or an evaluation batch (8), never the split
    monkeypatch.setenv("TPRUNE_CACHE", str(tmp_path / "memory"))
    in_memory = T.TrainConfig(**cfg, stream=False)
    assert in_memory.hash() == streamed.hash()
    ref = json.loads((T.train_run(in_memory) / "train.json").read_text())
    assert {p.suffix for p in (tmp_path / "memory" / "features").iterdir()} == {".pt"}
    assert done["final_sha256"] == ref["final_sha256"] and done["history"][-1]["val_acc"] == ref["history"][-1]["val_acc"]
