"""Any folder of labelled audio as a dataset, and VoxCeleb1 speaker identification.

`datasets.load_dataset` hands a name it does not know to `find` (a path, or the name of a folder under `root` /
$TPRUNE_DATA); a folder that no built-in layout claims is read here, in one of three layouts (`detect`):

- classes:  `<folder>/<label>/*.{wav,flac,ogg,mp3,aiff}` (files directly in the class folder; at least two classes)
- presplit: `<folder>/{train,val,test}/<label>/...` (`valid`/`validation` also name val; val may be absent)
- metadata: `<folder>/metadata.csv` with columns `file,label` and optionally `split` (train | val | test) and
  `group` (the unit that must never straddle splits: speaker, source recording, ...); `file` is relative to the
  folder (or absolute).
- multilabel / audioset: several classes per clip, from a metadata.csv with a `labels` column or from AudioSet's
  official segment lists; read by tprune_core.data.multilabel (formats there), split as below.

Classes are the sorted label names. Splits (protocol parameters, defaults in brackets):

- given (presplit folders, a `split` column): used as they are; without val, `val_fraction` [0.15] of each class
  is carved from train with `seed` [0] (by group when there is a `group` column).
- not given: `fractions` [(0.7, 0.15, 0.15)] of each class go to train/val/test, drawn with `seed` [0], by whole
  groups when there is a `group` column, else clip by clip, which warns: clips cut from one recording may then
  land in two splits and flatter the test accuracy.

Clip length: files may differ in sample rate, channels and length (`audio.load_audio` resamples and averages the
channels). `seconds` [the median clip length] sets the default frame count (`ClipSet.default_frames`); the feature
grid crops longer clips from the start and pads shorter ones (`features.pad_or_crop`). The chosen value and how it
was found are in the protocol, so `ClipSet.describe()` states them.

VoxCeleb1 (`voxceleb1`, layout `wav/<speaker>/<video>/<n>.wav` + the official `iden_split.txt`, lines
`<1|2|3> <speaker>/<video>/<n>.wav`: 1 train, 2 val, 3 test): one class per speaker (sorted ids), the group is the
video. Utterances last 4-145 s; each is cut to its first `seconds` [4.0] (crop from the start, the few shorter ones
padded); training with `data_frames` > `frames` then draws random crops inside that window.
"""
import csv
import os
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf

from ..errors import ConfigError, DatasetError, counted
from ..paths import data_root
from . import multilabel
from .clips import AUDIO_EXT, Clip, assert_disjoint, carve_by_group, find_audio, missing_error, read_csv

LAYOUTS = {  # layout -> what it looks like
    "classes": "<label>/*.wav|flac|ogg|mp3|aiff (one folder per class, at least two)",
    "presplit": "{train,val,test}/<label>/*.wav|... (val optional)",
    "metadata": "metadata.csv with columns file,label[,split][,group]",
    **multilabel.LAYOUTS,   # several classes per clip (tprune_core.data.multilabel)
}
MULTILABEL_LAYOUTS = frozenset(multilabel.LAYOUTS)
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
PARTS = ("train", "val", "test")
FRACTIONS = (0.7, 0.15, 0.15)
VAL_FRACTION = 0.15
VOX_SPLITS = {"1": "train", "2": "val", "3": "test"}


def expected() -> str:
    return "; ".join(f"{k}: {v}" for k, v in LAYOUTS.items())


# ---------------------------------------------------------------------------------------------- finding

def find(name, root=None) -> Path | None:
    """The folder `name` refers to: a path (absolute, or with a `/`, `.` or `~`), else a folder of that name in
    `root` (or `root` itself) or under $TPRUNE_DATA, else a folder of that name in the working directory."""
    text = os.fspath(name)
    path = Path(text).expanduser()
    if path.is_absolute() or "/" in text or os.sep in text or text.startswith((".", "~")):
        if not path.is_dir():
            raise DatasetError(f"{path}: no such folder; expected a dataset folder ({expected()})")
        return path.resolve()
    base = Path(root).expanduser() if root is not None else data_root()
    for folder in ([base, base / text] if base is not None else []) + [path]:
        if folder.name == text and folder.is_dir():
            return folder.resolve()
    return None


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in AUDIO_EXT and not p.name.startswith(".") and p.is_file())


def _csv_columns(path: Path) -> set:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return {c.strip() for c in next(csv.reader(f), [])}
    except (UnicodeDecodeError, csv.Error):  # not a text CSV: no columns, so no metadata layout
        return set()


def _split_dirs(folder: Path) -> dict:
    """split -> the sub-folders of `folder` named for it in SPLIT_NAMES (more than one is an error when read)."""
    out = {}
    for d in _subdirs(folder):
        if d.name.lower() in SPLIT_NAMES:
            out.setdefault(SPLIT_NAMES[d.name.lower()], []).append(d)
    return out


