"""The datasets of the field behind one interface: a `ClipSet` of labelled clips with a fixed, documented split.

    load_dataset(name, root=None, split="train", **protocol) -> ClipSet      split: train | val | test | all

Every split is disjoint by *group* — the unit whose clips must never be in two splits (UrbanSound8K: fold and
source recording fsID; Speech Commands: speaker; ESC-50: fold and source file; synthetic: generating source).
The builders assert it. Protocols (defaults in brackets):

- urbansound8k: test = fold `test_fold` [the last fold present: 10]; train = the other folds, minus a validation
  part of whole source recordings (fsID) holding `val_fraction` [0.15] of each class, chosen with `seed` [0].
  The shared copy has folds 1 and 10: test_fold=10 trains on fold 1 and tests on fold 10, test_fold=1 the reverse.
- speechcommands: official v0.02 layout -> the official validation_list.txt / testing_list.txt, train the rest.
  The shared test-set copy, `extra` ["auto": pooled whenever the extra folder is found, else False] -> with
  `extra=False` (or `fractions` given) speakers split `fractions` [(0.7, 0.15, 0.15)] of the clips into
  train/val/test with `seed` [0]. Labels: yes no up down left right on off stop go + `_unknown_` (every other word);
  11 classes. `extra=True` (or a path) pools extra training speakers (`speechcommands-extra-v0.01`, beside the test copy or
  under $TPRUNE_DATA; v0.01 clips of speakers absent from the v0.02 test list): test = the test copy's speakers
  drawn to hold about `test_fraction` [0.4] of its clips (every class; >= 1,500 clips on the shared copy), val =
  other test-copy speakers holding about `val_fraction` [0.15] of its clips (so selection sees the test's kind of
  recordings), train = the rest of the test copy plus the whole extra folder. All three
  splits are asserted speaker-disjoint across both folders. The extra folder has no on/off clips: those classes
  are trained from the test copy's training speakers only, so the pooled training set is unbalanced.
  `_background_noise_` (the benchmark's `_silence_` class) is not used.
- esc50: test = fold `test_fold` [5], val = fold `val_fold` [4], train = the other three folds.
- voxceleb1: speaker identification, the official iden_split.txt (1 train, 2 val, 3 test); classes = the sorted
  speaker ids; each utterance cut to its first `seconds` [4.0] (tprune_core.data.folders).
- any other folder (a path, or a folder name under `root` / $TPRUNE_DATA): class folders, pre-split folders or a
  metadata.csv; classes = the sorted labels; given splits, else `fractions` [(0.7, 0.15, 0.15)] by group or clip
  with `seed` [0]; default length `seconds` [median clip length]. See tprune_core.data.folders. Multi-label folders (a
  metadata.csv with a `labels` column, AudioSet's segment lists; tprune_core.data.multilabel) give several classes per
  clip (`Clip.labels`, `ClipSet.multilabel`).
- synthetic: generated in memory, deterministic per `seed` [0]; `flavour` "speech" (one short event on near-silence,
  1 s clips) or "ambient" (dense 4 s scenes); 10 classes told apart by time-frequency structure. `per_class` [100]
  sources each emit one clip of every class; sources are split 70/15/15 into train/val/test.
- default / default:ambient / default:speech: urbansound8k / speechcommands when found, else synthetic
  ambient / speech — with a `SyntheticDataWarning` and `source == "synthetic"` on the result, never silently.

Data are found under `root` (the dataset folder or a folder holding it), else under `$TPRUNE_DATA`, as one of the
folder names its record lists (`BUILTINS`, one record per built-in dataset; or any sub-folder whose layout matches).
A path to a folder in a built-in layout loads as that dataset.
"""
import hashlib
import inspect
import json
import math
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DatasetError, TpruneError, counted
from ..paths import data_root
from ..rules import DATA_SPLITS as SPLITS
from . import folders
from .clips import (AUDIO_EXT, Clip, assert_disjoint, carve_by_group, find_audio, missing_error, read_csv,
                    split_by_group, warn_classes_without_clips)
from .synth import SYNTH_FLAVOURS, SYNTH_RATE, SYNTH_VERSION, SynthRenderer

# Extra Speech Commands training speakers (v0.01 clips, no speaker of the v0.02 test list), beside the test copy.
SPEECH_EXTRA_FOLDERS = ["speechcommands-extra-v0.01"]
KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
SPEECH_CLASSES = KEYWORDS + ["_unknown_"]   # every other word is `_unknown_`
DEFAULTS = {"ambient": "urbansound8k", "speech": "speechcommands"}


def frames_for(seconds: float) -> int:
    """Frames of a clip of `seconds` (10 ms hop, 25 ms window), rounded up to a multiple of 16 (the patch size)."""
    frames = int((seconds - 0.025) / 0.010 + 1e-6) + 1
    return 16 * math.ceil(frames / 16)


