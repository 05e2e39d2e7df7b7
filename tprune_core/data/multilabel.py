"""Multi-label folders: several classes per clip, from a metadata.csv or from AudioSet's official segment lists.

tprune_core.data.folders detects these layouts beside its single-label ones and splits them the same way; this module
reads their files. Every clip gets all its classes (`Clip.labels`, sorted ids) and, as `Clip.label`, the rarest of
them in the whole folder, so that drawn splits are stratified by the classes that are hardest to spread.

- multilabel: `<folder>/metadata.csv` with columns `file,labels` and optionally `split` (train | val | test) and
  `group`, exactly as the single-label metadata.csv (which has `label` instead of `labels`). `labels` names the
  clip's classes separated by `;`, e.g. `dog;rain` (spaces around a name are dropped, a repeated name counts once,
  at least one per clip). A class index fixes the class order, the first found of:
    `classes.csv`, columns `index,name`: `name` is what `labels` uses;
    `class_labels_indices.csv` (AudioSet's own), columns `index,mid,display_name`: `labels` may use the `mid`
    (`/m/09x0r`) or the `display_name` (which then names the class);
  with indices 0..C-1, each once. Classes of the index without a clip are kept (with a warning). Without an index
  the classes are the sorted label names.
- audioset: the official segment lists beside `class_labels_indices.csv`: `balanced_train_segments.csv` and
  `unbalanced_train_segments.csv` give train, `eval_segments.csv` test, in lines
  `YTID, start_seconds, end_seconds, "mid,mid,..."` (lines starting with `#` are comments). The audio of a
  segment is the file anywhere below the folder whose name without its extension is `<YTID>` or `Y<YTID>`, either
  optionally followed by `_<start>` or `_<start>_<end>` (seconds as the list writes them, `30.000`, or whole,
  `30`). Segments without a file (deleted videos: normal for AudioSet) are left out, counted in a warning and in
  the protocol (`missing`). Each segment is its own video: clip id and group are the YTID.

Every bad row is a DatasetError naming the file and line.
"""
from __future__ import annotations

import csv
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError, counted
from .clips import AUDIO_EXT, Clip, read_csv, warn_classes_without_clips

LAYOUTS = {
    "multilabel": "metadata.csv with columns file,labels[,split][,group], labels separated by ';' "
                  "[+ classes.csv (index,name) or class_labels_indices.csv (index,mid,display_name)]",
    "audioset": "AudioSet's balanced_train/unbalanced_train/eval_segments.csv + class_labels_indices.csv, "
                "audio files named <YTID>, Y<YTID> or <YTID>_<start>",
}
SEPARATOR = ";"
INDEX_FILES = {"classes.csv": ("index", "name"), "class_labels_indices.csv": ("index", "mid", "display_name")}
SEGMENT_LISTS = {"balanced_train_segments.csv": "train", "unbalanced_train_segments.csv": "train",
                 "eval_segments.csv": "test"}


@dataclass
class ClassIndex:
    names: list       # class names in index order
    lookup: dict      # what a label may say (name, mid, display name) -> class name
    path: Path


# ---------------------------------------------------------------------------------------------- class index

def class_index(folder: Path) -> ClassIndex | None:
    """The folder's class index (the first of INDEX_FILES present), or None."""
    for name, columns in INDEX_FILES.items():
        path = folder / name
        if path.is_file():
            return _read_index(path, columns)
    return None


def _read_index(path: Path, columns: tuple) -> ClassIndex:
    rows = read_csv(path, set(columns))
    named = columns[-1]                       # name | display_name
    by_index, lookup = {}, {}
    for line, r in enumerate(rows, start=2):
        where = f"{path}, line {line}"
        text, name = (r["index"] or "").strip(), (r[named] or "").strip()
        if not text.isdigit() or not name:
            raise DatasetError(f"{where}: index={text!r}, {named}={name!r}; expected an integer index and a name")
        if int(text) in by_index or name in by_index.values():
            raise DatasetError(f"{where}: index {text} or name {name!r} is listed twice; expected each once")
        by_index[int(text)] = name
        keys = [name] + ([(r["mid"] or "").strip()] if "mid" in columns else [])
        for key in filter(None, keys):
            if lookup.get(key, name) != name:
                raise DatasetError(f"{where}: {key!r} already names class {lookup[key]!r}")
            lookup[key] = name
    if sorted(by_index) != list(range(len(by_index))):
        raise DatasetError(f"{path}: indices {sorted(by_index)[:10]}... are not 0..{len(by_index) - 1}; "
                           f"expected each of 0..C-1 once")
    return ClassIndex([by_index[i] for i in range(len(by_index))], lookup, path)


def label_parser(index: ClassIndex | None):
    """parse(text, where) -> the class names of one `labels` cell (checked against ``index`` when there is one)."""
    def parse(text: str, where: str) -> tuple:
        names = tuple(dict.fromkeys(p.strip() for p in text.split(SEPARATOR) if p.strip()))
        if not names:
            raise DatasetError(f"{where}: labels={text!r}; expected at least one class name (separated by "
                               f"'{SEPARATOR}')")
        return _known(names, index, where)
    return parse