def _holds_classes(folder: Path) -> bool:
    return sum(1 for d in _subdirs(folder) if _audio_files(d)) >= 2


def detect(folder) -> str | None:
    """The folder layout of `folder` (a key of LAYOUTS), or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    meta = folder / "metadata.csv"
    columns = _csv_columns(meta) if meta.is_file() else set()
    if {"file", "label"} <= columns:
        return "metadata"
    if {"file", "labels"} <= columns:
        return "multilabel"
    if multilabel.is_audioset(folder):
        return "audioset"
    parts = _split_dirs(folder)
    if "train" in parts and "test" in parts and any(_audio_files(d) for dirs in parts.values() for p in dirs
                                                    for d in _subdirs(p)):
        return "presplit"
    return "classes" if _holds_classes(folder) else None


def candidates(base: Path) -> list[Path]:
    """`base` when it is a folder dataset itself, else its sub-folders that are."""
    if detect(base):
        return [base]
    return [d for d in _subdirs(base) if detect(d)]


def no_layout_error(folder: Path, layouts: str) -> DatasetError:
    """A folder nothing claims; says why when it has a metadata.csv with the wrong columns, and in one short line
    when it is a class-folder dataset with a single class (the long list of layouts would bury that)."""
    meta = folder / "metadata.csv"
    why = ""
    if meta.is_file():
        why = f" ({meta} has columns {sorted(_csv_columns(meta))}, not file,label or file,labels)"
    elif not any(folder.iterdir()):
        why = " (empty folder)"
    else:
        with_audio = [d.name for d in _subdirs(folder) if _audio_files(d)]
        if len(with_audio) == 1:
            silent = [d.name for d in _subdirs(folder) if d.name != with_audio[0]]
            others = f"; {', '.join(silent)} {'holds' if len(silent) == 1 else 'hold'} no audio" if silent else ""
            return DatasetError(f"{folder}: 1 class folder found ({with_audio[0]}); need at least 2{others} "
                                f"({LAYOUTS['classes']})")
    return DatasetError(f"{folder}: matches no dataset layout{why}; expected {layouts}")


# ---------------------------------------------------------------------------------------------- reading

def _class_files(folder: Path) -> dict:
    """label -> audio files of a folder of class folders; an empty class folder is an error."""
    out = {}
    for d in _subdirs(folder):
        files = _audio_files(d)
        if not files:
            raise DatasetError(f"{d}: no audio files ({', '.join(sorted(AUDIO_EXT))}) in this class folder; "
                               f"expected <label>/*.wav|flac|... (remove the folder or add clips)")
        out[d.name] = files
    stray = _audio_files(folder)
    if stray:
        lie = "lies" if len(stray) == 1 else "lie"
        warnings.warn(f"{folder}: {counted(len(stray), 'audio file')} {lie} outside any class folder and "
                      f"{'is' if len(stray) == 1 else 'are'} not used, e.g. {[str(p) for p in stray[:3]]}")
    if not out:
        raise DatasetError(f"{folder}: no class folders; expected {LAYOUTS['classes']}")
    return out


def _from_folders(folder: Path, layout: str) -> list[tuple]:
    """(path, label, clip id, group, split or None) of a class-folder or pre-split dataset."""
    if layout == "presplit":
        named = _split_dirs(folder)
        twice = {part: [d.name for d in dirs] for part, dirs in named.items() if len(dirs) > 1}
        if twice:
            raise DatasetError(f"{folder}: sub-folders {twice} name the same split; expected one folder per split")
        dirs = {part: found[0] for part, found in named.items()}
        unused = [d.name for d in _subdirs(folder) if d not in dirs.values()]
        if unused:
            warnings.warn(f"{folder}: sub-folders {unused} are not train/val/test and are not used")
    else:
        dirs = {None: folder}
    rows = []
    for part, d in dirs.items():
        for label, files in _class_files(d).items():
            for f in files:
                cid = f.relative_to(folder).as_posix()
                rows.append((f, label, cid, cid, part))
    return rows


def _from_metadata(folder: Path, column: str = "label", parse=None) -> tuple[list, bool]:
    """Rows of metadata.csv as in _from_folders, and whether it has a group column. ``column``: the label column;
    ``parse(text, where)``, if given, turns its text into the row's label (multi-label: a tuple of class names)."""
    meta = folder / "metadata.csv"
    rows = read_csv(meta, {"file", column})
    if not rows:
        layout = "metadata" if column == "label" else "multilabel"
        raise DatasetError(f"{meta}: no rows; expected one line per clip ({LAYOUTS[layout]})")
    has_split, has_group = "split" in rows[0], "group" in rows[0]
    out, missing, seen = [], [], set()
    for line, r in enumerate(rows, start=2):
        where = f"{meta}, line {line}"
        file, label = (r["file"] or "").strip(), (r[column] or "").strip()
        if not file or not label:
            raise DatasetError(f"{where}: file={file!r}, {column}={label!r}; expected both")
        if parse is not None:
            label = parse(label, where)
        cid = Path(file).as_posix()
        if cid in seen:
            raise DatasetError(f"{where}: {file} is listed twice; expected each file once")
        seen.add(cid)
        part = None
        if has_split:
            value = (r["split"] or "").strip()
            part = SPLIT_NAMES.get(value.lower())
            if part is None:
                raise DatasetError(f"{where}: split {value!r}; expected one of train, val, test "
                                   f"(valid and validation also mean val)")
        group = (r["group"] or "").strip() if has_group else cid
        if not group:
            raise DatasetError(f"{where}: empty group; expected the source (speaker, recording) of {file}")
        path = Path(file) if Path(file).is_absolute() else folder / file
        if not path.is_file():
            missing.append(path)
            continue
        out.append((path, label, cid, group, part))
    if missing:
        raise missing_error(folder, meta, missing)
    return out, has_group