def seconds_of(frames: int) -> float:
    """The audio `frames` fbank frames cover: one 25 ms window, then 10 ms per frame."""
    return 0.025 + 0.010 * (frames - 1)


class SyntheticDataWarning(UserWarning):
    """The default dataset fell back to synthetic audio because no real data was found."""


@dataclass
class ClipSet:
    name: str
    split: str
    root: str | None
    classes: list
    clips: list
    protocol: dict
    layout: str
    source: str = "real"             # "real" or "synthetic"
    seconds: float | None = None     # nominal clip length
    note: str = ""                   # e.g. why synthetic data stands in for the default
    _synth: object = field(default=None, repr=False)

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, i) -> Clip:
        return self.clips[i]

    def __iter__(self):
        return iter(self.clips)

    def load(self, i, sample_rate: int = 16000):
        """Waveform of clip `i`: 1-D float32 torch tensor at `sample_rate` (raises AudioError for a bad file)."""
        clip = self.clips[i]
        if self._synth is not None:
            import torch
            import torchaudio.functional as AF
            wave = torch.from_numpy(self._synth.render(clip))
            return wave if sample_rate == SYNTH_RATE else AF.resample(wave, SYNTH_RATE, sample_rate)
        from .audio import load_audio
        return load_audio(clip.path, sample_rate)

    def subset(self, indices) -> "ClipSet":
        """The same dataset restricted to some clips (e.g. a quick test on a few real files)."""
        clips = [self.clips[i] for i in indices]
        return ClipSet(self.name, self.split, self.root, self.classes, clips, dict(self.protocol, subset=len(clips)),
                       self.layout, self.source, self.seconds, self.note, self._synth)

    @property
    def multilabel(self) -> bool:
        """Several classes per clip (`Clip.labels`); the feature cache then gives multi-hot targets."""
        return self.layout in folders.MULTILABEL_LAYOUTS

    def class_counts(self) -> dict:
        n = Counter(label for c in self.clips for label in (c.labels or (c.label,)))
        return {name: n[i] for i, name in enumerate(self.classes)}

    def default_frames(self) -> int:
        """Frames of a full clip (10 ms hop, 25 ms window), rounded up to a multiple of 16 (the patch size)."""
        return frames_for(self.seconds)

    def signature(self) -> list:
        """Everything about the clips that changes features: ids, labels, and each file's size and mtime."""
        if self._synth is not None:
            return [SYNTH_VERSION, [(c.clip_id, c.label, c.group) for c in self.clips]]
        rows = []
        for c in self.clips:
            st = os.stat(c.path)
            rows.append((c.clip_id, c.label, c.group, os.path.basename(c.path), st.st_size, st.st_mtime_ns)
                        + ((list(c.labels),) if c.labels else ()))   # multi-label: every class of the clip
        return rows

    def describe(self) -> str:
        proto = ", ".join(f"{k}={v}" for k, v in self.protocol.items())
        where = self.root if self.root else "generated in memory"
        kind = "real audio" if self.source == "real" else "SYNTHETIC audio (generated, not real recordings)"
        per_clip = sum(len(c.labels) for c in self.clips) / max(len(self.clips), 1)
        labels = f" (multi-label, {per_clip:.2f} per clip)" if self.multilabel else ""
        text = (f"{self.name} ({self.layout} layout, {where}) split '{self.split}' [{proto}]: "
                f"{counted(len(self.clips), 'clip')}, {counted(len(self.classes), 'class', 'classes')}{labels}; {kind}")
        return text + (f"; {self.note}" if self.note else "")


# ---------------------------------------------------------------------------------------------- finding data

def _detect(name: str, folder: Path) -> str | None:
    """The layout of `folder` for built-in dataset `name` ("official" / "shared"), or None when it does not match."""
    return BUILTINS[name].detect(folder)


def _detect_urbansound8k(folder: Path) -> str | None:
    if (folder / "audio").is_dir() and any((folder / "audio").glob("fold*")):
        if (folder / "metadata" / "UrbanSound8K.csv").is_file():
            return "official"
        if (folder / "metadata.csv").is_file():
            return "shared"
    return None


def _detect_speechcommands(folder: Path) -> str | None:
    if all((folder / k).is_dir() for k in KEYWORDS):
        if (folder / "testing_list.txt").is_file() and (folder / "validation_list.txt").is_file():
            return "official"
        if (folder / "_unknown_").is_dir():
            return "shared"
    return None


def _detect_esc50(folder: Path) -> str | None:
    return "official" if (folder / "meta" / "esc50.csv").is_file() and (folder / "audio").is_dir() else None