def _known(names: tuple, index: ClassIndex | None, where: str) -> tuple:
    if index is None:
        return names
    unknown = [n for n in names if n not in index.lookup]
    if unknown:
        raise DatasetError(f"{where}: labels {unknown} are not in {index.path.name}; expected names listed there")
    return tuple(dict.fromkeys(index.lookup[n] for n in names))


# ---------------------------------------------------------------------------------------------- clips

def classes_of(rows: list, index: ClassIndex | None, where) -> list:
    """The class list: the index's order (classes without a clip kept, with a warning), else the sorted names."""
    used = {n for r in rows for n in r[1]}
    if index is None:
        return sorted(used)
    absent = [n for n in index.names if n not in used]
    if absent:
        warn_classes_without_clips(where, absent, index.path.name, " (mAP skips classes without a positive clip)")
    return list(index.names)


def make_clips(rows: list, classes: list) -> list:
    """Clips of rows (path, class names, clip id, group, split): labels = sorted class ids, label = the rarest."""
    ids = {n: i for i, n in enumerate(classes)}
    count = Counter(n for r in rows for n in r[1])
    clips = []
    for path, names, cid, group, _ in rows:
        labels = tuple(sorted(ids[n] for n in names))
        rarest = min(labels, key=lambda c: (count[classes[c]], c))
        clips.append(Clip(str(path), rarest, cid, group, labels))
    return clips


# ---------------------------------------------------------------------------------------------- AudioSet

def is_audioset(folder: Path) -> bool:
    return (folder / "class_labels_indices.csv").is_file() and any((folder / n).is_file() for n in SEGMENT_LISTS)


def _segment_lines(path: Path, index: ClassIndex):
    """(line, ytid, start, end, class names) of every segment line of an official list."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f, skipinitialspace=True)
        for fields in reader:
            line = reader.line_num
            if not fields or not "".join(fields).strip() or fields[0].lstrip().startswith("#"):
                continue
            where = f"{path}, line {line}"
            if len(fields) != 4:
                raise DatasetError(f"{where}: {counted(len(fields), 'field')}; expected YTID, start_seconds, "
                                   f"end_seconds, \"mid,mid,...\"")
            ytid, start, end, mids = (x.strip() for x in fields)
            try:
                if not ytid or float(start) > float(end):
                    raise ValueError
            except ValueError:
                raise DatasetError(f"{where}: YTID={ytid!r}, start={start!r}, end={end!r}; expected an id and "
                                   f"seconds with start <= end") from None
            names = tuple(m.strip() for m in mids.split(",") if m.strip())
            if not names:
                raise DatasetError(f"{where}: no positive_labels; expected \"mid,mid,...\"")
            yield line, ytid, start, end, _known(names, index, where)


def _stems(ytid: str, start: str, end: str) -> list:
    """File names (without extension) a segment's audio may have, most specific last."""
    forms = lambda s: list(dict.fromkeys([s, f"{float(s):g}", str(int(float(s)))]))  # noqa: E731
    out = []
    for pre in ("", "Y"):
        out.append(pre + ytid)
        for s in forms(start):
            out.append(f"{pre}{ytid}_{s}")
            out += [f"{pre}{ytid}_{s}_{e}" for e in forms(end)]
    return out


def _audio_by_stem(folder: Path) -> dict:
    found = {}
    for base, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            p = Path(base) / name
            if p.suffix.lower() in AUDIO_EXT and not name.startswith("."):
                found.setdefault(p.stem, p)
    return found


def segments(folder: Path) -> tuple[ClassIndex, list, dict]:
    """(class index, rows (path, names, ytid, ytid, split), protocol notes) of an AudioSet folder."""
    index = _read_index(folder / "class_labels_indices.csv", INDEX_FILES["class_labels_indices.csv"])
    audio = _audio_by_stem(folder)
    rows, seen, missing = [], {}, []
    lists = [n for n in SEGMENT_LISTS if (folder / n).is_file()]
    for name in lists:
        path = folder / name
        for line, ytid, start, end, names in _segment_lines(path, index):
            if ytid in seen:
                raise DatasetError(f"{path}, line {line}: segment {ytid} is also at {seen[ytid]}; expected each "
                                   f"YTID once")
            seen[ytid] = f"{path.name}, line {line}"
            file = next((audio[s] for s in _stems(ytid, start, end) if s in audio), None)
            if file is None:
                missing.append(ytid)
                continue
            rows.append((file, names, ytid, ytid, SEGMENT_LISTS[name]))
    if missing:
        have, are = ("has", "is") if len(missing) == 1 else ("have", "are")
        warnings.warn(f"{folder}: {len(missing)} of {counted(len(seen), 'segment')} of {lists} {have} no audio file "
                      f"below the folder and {are} left out, e.g. {missing[:3]} (expected <YTID>.wav, Y<YTID>.flac, "
                      f"<YTID>_<start>.wav, ...)")
    if not rows:
        raise DatasetError(f"{folder}: none of the {len(seen)} segments of {lists} has an audio file; expected "
                           f"files named <YTID>, Y<YTID> or <YTID>_<start> with an audio extension below the folder")
    return index, rows, {"lists": lists, "missing": len(missing)}