# ---------------------------------------------------------------------------------------------- splitting

def _fraction(name, value) -> float:
    value = float(value)
    if not 0 < value < 1:
        raise ConfigError(f"{name}={value}: expected a number in (0, 1)")
    return value


_WARNED_UNGROUPED = set()   # the clip-by-clip warnings already given in this process


def _split(where, clips, parts, grouped, fractions, seed, val_fraction) -> tuple[dict, dict]:
    """train/val/test of `clips`, from the given `parts` (one split name or None per clip) or drawn."""
    unit = "by group" if grouped else "clip by clip, stratified by class"
    drawn = None
    if all(p is not None for p in parts):
        if fractions is not None:
            raise ConfigError(f"fractions={fractions}: {where} gives its own splits; fractions apply to unsplit "
                              f"folders only")
        splits = {p: [c for c, q in zip(clips, parts) if q == p] for p in PARTS}
        lacking = [p for p in ("train", "test") if not splits[p]]
        if lacking:
            raise DatasetError(f"{where}: no {' or '.join(lacking)} clips; a dataset that gives its splits needs "
                               f"train and test (val is optional)")
        if splits["val"]:
            if seed is not None or val_fraction is not None:
                raise ConfigError(f"seed={seed}, val_fraction={val_fraction}: {where} gives train, val and test; "
                                  f"nothing is drawn")
            proto = dict(split="given")
        else:
            seed = 0 if seed is None else int(seed)
            vf = _fraction("val_fraction", VAL_FRACTION if val_fraction is None else val_fraction)
            splits["train"], splits["val"] = carve_by_group(splits["train"], vf, seed)
            drawn = "train and val"
            proto = dict(split=f"given; val carved from train {unit}", val_fraction=vf, seed=seed)
    else:
        if val_fraction is not None:
            raise ConfigError(f"val_fraction={val_fraction}: {where} gives no splits; pass fractions=(train, val, "
                              f"test) instead")
        fr = tuple(float(f) for f in (fractions or FRACTIONS))
        if len(fr) != 3 or min(fr) <= 0:
            raise ConfigError(f"fractions={fractions}: expected three positive numbers (train, val, test)")
        seed = 0 if seed is None else int(seed)
        rest, test = carve_by_group(clips, fr[2] / sum(fr), seed)
        train, val = carve_by_group(rest, fr[1] / (fr[0] + fr[1]), seed + 1)
        splits = {"train": train, "val": val, "test": test}
        drawn, proto = "train, val and test", dict(split=unit, fractions=list(fr), seed=seed)
    if drawn and not grouped:
        message = (f"{where}: {drawn} are drawn clip by clip (no group is known), so clips cut from one source "
                   f"recording may land in two of them and flatter the accuracy; give a `group` column in "
                   f"metadata.csv (or pre-split the folder) to prevent it")
        if message not in _WARNED_UNGROUPED:
            _WARNED_UNGROUPED.add(message)   # the splits are drawn again for every run and split: say it once
            warnings.warn(message)
    assert_disjoint(str(where), splits)
    return splits, proto


# ---------------------------------------------------------------------------------------------- clip length

_DURATIONS = {}  # (path, size, mtime) -> seconds, or None for a file soundfile cannot open


def _duration(path: str) -> float | None:
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _DURATIONS:
        try:
            with sf.SoundFile(path) as f:
                _DURATIONS[key] = f.frames / f.samplerate
        except Exception:  # unreadable: `tprune data check` / featurizing name the file
            _DURATIONS[key] = None
    return _DURATIONS[key]


