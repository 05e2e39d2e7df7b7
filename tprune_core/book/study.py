"""`tprune study PATH`: the book's study on a folder of your own audio, fine-tuned from the released encoders.

    spec = make_spec("/data/digits")                   # the study of a folder: recipe, starts, clip counts
    run_study("/data/digits", jobs=2)                  # check every file, plan + estimate, train, run the chapters

A study is a zoo profile, ``study-<name>``, kept as JSON in $TPRUNE_CACHE/studies/<name>.json (``zoo.read_study``;
``zoo.ZOO["study-<name>"]`` is its ``zoo`` part), so ``zoo_plan``, ``zoo_entries`` and ``build_zoo`` work on it as on
the built-in profiles. The spec records the folder, its content fingerprint, the clips per split, the clip length,
the release the models start from and a recipe derived from ZOO["full"] and sized to the folder (``recipe``).

What is trained (``zoo.zoo_plan``): both families x 3 seeds of unpruned base models, then, per base model, the
pruning-aware fine-tunes the pruning chapters read (TopK, random and patch mean at the keep rate nearest a 40% MAC
cut) and their keep-rate-1.0 control. Nothing starts from scratch and no MAE is trained: AudioMAE-style models start
from the released MAE encoder, AST-style ones from a released supervised AST-style model (all but its head, as AST
starts from ImageNet), for each seed the released model of that seed where there is one.

Which chapters (``CHAPTERS``; ``LEFT_OUT`` says why the others are not run) are executed with
``-p zoo_profile study-<name> -p datasets ["<name>"]`` into book/reruns/ (``book.run_chapter``).

Resumable: every run is cached by its hash and a killed run continues from its last checkpoint (``train.train_run``);
a chapter already executed on the same models by the same code is not executed again. A changed folder (another
fingerprint) gets a new spec, and so new runs.
"""
from __future__ import annotations

import copy
import datetime as _dt
import json
import math
import re
import sys
import time
from pathlib import Path

from ..data.datasets import data_fingerprint, frames_for, is_builtin, load_dataset, seconds_of
from ..errors import AudioError, ConfigError, counted
from ..data.folders import LAYOUTS as FOLDER_LAYOUTS
from ..fsio import atomic_write_json
from ..rules import FAMILIES, ON_ERROR, PATCH
from ..training import build, release, zoo

FORMAT = "tprune-study/1"
PREFIX = zoo.STUDY_PREFIX

# Base-model epochs = CLIP_EPOCHS / training clips, within [MIN_EPOCHS, MAX_EPOCHS]. Sized so that a folder of
# ~2,000 clips (~1,400 training clips of 1 s: 4 epochs) trains its 30 runs in under 20 min on 2 cores, leaving ~10
# min of the 30 for the chapters (digits folder, AMD EPYC, idle: 13.9 min, 25 worker-minutes; the estimate
# below, from the release's own run times, says 19). Fine-tunes keep ZOO["full"]'s 2 epochs.
CLIP_EPOCHS = 5500
MIN_EPOCHS, MAX_EPOCHS = 3, 30
MAX_SECONDS = 4.0      # the longest input the zoo trains (UrbanSound8K, 400 frames); longer clips: --seconds
MAC_CUT = 0.4          # the pruned fine-tunes' operating point, as ZOO["full"]: the keep rate nearest a 40% MAC cut