def _detect_voxceleb1(folder: Path) -> str | None:
    return "official" if (folder / "iden_split.txt").is_file() and (folder / "wav").is_dir() else None


def _expected(names=None) -> str:
    """The layouts of `names`; by default every built-in one and the folder layouts."""
    text = "; ".join(f"{n}: " + " | ".join(BUILTINS[n].layouts) for n in names or BUILTINS)
    if names is None:
        text += f"; or any folder of audio, as {folders.expected()}"
    return text


def detect_layout(folder) -> tuple[str, str]:
    """(dataset name, layout) of a dataset folder; DatasetError naming the folder and the expected layouts."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder; expected a dataset folder ({_expected()})")
    for name in BUILTINS:
        layout = _detect(name, folder)
        if layout:
            return name, layout
    raise DatasetError(f"{folder}: matches no known dataset layout; expected {_expected()}")


def _identify(folder: Path) -> tuple:
    """(name, layout, builder) of a dataset folder: a built-in layout first, else a folder layout."""
    for name in BUILTINS:
        layout = _detect(name, folder)
        if layout:
            return name, layout, BUILTINS[name].build
    layout = folders.detect(folder)
    if layout is None:
        raise folders.no_layout_error(folder, _expected())
    return folder.name, layout, folders.build


def _candidates(name: str, base: Path) -> list[Path]:
    named = [base] + [base / f for f in list(BUILTINS[name].folders)]
    others = sorted(p for p in base.iterdir() if p.is_dir() and p not in named) if base.is_dir() else []
    return named + others


def locate(name: str, root=None) -> tuple[Path, str]:
    """(folder, layout) of dataset `name`: `root` itself or a folder in it, else the same under $TPRUNE_DATA."""
    base = Path(root).expanduser().resolve() if root is not None else data_root()
    if base is None:
        raise DatasetError(f"no {name} data: pass root=DIR or set TPRUNE_DATA to a folder holding one of "
                           f"{list(BUILTINS[name].folders)} (`tprune data fetch {name} --to DIR` downloads it where possible)")
    what = f"root={base}" if root is not None else f"TPRUNE_DATA={base}"
    if not base.is_dir():
        raise DatasetError(f"{what}: no such folder; expected a folder holding one of {list(BUILTINS[name].folders)}")
    for folder in _candidates(name, base):
        layout = _detect(name, folder)
        if layout:
            return folder, layout
    raise DatasetError(f"{what}: no {name} data in this folder or its sub-folders (looked for {list(BUILTINS[name].folders)}); "
                       f"expected layout {_expected([name])}")


# ---------------------------------------------------------------------------------------------- splitting

URBANSOUND8K_CLASSES = ("air_conditioner", "car_horn", "children_playing", "dog_bark", "drilling", "engine_idling",
                        "gun_shot", "jackhammer", "siren", "street_music")


def _classes_from(rows, id_col, name_col, path, official=None) -> list:
    """Class names by id from a metadata CSV. With ``official`` (the dataset's fixed list) ids are never renumbered:
    a listed id must name its official class, and classes without a clip are kept, with a warning."""
    names = {}
    for r in rows:
        names.setdefault(int(r[id_col]), r[name_col])
    if official is not None:
        wrong = {i: n for i, n in names.items() if not 0 <= i < len(official) or official[i] != n}
        if wrong:
            raise DatasetError(f"{path}: class ids {wrong} do not match the official ids "
                               f"{dict(enumerate(official))}")
        absent = [official[i] for i in range(len(official)) if i not in names]
        if absent:   # official ids are never renumbered
            warn_classes_without_clips(path, absent, "the official list")
        return list(official)
    if sorted(names) != list(range(len(names))):
        raise DatasetError(f"{path}: class ids {sorted(names)} are not 0..{len(names) - 1}")
    return [names[i] for i in range(len(names))]


# ---------------------------------------------------------------------------------------------- datasets

def _urbansound8k(folder: Path, layout: str, test_fold=None, val_fraction=0.15, seed=0):
    meta = folder / "metadata" / "UrbanSound8K.csv" if layout == "official" else folder / "metadata.csv"
    rows = read_csv(meta, {"slice_file_name", "fsID", "fold", "classID", "class"})
    classes = _classes_from(rows, "classID", "class", meta, list(URBANSOUND8K_CLASSES))
    present = sorted(int(p.name[4:]) for p in (folder / "audio").glob("fold*") if p.is_dir() and p.name[4:].isdigit())
    by_fold, missing, listed = defaultdict(list), [], set()
    for r in rows:
        k = int(r["fold"])
        if k not in present:
            continue  # a fold that is not here (the shared copy holds folds 1 and 10)
        path = find_audio(folder / "audio" / f"fold{k}" / r["slice_file_name"])
        if path is None:
            missing.append(folder / "audio" / f"fold{k}" / r["slice_file_name"])
            continue
        listed.add(path.name)
        by_fold[k].append(Clip(str(path), int(r["classID"]), f"fold{k}/{Path(r['slice_file_name']).stem}", r["fsID"]))
    if missing:
        raise missing_error(folder, meta, missing)
    unlisted = [p for k in present for p in (folder / "audio" / f"fold{k}").iterdir()
                if p.suffix.lower() in AUDIO_EXT and p.name not in listed]
    if unlisted:
        are = "is" if len(unlisted) == 1 else "are"
        warnings.warn(f"{folder}: {counted(len(unlisted), 'audio file')} {are} not in {meta.name} and {are} not "
                      f"used, e.g. {[str(p) for p in unlisted[:3]]}")
    if len(by_fold) < 2:
        raise DatasetError(f"{folder}: UrbanSound8K needs at least two folds with clips to split fold-wise; "
                           f"found {sorted(by_fold)}")
    folds = sorted(by_fold)
    test_fold = folds[-1] if test_fold is None else int(test_fold)
    if test_fold not in by_fold:
        raise ConfigError(f"test_fold={test_fold}: expected one of the folds present in {folder}: {folds}")
    pool = [c for k in folds if k != test_fold for c in by_fold[k]]
    train, val = carve_by_group(pool, val_fraction, seed)
    splits = {"train": train, "val": val, "test": by_fold[test_fold]}
    assert_disjoint("urbansound8k", splits)
    assert_disjoint("urbansound8k", dict(train=train + val, test=splits["test"]),
                     key=lambda c: c.clip_id.split("/")[0], what="fold")
    protocol = dict(test_fold=test_fold, train_folds=[k for k in folds if k != test_fold],
                    val_fraction=val_fraction, seed=seed)
    return classes, splits, protocol, 4.0


def _speaker(stem: str) -> str:
    """Speaker hash of `<hash>_nohash_<n>` (official) or `<word>_<hash>_nohash_<n>` (shared `_unknown_`)."""
    head = stem.split("_nohash_")[0]
    return head.rsplit("_", 1)[-1]


def _speech_clips(folder: Path, id_prefix: str = "") -> list:
    """Clips of a Speech Commands folder of label sub-folders (11 classes: keywords + `_unknown_`)."""
    clips = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        if d.name.startswith("_") and d.name != "_unknown_":
            continue  # _background_noise_: the `_silence_` class, not part of this 11-class task
        label = SPEECH_CLASSES.index(d.name) if d.name in SPEECH_CLASSES else len(KEYWORDS)
        for f in sorted(d.iterdir()):
            if f.suffix.lower() in AUDIO_EXT:
                clips.append(Clip(str(f), label, f"{id_prefix}{d.name}/{f.stem}", _speaker(f.stem)))
    return clips


def locate_speech_extra(test_copy: Path, extra=True) -> Path:
    """The extra training folder: ``extra`` itself when it is a path, else a folder named in SPEECH_EXTRA_FOLDERS
    beside the test copy or under $TPRUNE_DATA."""
    if not isinstance(extra, bool):
        candidates = [Path(extra).expanduser()]
    else:
        bases = [test_copy.parent] + ([data_root()] if data_root() is not None else [])
        candidates = [b / name for b in bases for name in SPEECH_EXTRA_FOLDERS]
    for c in candidates:
        if c.is_dir() and all((c / k).is_dir() for k in ("yes", "no", "_unknown_")):
            return c.resolve()
    raise DatasetError(f"extra={extra!r}: no extra Speech Commands folder found (looked for "
                       f"{[str(c) for c in candidates]}); expected label folders yes/ no/ ... _unknown_/ of audio "
                       f"files from speakers not in the test set")


def _pooled_speech(folder: Path, clips: list, extra, test_fraction: float, val_fraction: float, seed: int):
    """Speech protocol with extra training speakers: the test copy's speakers are drawn into test (about
    ``test_fraction`` of its clips), val (about ``val_fraction``) and train (the rest); the whole extra folder joins
    train. Validation thus comes from the same recordings as the test (v0.02 test-list speakers, lossless, every
    `_unknown_` word), so selecting on it selects for the test distribution. The extra folder has no `on`/`off` and
    only three `_unknown_` words (bed, cat, happy): those come from the test copy's training speakers alone
    (training can balance classes; see train.py)."""
    if not 0 < test_fraction < 1 or not 0 < val_fraction < 1 or test_fraction + val_fraction >= 1:
        raise ConfigError(f"test_fraction={test_fraction}, val_fraction={val_fraction}: expected numbers in (0, 1) "
                          f"with a sum below 1")
    extra_folder = locate_speech_extra(folder, extra)
    extra_clips = _speech_clips(extra_folder, id_prefix="extra/")
    if not extra_clips:
        raise DatasetError(f"{extra_folder}: no audio files in the label folders")
    rest, test = carve_by_group(clips, test_fraction, seed)
    train, val = carve_by_group(rest, val_fraction / (1 - test_fraction), seed + 1)
    train = train + extra_clips
    splits = {"train": train, "val": val, "test": test}
    missing = sorted(set(range(len(SPEECH_CLASSES))) - {c.label for c in test})
    if missing:
        raise DatasetError(f"{folder}: the pooled protocol's test split lacks class(es) {missing}; "
                           f"expected every class in test (raise test_fraction)")
    protocol = dict(split="pooled by speaker", extra=str(extra_folder), test_fraction=test_fraction,
                    val_fraction=val_fraction, seed=seed, test_from="test copy only", val_from="test copy only")
    return splits, protocol


def _pools_by_default(folder: Path, layout: str, fractions) -> bool:
    """``extra="auto"``: the shared test copy pools the extra speakers whenever their folder sits beside it (and no
    ``fractions`` ask for the old 70/15/15 split); the official layout keeps its official lists."""
    if layout == "official" or fractions is not None:
        return False
    # Only a folder beside the copy: a copy elsewhere never silently pools speakers found under $TPRUNE_DATA.
    return any((folder.parent / name).is_dir() for name in SPEECH_EXTRA_FOLDERS)


def split_identity(name, protocol=None) -> str | None:
    """For a built-in dataset whose split depends on more than its name and protocol: a short string naming the
    split actually used (part of a run's hash, so a changed split never serves a stale run); else None. Today:
    Speech Commands pooled with the extra speakers (``"speech-pooled-2"``: version 2 validates on test-copy
    speakers only)."""
    protocol = dict(protocol or {})
    if name != "speechcommands" or protocol.get("extra", "auto") is False:
        return None
    try:
        folder, layout = locate(name)
    except DatasetError:
        return None
    extra = protocol.get("extra", "auto")
    if extra == "auto":
        extra = _pools_by_default(folder, layout, protocol.get("fractions"))
    return "speech-pooled-2" if extra else None


def _speechcommands(folder: Path, layout: str, fractions=None, seed=None, extra="auto", test_fraction=0.4,
                    val_fraction=0.15):
    clips = _speech_clips(folder)
    if not clips:
        raise DatasetError(f"{folder}: no audio files in the label folders; expected {_expected(['speechcommands'])}")
    if extra == "auto":
        extra = _pools_by_default(folder, layout, fractions)
    if extra:   # True, or the extra folder's path
        if layout == "official" or fractions is not None:
            raise ConfigError(f"extra={extra!r}: extra training speakers pool with the shared test-set copy only, "
                              f"and replace `fractions` by test_fraction / val_fraction")
        splits, protocol = _pooled_speech(folder, clips, extra, float(test_fraction), float(val_fraction),
                                          0 if seed is None else int(seed))
    elif layout == "official":
        if fractions is not None or seed is not None:
            raise ConfigError(f"fractions={fractions}, seed={seed}: the official Speech Commands layout in {folder} "
                              f"uses its own "
                              f"validation_list.txt/testing_list.txt; these parameters apply to the shared copy only")
        lists = {}
        for part, fname in (("val", "validation_list.txt"), ("test", "testing_list.txt")):
            lists[part] = {str(Path(line.strip()).with_suffix("")) for line in open(folder / fname) if line.strip()}
        splits = {"train": [], "val": [], "test": []}
        for c in clips:
            splits["val" if c.clip_id in lists["val"] else "test" if c.clip_id in lists["test"] else "train"].append(c)
        protocol = dict(split="official validation/testing lists")
    else:
        fractions = tuple(float(f) for f in (fractions or (0.7, 0.15, 0.15)))
        seed = 0 if seed is None else seed
        if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
            raise ConfigError(f"fractions={fractions}: expected three non-negative numbers (train, val, test)")
        splits = split_by_group(clips, fractions, seed)
        protocol = dict(split="by speaker", fractions=list(fractions), seed=seed)
    assert_disjoint("speechcommands", splits, what="speaker")   # speakers of both folders, all three splits
    return list(SPEECH_CLASSES), splits, protocol, 1.0


def _esc50(folder: Path, layout: str, test_fold=5, val_fold=4):
    meta = folder / "meta" / "esc50.csv"
    rows = read_csv(meta, {"filename", "fold", "target", "category", "src_file"})
    classes = _classes_from(rows, "target", "category", meta)
    folds = sorted({int(r["fold"]) for r in rows})
    for pname, value in (("test_fold", test_fold), ("val_fold", val_fold)):
        if value not in folds:
            raise ConfigError(f"{pname}={value}: expected one of the ESC-50 folds {folds}")
    if test_fold == val_fold:
        raise ConfigError(f"val_fold={val_fold}: must differ from test_fold={test_fold}")
    splits, missing = {"train": [], "val": [], "test": []}, []
    for r in rows:
        path = find_audio(folder / "audio" / r["filename"])
        if path is None:
            missing.append(folder / "audio" / r["filename"])
            continue
        k = int(r["fold"])
        part = "test" if k == test_fold else "val" if k == val_fold else "train"
        splits[part].append(Clip(str(path), int(r["target"]), Path(r["filename"]).stem, r["src_file"]))
    if missing:
        raise missing_error(folder, meta, missing)
    assert_disjoint("esc50", splits, what="source file")
    protocol = dict(test_fold=test_fold, val_fold=val_fold,
                    train_folds=[k for k in folds if k not in (test_fold, val_fold)])
    return classes, splits, protocol, 5.0


def _voxceleb1(folder: Path, layout: str, seconds=4.0):
    return folders.voxceleb1(folder, seconds)


def _describe_speechcommands(protocol: dict) -> str:
    if split_identity("speechcommands", protocol):
        return ("pooled by speaker: train = the extra v0.01 speakers + part of the v0.02 test copy; validation "
                "and test = held-out test-copy speakers (speaker-disjoint across all three, asserted)")
    return "speaker-disjoint 70/15/15 split of the v0.02 test copy (seed 0), or the official lists"


def _describe_urbansound8k(protocol: dict) -> str:
    return (f"test fold {protocol.get('test_fold', 10)}; train = the other folds present, validation carved out by "
            f"source recording (fsID)")


@dataclass(frozen=True)
class Builtin:
    """One built-in dataset: everything this module knows of it, in one place (adding a dataset adds a record)."""
    name: str
    folders: tuple            # folder names looked for under $TPRUNE_DATA (or a root that holds them)
    layouts: tuple            # the layouts it accepts, as the messages name them
    detect: Callable          # folder -> "official" | "shared" | None
    build: Callable           # (folder, layout, **protocol) -> (classes, splits, protocol, seconds)
    describe: Callable | None = None   # protocol -> one line for a chapter's setup box
    official_classes: tuple | None = None


BUILTINS = {r.name: r for r in (
    Builtin("urbansound8k", ("urbansound8k", "UrbanSound8K"),
            ("official: audio/fold1..10/*.wav + metadata/UrbanSound8K.csv",
             "shared copy: audio/fold<k>/*.flac + metadata.csv"),
            _detect_urbansound8k, _urbansound8k, _describe_urbansound8k, URBANSOUND8K_CLASSES),
    Builtin("speechcommands", ("speechcommands-test-v0.02", "speech_commands_v0.02", "speechcommands",
                               "SpeechCommands"),
            ("official v0.02: <label>/*.wav + validation_list.txt + testing_list.txt",
             "shared test set: yes/ no/ up/ down/ left/ right/ on/ off/ stop/ go/ _unknown_/ with audio files"),
            _detect_speechcommands, _speechcommands, _describe_speechcommands, tuple(SPEECH_CLASSES)),
    Builtin("esc50", ("ESC-50", "esc50", "ESC-50-master"), ("official: audio/*.wav + meta/esc50.csv",),
            _detect_esc50, _esc50),
    Builtin("voxceleb1", ("voxceleb1", "VoxCeleb1", "vox1"),
            ("official: wav/<speaker>/<video>/<n>.wav + iden_split.txt",), _detect_voxceleb1, _voxceleb1),
)}
# Views other code reads by name.
FOLDERS = {n: list(r.folders) for n, r in BUILTINS.items()}
LAYOUTS = {n: list(r.layouts) for n, r in BUILTINS.items()}
BUILDERS = {n: r.build for n, r in BUILTINS.items()}
OFFICIAL_CLASSES = {n: list(r.official_classes) for n, r in BUILTINS.items() if r.official_classes}


def _splits(name, folder, layout, protocol, builder=None) -> tuple:
    """(classes, splits, protocol, seconds) from `builder` (default: the record's), every split non-empty."""
    builder = builder or BUILTINS[name].build
    allowed = [k for k in inspect.signature(builder).parameters if k not in ("folder", "layout")]
    unknown = [k for k in protocol if k not in allowed]
    if unknown:
        raise ConfigError(f"{name}: unknown protocol {'parameter' if len(unknown) == 1 else 'parameters'} "
                          f"{unknown}; expected some of {allowed}")
    classes, splits, proto, seconds = builder(folder, layout, **protocol)
    empty = [p for p in ("train", "val", "test") if not splits[p]]
    if empty:
        raise DatasetError(f"{folder}: the {name} protocol {proto} leaves {'split' if len(empty) == 1 else 'splits'} "
                           f"{empty} empty; "
                           f"expected clips in train, val and test")
    return classes, splits, proto, seconds


def _build(name, folder, layout, split, protocol, builder=None) -> ClipSet:
    classes, splits, proto, seconds = _splits(name, folder, layout, protocol, builder)
    clips = [c for p in ("train", "val", "test") for c in splits[p]] if split == "all" else splits[split]
    return ClipSet(name, split, str(folder), classes, clips, proto, layout, "real", seconds)


def takes_seconds(name) -> bool:
    """Whether the dataset's protocol has a `seconds` parameter, its clip length (folders of your own, voxceleb1,
    synthetic; not the fixed-length built-in ones, nor `default`, which may be either)."""
    name = os.fspath(name)
    if name == "synthetic" or name in BUILTINS:
        builder = synthetic if name == "synthetic" else BUILTINS[name].build
        return "seconds" in inspect.signature(builder).parameters
    if name == "default" or name.startswith("default:"):
        return False
    folder = folders.find(name)
    if folder is None:
        return False
    return "seconds" in inspect.signature(_identify(folder)[2]).parameters


def is_builtin(name) -> bool:
    """True for the names this module knows (their name and protocol identify their clips)."""
    return isinstance(name, str) and (name in BUILTINS or name == "synthetic" or name.split(":")[0] == "default")


def describe_protocol(name, protocol=None) -> str:
    """One line on how a dataset's splits are made, for a chapter's setup box."""
    protocol = dict(protocol or {})
    record = BUILTINS.get(name)
    if record is not None and record.describe is not None:
        return record.describe(protocol)
    return f"protocol {protocol or 'default'} (see tprune_core.data.datasets)"


def data_fingerprint(name, protocol=None) -> str | None:
    """None for a built-in dataset; for a user folder, 16 hex digits over its resolved path and every clip of every
    split (ids, labels, groups, file sizes and modification times): changes whenever the folder's content does.
    None too for a name that is no folder at all (e.g. a label for in-memory sets passed straight to ``fit``)."""
    if is_builtin(name):
        return split_identity(name, protocol)
    try:
        if folders.find(name) is None:
            return None
    except DatasetError:
        return None
    with warnings.catch_warnings():   # an identity check: loading the data warns where it is used, not here
        warnings.simplefilter("ignore")
        clips = load_dataset(name, split="all", **dict(protocol or {}))
    text = json.dumps([clips.root, clips.signature()], default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_dataset(name, root=None, split: str = "train", **protocol) -> ClipSet:
    """Clips of one split of a dataset; see the module docstring for names, layouts and protocols. `name` may
    also be a folder: a path, or the name of a folder in `root` / $TPRUNE_DATA (see tprune_core.data.folders)."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: expected one of {SPLITS}")
    name = os.fspath(name)
    if name == "default" or name.startswith("default:"):
        return _load_default(name, root, split, protocol)
    if name == "synthetic":
        return synthetic(split, **protocol)
    if name in BUILTINS:
        folder, layout = locate(name, root)
        return _build(name, folder, layout, split, protocol)
    folder = folders.find(name, root)
    if folder is None:
        where = f"root={root}" if root is not None else f"TPRUNE_DATA={data_root()}"
        raise ConfigError(f"dataset {name!r}: expected one of {sorted(BUILTINS) + ['synthetic', 'default']}, "
                          f"a path to a dataset folder, or the name of one in {where}")
    name, layout, builder = _identify(folder)
    return _build(name, folder, layout, split, protocol, builder)


def _load_default(name, root, split, protocol) -> ClipSet:
    flavour = name.partition(":")[2] or "ambient"
    if flavour not in DEFAULTS:
        raise ConfigError(f"dataset {name!r}: expected 'default', 'default:ambient' or 'default:speech'")
    real = DEFAULTS[flavour]
    try:
        folder, layout = locate(real, root)
    except DatasetError as exc:
        accepted = inspect.signature(synthetic).parameters
        ignored = {k: v for k, v in protocol.items() if k not in accepted}
        note = f"no real {real} data found ({exc}); the SYNTHETIC '{flavour}' dataset stands in for it"
        if ignored:
            note += f"; ignored parameters {ignored}"
        warnings.warn(note, SyntheticDataWarning, stacklevel=3)
        protocol = {k: v for k, v in protocol.items() if k in accepted and k != "flavour"}
        cs = synthetic(split, flavour=flavour, **protocol)
        cs.note = note
        return cs
    return _build(real, folder, layout, split, protocol)


def find_datasets(root=None) -> list[dict]:
    """Every known dataset with where it was found (or not), its clips, classes and default split sizes."""
    base = Path(root).expanduser().resolve() if root is not None else data_root()
    if root is not None and not base.is_dir():
        raise DatasetError(f"root={base}: no such folder; expected a folder holding datasets ({_expected()})")
    out = []
    for name in BUILTINS:
        entry = dict(name=name, path=None, found=False, source="real", layout=None, clips=0, classes=0)
        try:
            folder, layout = locate(name, base) if base is not None else locate(name)
            entry.update(_summary(folder, layout, *_splits(name, folder, layout, {})))
        except DatasetError as exc:
            entry["problem"] = str(exc)
        out.append(entry)
    if base is not None and base.is_dir():
        out += _folder_entries(base)
    if root is not None and not any(e["found"] for e in out):
        raise DatasetError(f"root={base}: no known dataset in this folder or its sub-folders; expected {_expected()}")
    for flavour in SYNTH_FLAVOURS:
        sets = {s: synthetic(s, flavour=flavour) for s in ("train", "val", "test")}
        test = sets["test"]
        out.append(dict(name="synthetic", flavour=flavour, source="synthetic",
                        **_summary(f"synthetic://{flavour}", "generated", test.classes, sets, test.protocol,
                                   test.seconds)))
    return out


def _summary(folder, layout, classes, splits, protocol, seconds) -> dict:
    return dict(path=str(folder), found=True, layout=layout, clips=sum(len(v) for v in splits.values()),
                classes=len(classes), class_names=classes, splits={s: len(v) for s, v in splits.items()},
                protocol=protocol, seconds=seconds)


def _folder_entries(base: Path) -> list[dict]:
    """find_datasets entries of the folder datasets in `base` (or `base` itself), under their folder names.
    Folders a built-in dataset claims are left out: its own folders and the extra Speech Commands speakers."""
    if any(_detect(name, base) for name in BUILTINS):
        return []
    out = []
    for folder in folders.candidates(base):
        if folder.name in SPEECH_EXTRA_FOLDERS or any(_detect(name, folder) for name in BUILDERS):
            continue
        layout = folders.detect(folder)
        entry = dict(name=folder.name, path=str(folder), found=False, source="real", layout=layout, clips=0,
                     classes=0)
        try:
            entry.update(_summary(folder, layout, *_splits(folder.name, folder, layout, {}, folders.build)))
        except TpruneError as exc:
            entry["problem"] = str(exc)
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------------------- synthetic

SYNTH_CLASSES = {
    "speech": ["rise", "fall", "steady", "double_burst", "three_pips", "low_noise", "high_noise", "vibrato",
               "tremolo", "dyad"],
    "ambient": ["hum", "clicks", "siren", "barks", "rain", "wind", "birds", "melody", "engine", "alarm"],
}


def synthetic(split: str = "train", flavour: str = "speech", seed: int = 0, per_class: int = 100,
              seconds: float | None = None) -> ClipSet:
    """Deterministic synthetic dataset: `per_class` sources each emit one clip of each of the 10 classes;
    sources are split 70/15/15 (train/val/test; at least one source each) in a seeded order."""
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}: expected one of {SPLITS}")
    if flavour not in SYNTH_FLAVOURS:
        raise ConfigError(f"flavour={flavour!r}: expected one of {sorted(SYNTH_FLAVOURS)}")
    if int(per_class) < 3:
        raise ConfigError(f"per_class={per_class}: expected at least 3 (one source per split)")
    seconds = float(seconds or SYNTH_FLAVOURS[flavour])
    if seconds < 0.1:
        raise ConfigError(f"seconds={seconds}: expected at least 0.1")
    classes = SYNTH_CLASSES[flavour]
    clips = [Clip(f"synthetic://{flavour}/seed{seed}/{k}", k % 10, f"{flavour}-{k}", f"src{k // 10}")
             for k in range(int(per_class) * 10)]
    order = np.random.default_rng(seed).permutation(int(per_class))  # sources 70/15/15, at least one per split
    n_held = max(1, round(0.15 * int(per_class)))
    part = {int(s): "val" if j < n_held else "test" if j < 2 * n_held else "train" for j, s in enumerate(order)}
    splits = {p: [c for c in clips if part[int(c.group[3:])] == p] for p in ("train", "val", "test")}
    assert_disjoint("synthetic", splits, what="source")
    chosen = clips if split == "all" else splits[split]
    protocol = dict(flavour=flavour, seed=seed, per_class=int(per_class), seconds=seconds)
    return ClipSet("synthetic", split, None, list(classes), chosen, protocol, "generated", "synthetic", seconds,
                   _synth=SynthRenderer(flavour, seed, seconds))
