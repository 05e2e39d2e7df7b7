"""Clips and group-disjoint splits: the pieces every dataset layout is built from (datasets.py's built-in
layouts, folders.py's user folders).

A `Clip` is one labelled file with its *group*, the unit that must never straddle splits (a source recording, a
speaker, a video). `carve_by_group` / `split_by_group` split by whole groups, seeded; `assert_disjoint` is the check
every builder runs on its splits.
"""
import csv
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError, counted

AUDIO_EXT = {".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3"}


@dataclass(frozen=True)
class Clip:
    path: str      # file path, or "synthetic://<flavour>/seed<seed>/<k>"
    label: int     # 0..C-1
    clip_id: str   # unique within the dataset, stable across machines
    group: str     # fsID / speaker / ESC source / synthetic source: never in two splits
    labels: tuple = ()  # multi-label sets: every class of the clip (`label` is then its rarest, for stratifying)


def carve_by_group(clips: list, fraction: float, seed: int) -> tuple[list, list]:
    """Split clips into (kept, held-out) by whole groups, the held-out part holding about `fraction` of each
    class's clips (a group counts under its most common label). Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    by_group = defaultdict(list)
    for c in clips:
        by_group[c.group].append(c)
    label_of = {g: Counter(c.label for c in cs).most_common(1)[0][0] for g, cs in by_group.items()}
    held = set()
    for label in sorted(set(label_of.values())):
        groups = sorted(g for g in by_group if label_of[g] == label)
        target, taken = fraction * sum(len(by_group[g]) for g in groups), 0
        for i in rng.permutation(len(groups)):
            size = len(by_group[groups[i]])
            if abs(taken + size - target) < abs(taken - target):  # only take groups that bring us closer
                held.add(groups[i])
                taken += size
    if fraction > 0 and not held and len(by_group) > 1:  # tiny data: hold out one group rather than none
        groups = sorted(by_group, key=lambda g: (len(by_group[g]), g))
        held.add(groups[0])
    return [c for c in clips if c.group not in held], [c for c in clips if c.group in held]


def split_by_group(clips: list, fractions, seed: int) -> dict:
    """train/val/test by whole groups in a seeded random order, cut where the clip counts reach `fractions`."""
    by_group = defaultdict(list)
    for c in clips:
        by_group[c.group].append(c)
    groups = sorted(by_group)
    bounds = np.cumsum(fractions) / np.sum(fractions) * len(clips)
    out, seen = {"train": [], "val": [], "test": []}, 0
    for i in np.random.default_rng(seed).permutation(len(groups)):
        part = "train" if seen < bounds[0] else "val" if seen < bounds[1] else "test"
        out[part] += by_group[groups[i]]
        seen += len(by_group[groups[i]])
    return out


def assert_disjoint(name: str, splits: dict, key=lambda c: c.group, what="group"):
    parts = [p for p in ("train", "val", "test") if p in splits]
    for i, a in enumerate(parts):
        for b in parts[i + 1:]:
            shared = {key(c) for c in splits[a]} & {key(c) for c in splits[b]}
            if shared:  # a real check, not `assert`: it must survive python -O
                raise DatasetError(f"{name}: {what}s {sorted(shared)[:5]} are in both '{a}' and '{b}'; "
                                   f"splits must be disjoint by {what}")
    ids = [c.clip_id for p in parts for c in splits[p]]
    if len(ids) != len(set(ids)):
        raise DatasetError(f"{name}: a clip id is in two splits")


def find_audio(path: Path) -> Path | None:
    """`path`, or the same name with another audio extension (the shared copies are FLAC, official WAV)."""
    if path.is_file():
        return path
    for ext in AUDIO_EXT:
        other = path.with_suffix(ext)
        if other.is_file():
            return other
    return None


def read_csv(path: Path, columns: set) -> list[dict]:
    with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: a spreadsheet's byte-order mark
        reader = csv.DictReader(f)
        reader.fieldnames = [c.strip() for c in reader.fieldnames or ()]
        rows = list(reader)
    missing = columns - set(reader.fieldnames)
    if missing:
        raise DatasetError(f"{path}: missing columns {sorted(missing)}; expected at least {sorted(columns)}")
    return rows


# The official class ids of the datasets with a fixed class list: a copy that lacks some classes keeps them.


def missing_error(folder, listing, missing):
    if len(missing) == 1:
        return DatasetError(f"{folder}: 1 file listed in {listing} is missing: {missing[0]}")
    return DatasetError(f"{folder}: {counted(len(missing), 'file')} listed in {listing} are missing, "
                        f"e.g. {[str(m) for m in missing[:3]]}")


def warn_classes_without_clips(where, absent: list, listing: str, note: str = "") -> None:
    """One warning for the classes a fixed class list (``listing``: where it comes from) names but no clip has:
    they are kept, so a model trained here has an output for each that never sees a clip."""
    one = len(absent) == 1
    shown = f"{absent[:10]}{' ...' if len(absent) > 10 else ''}"
    warnings.warn(f"{where}: no clip of {counted(len(absent), 'class', 'classes')} of {listing}, {shown}; "
                  f"{'it is' if one else 'they are'} kept, so a model trained here has {'an output' if one else 'outputs'}"
                  f" for {'it' if one else 'them'} that never {'sees' if one else 'see'} a clip{note}")