def clip_seconds(clips, seconds=None) -> tuple[float, str]:
    """(seconds, how it was chosen): `seconds` when given, else the median length of the clips soundfile opens."""
    if seconds is not None:
        seconds = float(seconds)
        if seconds < 0.025:
            raise ConfigError(f"seconds={seconds}: expected at least one 25 ms window")
        return seconds, "given"
    lengths = [d for d in (_duration(c.path) for c in clips) if d is not None]
    if not lengths:
        return 1.0, "1 s: no clip length could be read"
    return max(round(float(np.median(lengths)), 3), 0.025), f"median of {counted(len(lengths), 'clip')}"


def _length_note(seconds, how) -> str:
    return f"{how}; longer clips cropped to the first {seconds:g} s, shorter padded"


# ---------------------------------------------------------------------------------------------- builders

def build(folder: Path, layout: str, fractions=None, seed=None, val_fraction=None, seconds=None):
    """(classes, splits, protocol, seconds) of a folder dataset: the datasets.BUILDERS contract."""
    read = _multilabel_clips if layout in MULTILABEL_LAYOUTS else _single_label_clips
    classes, clips, parts, grouped, where, notes = read(folder, layout)
    if len(classes) < 2:
        found = f"1 class found ({classes[0]})" if classes else "no class found"
        raise DatasetError(f"{where}: {found}; need at least 2 labels")
    splits, proto = _split(where, clips, parts, grouped, fractions, seed, val_fraction)
    proto.update(notes)
    secs, how = clip_seconds(clips, seconds)
    proto.update(seconds=secs, length=_length_note(secs, how))
    return classes, splits, proto, secs


def _single_label_clips(folder: Path, layout: str) -> tuple:
    """(classes, clips, given split per clip, grouped, where, protocol notes) of a class-folder, pre-split or
    metadata.csv folder."""
    if layout == "metadata":
        rows, grouped = _from_metadata(folder)
        where = folder / "metadata.csv"
    else:
        rows, grouped, where = _from_folders(folder, layout), False, folder
    classes = sorted({r[1] for r in rows})
    index = {name: i for i, name in enumerate(classes)}
    clips = [Clip(str(path), index[label], cid, group) for path, label, cid, group, _ in rows]
    return classes, clips, [r[4] for r in rows], grouped, where, {}


def _multilabel_clips(folder: Path, layout: str) -> tuple:
    """The same as _single_label_clips for a multi-label folder (tprune_core.data.multilabel)."""
    if layout == "audioset":
        index, rows, notes = multilabel.segments(folder)
        grouped, where = True, folder
    else:
        index = multilabel.class_index(folder)
        rows, grouped = _from_metadata(folder, "labels", multilabel.label_parser(index))
        where, notes = folder / "metadata.csv", {"class_index": index.path.name} if index is not None else {}
    classes = multilabel.classes_of(rows, index, where)
    return classes, multilabel.make_clips(rows, classes), [r[4] for r in rows], grouped, where, notes


def voxceleb1(folder: Path, seconds=4.0):
    """(classes, splits, protocol, seconds) of VoxCeleb1 identification from the official iden_split.txt."""
    listing = folder / "iden_split.txt"
    splits, missing, speakers = {p: [] for p in PARTS}, [], set()
    for n, line in enumerate(listing.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or fields[1].count("/") != 2:
            raise DatasetError(f"{listing}, line {n}: {line!r}; expected '<1|2|3> <speaker>/<video>/<n>.wav'")
        if fields[0] not in VOX_SPLITS:
            raise DatasetError(f"{listing}, line {n}: split {fields[0]!r}; expected 1 (train), 2 (val) or 3 (test)")
        path = find_audio(folder / "wav" / fields[1])
        if path is None:
            missing.append(folder / "wav" / fields[1])
            continue
        speaker, video, _ = fields[1].split("/")
        speakers.add(speaker)
        splits[VOX_SPLITS[fields[0]]].append((str(path), speaker, str(Path(fields[1]).with_suffix("")), video))
    if missing:
        raise missing_error(folder, listing, missing)
    classes = sorted(speakers)
    index = {s: i for i, s in enumerate(classes)}
    splits = {p: [Clip(path, index[s], cid, f"{s}/{video}") for path, s, cid, video in rows]
              for p, rows in splits.items()}
    secs, how = clip_seconds([c for p in PARTS for c in splits[p]], seconds)
    videos = [{c.group for c in splits[p]} for p in PARTS]
    shared = len((videos[0] & videos[1]) | (videos[0] & videos[2]) | (videos[1] & videos[2]))
    protocol = dict(split="official iden_split.txt (1 train, 2 val, 3 test)", videos_in_two_splits=shared,
                    seconds=secs, length=_length_note(secs, how))
    return classes, splits, protocol, secs