CHAPTERS = {   # run on a study by default: each asks its questions of every model family on one dataset
    "pruning-tradeoffs": "accuracy against keep rate and MACs, the cut for < 1 point against the control, TopK "
                         "against random / patch-mean fine-tunes and against ToMe / EViT at equal MACs",
    "what-attention-sees": "which patches attention keeps, against their intensity and position",
}
OPTIONAL = {   # run on one dataset too, on request (--chapters): longer
    "intensity-buckets": "dropping whole loudness buckets of patches (k-means on the training split): about as "
                         "many evaluations as pruning-tradeoffs again",
}
LEFT_OUT = {
    "speech-vs-general": "compares a speech dataset with a general-audio one: a study has one dataset",
    "counting-the-work": "counts MACs and times models of every size: no trained model and no data enter it",
}
# Test-split passes per base model a chapter makes (counted from its settings at the full book profile), for the
# estimate.
CHAPTER_PASSES = {"pruning-tradeoffs": 40, "what-attention-sees": 4, "intensity-buckets": 35}
CHAPTER_OVERHEAD = 45  # s per chapter: kernel, data, plots
# A test-split pass costs this fraction of a training clip-epoch per clip: no backward pass, bf16, two threads. On
# the digits folder (2,000 spoken keywords, 6 base models, 319 test clips of 56 tokens; AMD EPYC, idle) the
# chapters took 125 s + 46 s against 171 s + 57 s estimated with it, 15 min with the earlier third.
PASS_FRACTION = 1 / 16

# Without a release record to measure from: 0.0173 s per training clip-epoch at 48 tokens (the release's Speech
# Commands base runs, AMD EPYC, one thread per run beside another), growing as tokens^1.2 (its UrbanSound8K runs).
FALLBACK_COST = (0.0173, 48, 1.2)


# ---------------------------------------------------------------------------------------------- the spec

def study_name(folder: Path, name: str | None) -> str:
    """The study's name (default: the folder's), checked: letters, digits, '_' or '-', not a built-in dataset."""
    name = name if name is not None else re.sub(r"[^A-Za-z0-9_-]+", "-", folder.name).strip("-_").lower()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,47}", name or ""):
        raise ConfigError(f"--name {name!r}: expected letters, digits, '_' or '-' (at most 48, starting with a "
                          "letter or digit)")
    if is_builtin(name) or name in zoo.ZOO["full"]["datasets"]:
        raise ConfigError(f"--name {name!r}: the name of a built-in dataset; the chapters would mistake the study "
                          "for it. Choose another --name")
    return name


def survey(path, seconds: float | None = None) -> dict:
    """What the loaders make of a folder: layout, classes, clips per split, clip length and the protocol the runs
    use. Raises naming the problem (layout, a class missing from a split, ...) before any audio is decoded."""
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"{path}: no such folder; expected a folder of your own audio (`tprune data check PATH` "
                          "says what it finds)")
    protocol = {} if seconds is None else {"seconds": float(seconds)}
    sets = {s: load_dataset(str(folder), split=s, **protocol) for s in ("train", "val", "test")}
    if is_builtin(sets["train"].name) or sets["train"].layout not in FOLDER_LAYOUTS:
        raise ConfigError(f"{folder}: a {sets['train'].name} folder (built-in layout {sets['train'].layout!r}); its "
                          "models are the zoo's own: run the chapters on it (`tprune run CHAPTER`)")
    for split, cs in sets.items():
        if len(cs) == 0:
            raise ConfigError(f"{folder}: the {split} split is empty; expected clips in train, val and test")
    secs, how = sets["train"].seconds, str(sets["train"].protocol.get("length", "")).split(";")[0]
    if seconds is None and secs > MAX_SECONDS:   # read the first MAX_SECONDS: the zoo's longest input
        protocol, how = {"seconds": MAX_SECONDS}, f"{how}, capped at {MAX_SECONDS:g} s (--seconds changes it)"
        secs = MAX_SECONDS
    return {"folder": str(folder), "layout": sets["train"].layout, "classes": list(sets["train"].classes),
            "clips": {s: len(cs) for s, cs in sets.items()}, "seconds": secs, "seconds_how": how or "given",
            "frames": frames_for(secs), "protocol": protocol, "split": sets["train"].protocol.get("split", "")}


def release_starts(seeds, release_profile: str = "full") -> dict:
    """Per family and seed, the released model a study's base model starts from: the MAE encoder for AudioMAE-style
    models; for AST-style ones the released AST-style classifiers of the dataset with the most seeds (then the best
    mean test accuracy), seed s from its seed-s model, else from its (s mod n)-th. Names, inits and the AST
    architecture (LayerScale etc. must match the weights)."""
    records = release.read_manifest(release_profile)["models"]
    where = release.release_dir(release_profile)
    mae = [r for r in records if r["role"] == "mae"]
    ast = [r for r in records if r["role"] == "base" and r["family"] == "ast"]
    if not mae or not ast:
        lack = " and ".join(w for w, rs in (("an MAE encoder", mae), ("an AST-style model", ast)) if not rs)
        raise ConfigError(f"{where}: the release has no {lack}; a study fine-tunes both families from the release "
                          "(restore zoo/ with git checkout, or point TPRUNE_RELEASE at a release)")
    by_set = {}
    for r in ast:
        by_set.setdefault(r["dataset"], []).append(r)
    best = max(by_set.values(), key=lambda rs: (len(rs), sum(r["test_accuracy"] for r in rs) / len(rs)))
    best = sorted(best, key=lambda r: r["seed"])
    starts = {"audiomae": {}, "ast": {}}
    for s in seeds:
        same = [r for r in best if r["seed"] == s]
        starts["ast"][str(s)] = same[0] if same else best[s % len(best)]
        starts["audiomae"][str(s)] = mae[0]
    arch = {k: best[0]["config"][k] for k in ("size", "mel", "qk_norm", "layer_scale")}
    return {"release": release_profile, "dir": str(where), "arch": {"ast": arch},
            "names": {f: {s: release.record_name(r) for s, r in by.items()} for f, by in starts.items()},
            "init": {f: {s: ("mae:" if r["role"] == "mae" else "transfer:") + r["hash"] for s, r in by.items()}
                     for f, by in starts.items()}}


def prune_keep_rate(frames: int, mel: int = 128, size: str = "tiny") -> float:
    """The keep rate (0.30-0.99, both families alike) whose MACs are nearest (1 - MAC_CUT) of the unpruned model's."""
    from ..nn.macs import count_macs
    full = {f: count_macs(f, size, frames, 1.0, mel=mel)["macs"] for f in FAMILIES}

    def miss(k):
        return sum(abs(count_macs(f, size, frames, k, mel=mel)["macs"] / full[f] - (1 - MAC_CUT)) for f in FAMILIES)
    return min((round(0.30 + 0.01 * i, 2) for i in range(70)), key=lambda k: (miss(k), -k))


def recipe(name: str, survey_: dict, starts: dict, on_error: str = "raise") -> dict:
    """The study's zoo profile: ZOO["full"]'s recipe (its regularized common settings, per-family learning rates,
    pruning-aware fine-tunes and controls), one dataset, epochs from the clip count, masks from the clip length."""
    full = zoo.ZOO["full"]
    n_train, frames = survey_["clips"]["train"], survey_["frames"]
    epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, round(CLIP_EPOCHS / n_train)))
    shift = max(2, frames // 12)     # ~8-10% of the clip, as the zoo's 8 of 96 and 40 of 400 frames
    common = dict(full["common"], batch_size=16 if n_train >= 64 else max(2, n_train // 4), on_error=on_error)
    ast = dict(full["family_overrides"]["ast"], **starts["arch"]["ast"])
    return {
        "families": list(full["families"]), "seeds": list(full["seeds"]), "common": common,
        "datasets": {name: {"path": survey_["folder"], "protocol": survey_["protocol"], "frames": frames,
                            "data_frames": None, "epochs": epochs, "time_mask": shift, "time_shift": shift,
                            "prune_keep_rates": [prune_keep_rate(frames, ast["mel"], ast["size"])]}},
        "family_overrides": {"ast": ast, "audiomae": dict(full["family_overrides"]["audiomae"])},
        "pretrained": copy.deepcopy(starts["init"]),
        "prune": copy.deepcopy(full["prune"]),
    }


def _apply_overrides(profile: dict, name: str, overrides: dict | None) -> dict:
    """Recipe changes (tests, experiments): deep-merged into the profile; ``dataset`` goes to the study's dataset
    entry; ``seeds`` alone sets the fine-tunes' seeds too (each fine-tune needs its base model)."""
    if not overrides:
        return profile
    changes = copy.deepcopy(overrides)
    if "dataset" in changes:
        changes.setdefault("datasets", {}).setdefault(name, {}).update(changes.pop("dataset"))
    if "seeds" in changes and "seeds" not in changes.get("prune", {}):
        changes.setdefault("prune", {})["seeds"] = list(changes["seeds"])
    unknown = sorted(set(changes) - set(profile))
    if unknown:
        raise ConfigError(f"--recipe: unknown key(s) {unknown}; expected some of {sorted(profile)} or 'dataset'")
    return zoo._deep_update(profile, changes)


def make_spec(path, name: str | None = None, seconds: float | None = None, on_error: str = "raise",
              overrides: dict | None = None, release_profile: str = "full") -> dict:
    """The spec of a study of ``path`` (nothing written, nothing read but the folder's listing and headers)."""
    if on_error not in ON_ERROR:
        raise ConfigError(f"--on-error {on_error!r}: expected one of {ON_ERROR}")
    s = survey(path, seconds)
    name = study_name(Path(s["folder"]), name)
    starts = release_starts(zoo.ZOO["full"]["seeds"], release_profile)
    profile = _apply_overrides(recipe(name, s, starts, on_error), name, overrides)
    if profile["seeds"] != zoo.ZOO["full"]["seeds"]:   # other seeds: their own starts
        starts = release_starts(profile["seeds"], release_profile)
        profile["pretrained"] = starts["init"]
    return {"format": FORMAT, "name": name, "profile": PREFIX + name, "folder": s["folder"],
            "fingerprint": data_fingerprint(s["folder"], s["protocol"]), "survey": s,
            "options": {"seconds": seconds, "on_error": on_error, "overrides": overrides or {}},
            "release": {k: starts[k] for k in ("release", "dir", "names")},
            "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(), "zoo": profile}


def prepare(spec: dict) -> dict:
    """Write the spec, or keep the one already written for the same folder content and options (a rerun continues
    it). The same name for another folder is refused; a changed folder or option gets a new spec (new runs)."""
    path = zoo.study_path(spec["name"])
    if path.is_file():
        old = json.loads(path.read_text())
        if old["folder"] != spec["folder"]:
            raise ConfigError(f"study {spec['name']!r} is of {old['folder']} ({path}); give this folder another "
                              f"--name, or delete that file")
        same = old.get("format") == FORMAT and old["fingerprint"] == spec["fingerprint"] and old["options"] == \
            spec["options"]
        if same:
            return old
        what = "the folder's content changed" if old["fingerprint"] != spec["fingerprint"] else "other options"
        print(f"tprune study {spec['name']}: {what} since {old['created']}: a new recipe (the runs trained for the "
              f"old one stay in the cache)", file=sys.stderr)
    atomic_write_json(path, spec, indent=1)
    return spec


# ---------------------------------------------------------------------------------------------- the estimate

def clip_epoch_cost(release_profile: str = "full"):
    """(cost, basis): ``cost(tokens)`` = seconds per training clip-epoch (one thread per run, two runs at a time),
    fitted to the release's base runs (training seconds / (epochs x training clips) against patch tokens, a power
    law), else FALLBACK_COST; ``basis`` says which."""
    pts, machines = {}, set()
    for r in release.read_manifest(release_profile)["models"]:
        t, c = r.get("training") or {}, r["config"]
        if r["role"] != "base" or not t.get("train_seconds") or not t.get("n_train"):
            continue
        tokens = (c["frames"] // PATCH) * (c["mel"] // PATCH)
        pts.setdefault(tokens, []).append(t["train_seconds"] / (c["epochs"] * t["n_train"]))
        m = t.get("machine") or {}
        machines.add(f"{m.get('processor', '?')}, {m.get('threads', '?')} thread per run")
    c0, t0, k = FALLBACK_COST
    how = "recorded constants (no release record to fit)"
    if pts:
        xs = sorted(pts)
        ly = {x: math.log(sum(pts[x]) / len(pts[x])) for x in xs}
        if len(xs) > 1:
            mx, my = sum(map(math.log, xs)) / len(xs), sum(ly.values()) / len(xs)
            k = (sum((math.log(x) - mx) * (ly[x] - my) for x in xs) / sum((math.log(x) - mx) ** 2 for x in xs))
        t0, c0 = xs[0], math.exp(ly[xs[0]])
        how = (f"the release's {sum(map(len, pts.values()))} base runs: training seconds / (epochs x training "
               f"clips), on {'; '.join(sorted(machines))}, two runs at a time")
    basis = f"{c0:.4f} s per training clip-epoch at {t0} patch tokens, x (tokens/{t0})^{k:.2f}; from {how}"
    return (lambda tokens: c0 * (tokens / t0) ** k), basis


def _tokens(cfg) -> int:
    return (cfg.frames // PATCH) * (cfg.mel // PATCH)


def mac_fraction(cfg) -> float:
    """A run's MACs per clip over its epochs, as a fraction of the unpruned model's: 1 for base runs and controls;
    for a pruned fine-tune, keep rate 1 while holding, about halfway during the cosine shrink, then the target's.
    (On the digits folder the two pruned fine-tunes timed on a quiet machine took 0.57x and 0.76x the
    unpruned runs' cost per clip-epoch; this counts ~0.75x.)"""
    if not cfg.prune_method or cfg.keep_rate >= 1.0:
        return 1.0
    from ..nn.macs import count_macs
    f = (count_macs(cfg.family, cfg.size, cfg.frames, cfg.keep_rate, cfg.drop_loc, mel=cfg.mel)["macs"]
         / count_macs(cfg.family, cfg.size, cfg.frames, 1.0, cfg.drop_loc, mel=cfg.mel)["macs"])
    hold, shrink = cfg.prune_hold_epochs, cfg.prune_shrink_epochs
    return (hold + shrink * (1 + f) / 2 + (cfg.epochs - hold - shrink) * f) / cfg.epochs


def estimate(spec: dict, todo: list, jobs: int, chapters) -> dict:
    """Seconds the study will take: training (clip-epochs of the runs still to train x the cost per clip-epoch,
    over ``jobs`` runs at a time) and chapters (test-split passes x ``PASS_FRACTION`` of that cost per clip, plus
    a fixed overhead each), with the basis in words."""
    cost, basis = clip_epoch_cost(spec["release"]["release"])
    clips = spec["survey"]["clips"]
    worker = sum(cfg.epochs * clips["train"] * cost(_tokens(cfg)) * mac_fraction(cfg) for _, cfg in todo)
    n_base = len(spec["zoo"]["families"]) * len(spec["zoo"]["seeds"])
    tokens = spec["survey"]["frames"] // PATCH * (spec["zoo"]["family_overrides"]["ast"]["mel"] // PATCH)
    chapter_s = sum(CHAPTER_OVERHEAD + CHAPTER_PASSES.get(c, 10) * n_base * clips["test"] * cost(tokens)
                    * PASS_FRACTION for c in chapters)
    train_s = worker / max(1, min(jobs, len(todo) or 1))
    return {"train": train_s, "worker": worker, "chapters": chapter_s, "total": train_s + chapter_s,
            "basis": basis}


def describe_plan(spec: dict, plan: list, todo: list, est: dict, jobs: int, chapters) -> str:
    """The plan and the estimate, for the console, before anything long starts."""
    s, z = spec["survey"], spec["zoo"]
    ds = z["datasets"][spec["name"]]
    roles = {}
    for role, _ in plan:
        roles[role] = roles.get(role, 0) + 1
    starts = spec["release"]["names"]
    lines = [
        f"tprune study {spec['name']} ({spec['folder']}, {s['layout']} layout): {counted(len(s['classes']), 'class', 'classes')}, "
        f"{s['clips']['train']} train / {s['clips']['val']} val / {s['clips']['test']} test clips ({s['split']})",
        f"  clip length {s['seconds']:g} s ({s['seconds_how']}), read as {s['frames']} frames "
        f"({seconds_of(s['frames']):g} s: {s['frames'] // PATCH * 8} patch tokens); --seconds changes it",
        f"  models (zoo profile {spec['profile']}): " + ", ".join(f"{n} {r}" for r, n in roles.items())
        + f"; {len(plan) - len(todo)} already built, {len(todo)} to train",
        f"  base: {' and '.join(z['families'])} x seeds {z['seeds']}, {ds['epochs']} epochs (from "
        f"{s['clips']['train']} training clips), batch {z['common']['batch_size']}; started from the release "
        f"{spec['release']['dir']}: " + "; ".join(f"{f} from " + ", ".join(f"s{k} <- {v}" for k, v in by.items())
                                                  for f, by in starts.items())
        + " (no MAE is trained)",
        f"  fine-tunes: {', '.join(z['prune']['methods'])} at keep rate {ds['prune_keep_rates'][0]:g} (nearest a "
        f"{100 * MAC_CUT:.0f}% MAC cut) + the keep-rate-1.0 control, {z['prune']['epochs']} epochs each",
        f"  chapters into book/reruns/: {', '.join(chapters) or 'none'}; not run: "
        + "; ".join(f"{c} ({why})" for c, why in LEFT_OUT.items()),
        f"  estimate: training {est['train'] / 60:.0f} min ({est['worker'] / 60:.0f} worker-min over {jobs} "
        f"job(s)), chapters {est['chapters'] / 60:.0f} min, total about {est['total'] / 60:.0f} min on an idle "
        f"machine like the basis' (slower where other work shares the cores)",
        f"  basis: {est['basis']}; pruned fine-tunes at their share of the MACs; chapters: test-split passes at "
        f"1/{round(1 / PASS_FRACTION)} of that per clip + {CHAPTER_OVERHEAD} s each",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- running it

def check_chapters(chapters) -> list:
    """The chapters to run (default: CHAPTERS), refusing those that make no sense on one dataset, with the reason."""
    if chapters is None:
        return list(CHAPTERS)
    out = []
    for c in chapters:
        if c in LEFT_OUT:
            raise ConfigError(f"--chapters {c}: not run on a study: {LEFT_OUT[c]}")
        if c not in CHAPTERS and c not in OPTIONAL:
            raise ConfigError(f"--chapters {c!r}: expected some of {', '.join(list(CHAPTERS) + list(OPTIONAL))} "
                              "(or none)")
        out.append(c)
    return out


def check_files(spec: dict, progress: bool = True) -> list:
    """Read every file of every split (featurized into the cache the runs read) before any training: a bad file
    fails here, naming it; with on_error="skip" it is left out. Returns the skipped files ({file, split, reason})."""
    from ..training.train import featurize_split
    cfg = zoo.base_config(spec["profile"], spec["zoo"]["families"][0], spec["name"], spec["zoo"]["seeds"][0])
    cfg.progress = progress
    skipped = []
    for split in ("train", "val", "test"):
        try:
            fs = featurize_split(cfg, split)
        except AudioError as exc:
            raise AudioError(exc.path, f"{exc.problem} ({split} split, read before training: nothing was trained; "
                                       f"fix or remove the file, or leave unreadable files out with "
                                       f"`tprune study {spec['folder']} --on-error skip`)") from None
        skipped += [{"file": p, "split": split, "reason": why} for _, p, why in getattr(fs, "skipped", [])]
    return skipped


def train(spec: dict, jobs: int = 2, device: str = "auto", progress: bool = True) -> tuple[list, int]:
    """Train what is not built yet (resuming killed runs), one line per finished run above a progress bar.
    Returns the study's entries and how many runs were trained now."""
    from tqdm import tqdm
    starts = {i.split(":", 1)[1] for by in spec["zoo"]["pretrained"].values() for i in by.values()}
    gone = sorted(h for h in starts if h not in release.released(spec["release"]["release"]) and not zoo.finished(h))
    if gone:
        raise ConfigError(f"study {spec['name']}: its start(s) {', '.join(gone)} are no longer in the release "
                          f"{spec['release']['dir']}; delete {zoo.study_path(spec['name'])} to plan it anew")
    release.materialize(spec["release"]["release"], starts)   # the released starts, into the zoo cache
    todo = [rc for rc in zoo.zoo_plan(spec["profile"]) if not zoo.built(*rc)]
    bar = {}

    def started(role, cfg):
        if "bar" not in bar:   # drawn once the zoo's own header line is out
            bar["bar"] = tqdm(total=len(todo), unit="run", desc=f"study {spec['name']}", file=sys.stderr,
                              disable=not progress)
        bar["bar"].set_postfix_str(f"{role} {cfg.family} s{cfg.seed}", refresh=True)

    def finished(i, n, role, cfg, seconds):
        started(role, cfg)
        e = zoo.entry(role, cfg, spec["name"])
        acc = f", test {100 * e['test_accuracy']:.1f}%" if "test_accuracy" in e else ""
        bar["bar"].write(f"[{i}/{n}] {e['name']}: {seconds:.0f} s{acc}", file=sys.stderr)
        bar["bar"].update(1)

    # one thread per run, also alone: two threads of one run wait on each other (zoo.py, "Cost of full")
    entries = build.build_zoo(spec["profile"], threads=1, progress=False, device=device, report=False, jobs=jobs,
                            on_start=started, on_done=finished)
    if "bar" in bar:
        bar["bar"].close()
    return entries, len(todo)


def accuracy_report(spec: dict, entries: list) -> str:
    """Unpruned test accuracy per family (mean ± std over seeds) against chance."""
    chance = 1 / len(spec["survey"]["classes"])
    lines = []
    for fam in spec["zoo"]["families"]:
        acc = [e["test_accuracy"] for e in entries if e["role"] == "base" and e["family"] == fam]
        mean = sum(acc) / len(acc)
        sd = math.sqrt(sum((a - mean) ** 2 for a in acc) / (len(acc) - 1)) if len(acc) > 1 else 0.0
        lines.append(f"  {fam}: {100 * mean:.1f} ± {100 * sd:.1f}% test ({counted(len(acc), 'seed')}: "
                     f"{', '.join(f'{100 * a:.1f}' for a in acc)})")
    return (f"tprune study {spec['name']}: unpruned models on {spec['survey']['clips']['test']} test clips, chance "
            f"{100 * chance:.1f}% ({counted(len(spec['survey']['classes']), 'class', 'classes')}):\n" + "\n".join(lines))


def _current(target: Path, params: dict, book_profile: str | None) -> bool:
    """The chapter was executed into ``target`` with these parameters, this profile and this code."""
    from ..analyses import results
    if not target.is_file():
        return False
    meta = json.loads(target.read_text()).get("metadata", {}).get("tprune_rerun", {})
    return (meta.get("params") == results.canonical_params(params) and meta.get("code_version") == results.code_version()
            and meta.get("profile") == (book_profile or results.current_profile()))


def run_chapters(spec: dict, chapters, root=None, book_profile: str | None = None, fresh: bool = False,
                 progress: bool = True) -> dict:
    """Execute each chapter on the study's models into book/reruns/<chapter>-study-<name>.ipynb (one whose copy is
    current is kept unless ``fresh``). Returns chapter -> path, or the error (a failed chapter does not stop the
    others)."""
    from . import RERUNS_DIR, run_chapter
    from ._shared import book_root
    from ..errors import TpruneError
    params, tag = {"zoo_profile": spec["profile"], "datasets": [spec["name"]]}, PREFIX + spec["name"]
    out = {}
    for chapter in chapters:
        target = book_root(root) / RERUNS_DIR / f"{chapter}-{tag}.ipynb"
        if not fresh and _current(target, params, book_profile):
            print(f"tprune study: {chapter}: {target} is current (same models, parameters and code)", file=sys.stderr)
            out[chapter] = target
            continue
        t = time.perf_counter()
        print(f"tprune study: executing {chapter} ({(CHAPTERS | OPTIONAL)[chapter]})", file=sys.stderr)
        try:
            out[chapter] = run_chapter(chapter, params, root=root, tag=tag, profile_name=book_profile,
                                       progress=progress)
            print(f"tprune study: {chapter}: {out[chapter]} ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
        except TpruneError as exc:
            out[chapter] = exc
            print(f"tprune study: {chapter} failed: {exc}", file=sys.stderr)
    return out


def run_study(path, name: str | None = None, jobs: int = 2, on_error: str = "raise", chapters=None,
              dry_run: bool = False, seconds: float | None = None, overrides: dict | None = None,
              book_profile: str | None = None, root=None, device: str = "auto", progress: bool = True) -> dict:
    """`tprune study PATH`: survey the folder, print the plan and the estimate, read every file, train (resuming),
    report the unpruned accuracy, execute the chapters. Returns {spec, skipped, entries, trained, chapters,
    seconds}; with ``dry_run`` stops after reading the files."""
    t0 = time.perf_counter()
    chapters = check_chapters(chapters)
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: expected at least 1")
    spec = prepare(make_spec(path, name, seconds, on_error, overrides))
    plan = zoo.zoo_plan(spec["profile"])
    todo = [rc for rc in plan if not zoo.built(*rc)]
    print(describe_plan(spec, plan, todo, estimate(spec, todo, jobs, chapters), jobs, chapters), file=sys.stderr)
    skipped = check_files(spec, progress)
    if skipped != spec.get("skipped", []):
        spec["skipped"] = skipped
        atomic_write_json(zoo.study_path(spec["name"]), spec, indent=1)
    if skipped:
        print(f"tprune study {spec['name']}: {counted(len(skipped), 'unreadable file')} left out (listed in "
              f"{zoo.study_path(spec['name'])} and in each run's train.json):\n"
              + "\n".join(f"  {s['file']} ({s['split']}): {s['reason']}" for s in skipped), file=sys.stderr)
    out = {"spec": spec, "skipped": skipped, "entries": [], "trained": 0, "chapters": {}}
    if dry_run:
        print(f"tprune study {spec['name']}: every file read; --dry-run: nothing trained", file=sys.stderr)
        return dict(out, seconds=time.perf_counter() - t0)
    out["entries"], out["trained"] = train(spec, jobs, device, progress)
    t_train = time.perf_counter() - t0
    print(accuracy_report(spec, out["entries"]), file=sys.stderr)
    out["chapters"] = run_chapters(spec, chapters, root, book_profile, fresh=out["trained"] > 0, progress=progress)
    total = time.perf_counter() - t0
    print(f"tprune study {spec['name']}: {total / 60:.1f} min in all ({t_train / 60:.1f} min to the trained models, "
          f"{out['trained']} trained now; {(total - t_train) / 60:.1f} min of chapters)", file=sys.stderr)
    return dict(out, seconds=total)
