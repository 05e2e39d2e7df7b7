"""The model release: the zoo's long-trained weights published inside the repository, so a reader loads them
instead of training for hours (nothing can be downloaded at run time).

    pack("full")          # `tprune zoo pack`: add the profile's built base runs (fp16 safetensors + manifest)
    verify("full")        # `tprune zoo verify`: every file's sha256, every model built and loaded
    materialize("full")   # write the released runs into $TPRUNE_CACHE/zoo, where the zoo finds them built

On disk, ``zoo/<profile>/`` beside pyproject.toml (or ``$TPRUNE_RELEASE/<profile>/``): one ``.safetensors`` file
per model (weights only, float16; never a pickle) and ``manifest.json`` (FORMAT) with one record per model: role,
family, dataset, seed, run hash, full config, parents, sha256 and size of the file, parameter count, classes and
input normalization, validation and test accuracy measured on the released float16 weights (and, for the record,
on the float32 checkpoint they were cast from), training seconds, machine and code version of the training.

A released run wins over a local one with the same hash: ``materialize`` rewrites a run folder whose ``release.json``
does not name the released file's digest, so every reader computes on the same weights. A file whose digest does
not match its manifest is an error naming the file, never a silent retrain.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..fsio import atomic_write_json, sha256_file  # noqa: F401 (release.sha256_file)
from ..paths import release_dir
from ..source import code_version
from .runtime import TRAIN_VERSION, read_json, save_atomic, zoo_root

FORMAT = "tprune-release/1"
RELEASED_ROLES = ("mae", "base")     # what only a long from-scratch run produces; derived models are trained
MARKER = "release.json"              # in a run folder materialized from the release: which file, which digest


class ReleaseError(CheckpointError):
    """The release on disk does not match its manifest (missing file, other digest, weights that do not load)."""


# ---------------------------------------------------------------------------------------------- where, what

def read_manifest(profile: str) -> dict:
    """The manifest of a profile's release; an empty one when nothing is released."""
    path = release_dir(profile) / "manifest.json"
    if not path.is_file():
        return {"format": FORMAT, "profile": profile, "models": []}
    m = read_json(path)
    if m.get("format") != FORMAT:
        raise ReleaseError(f"{path}: format {m.get('format')!r}, this code reads {FORMAT!r}")
    return m


def released(profile: str) -> dict:
    """Run hash -> manifest record of every released model of a profile."""
    return {r["hash"]: r for r in read_manifest(profile)["models"]}


def file_name(role: str, cfg) -> str:
    if role == "mae":
        return f"mae-encoder-{cfg.hash()}.safetensors"
    return f"{cfg.family}-{cfg.dataset}-s{cfg.seed}-{cfg.hash()}.safetensors"


def record_name(record: dict) -> str:
    """A released model's short name: ``mae``, or ``family/dataset/s<seed>`` (e.g. ``ast/speechcommands/s0``)."""
    return "mae" if record["role"] == "mae" else f"{record['family']}/{record['dataset']}/s{record['seed']}"


def resolve(name: str, profile: str = "full") -> dict:
    """The manifest record of a released model named ``mae``, ``family/dataset/s<seed>`` or by its run hash."""
    records = read_manifest(profile)["models"]
    found = [r for r in records if name in (record_name(r), r["hash"])]
    if not found:
        known = ", ".join(record_name(r) for r in records) or "none"
        raise ReleaseError(f"release:{name}: no such released model in {release_dir(profile)} (released: {known})")
    return found[0]


def init_from_release(name: str, family: str, profile: str = "full") -> str:
    """The TrainConfig ``init`` that starts a model of ``family`` from a released model: ``mae:HASH`` for the MAE
    encoder (AudioMAE-style), ``transfer:HASH`` for a released classifier of the same family (all but its head,
    position embeddings stretched to the new length). The released run is written into the zoo cache first."""
    record = resolve(name, profile)
    if record["family"] != family:
        raise ReleaseError(f"--pretrained release:{name}: a {record['family']} model; --family {family} needs "
                           + ("release:mae" if family == "audiomae" else f"a released {family} model"))
    materialize(profile, {record["hash"]})
    return ("mae:" if record["role"] == "mae" else "transfer:") + record["hash"]


# ---------------------------------------------------------------------------------------------- weights

def _to_fp16(state: dict) -> dict:
    return {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous().cpu()
            for k, v in state.items()}


def _to_fp32(state: dict) -> dict:
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def read_weights(record: dict, profile: str, check: bool = True) -> dict:
    """A released model's state dict (float32, cast from the released float16), after checking the file's digest."""
    from safetensors.torch import load_file
    path = release_dir(profile) / record["file"]
    if not path.is_file():
        raise ReleaseError(f"{path}: released file is missing (manifest {release_dir(profile) / 'manifest.json'})")
    if check and sha256_file(path) != record["sha256"]:
        raise ReleaseError(f"{path}: sha256 differs from the manifest's {record['sha256'][:12]}...: the file was "
                           "changed or damaged; restore it (git checkout -- zoo/) or re-pack it")
    return _to_fp32(load_file(str(path)))


def build_released(record: dict, profile: str, check: bool = True):
    """The released model itself (eval mode, CPU): a classifier, or for the MAE an AudioMAE-style encoder with its
    weights loaded (a 1-class head, as a shape check)."""
    from ..nn.models import create_model
    from .train import TrainConfig, architecture
    state = read_weights(record, profile, check)
    if record["role"] == "mae":
        c = record["config"]
        model = create_model("audiomae", c["size"], c["crop_frames"], 1)
        own = model.state_dict()
        bad = sorted(set(state) - set(own)) + [k for k in state if k in own and own[k].shape != state[k].shape]
        if bad:
            raise ReleaseError(f"{release_dir(profile) / record['file']}: does not fit an MAE encoder: {bad[:5]}")
        model.load_state_dict(state, strict=False)
        return model.eval()
    cfg = TrainConfig.from_dict(record["config"])
    model = create_model(cfg.family, cfg.size, cfg.frames, len(record["classes"]), mel=cfg.mel, **architecture(cfg))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ReleaseError(f"{release_dir(profile) / record['file']}: does not load into its config's model "
                           f"({str(exc).splitlines()[0]})") from None
    return model.eval()


# ---------------------------------------------------------------------------------------------- materialize

def materialize(profile: str, hashes=None) -> list:
    """Write every released run (or those in ``hashes``) into the zoo cache as a finished run, unless the folder
    already holds exactly that release file (its MARKER). Checks each file's digest first. Returns the hashes
    written."""
    written = []
    for h, record in released(profile).items():
        if hashes is not None and h not in hashes:
            continue
        run_dir = zoo_root() / h
        marker = run_dir / MARKER
        weights = run_dir / ("encoder.pt" if record["role"] == "mae" else "best.pt")
        if marker.is_file() and weights.is_file() and read_json(marker).get("sha256") == record["sha256"]:
            continue   # already written from this very file
        state = read_weights(record, profile)
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("state.pt", "test.json", "train.json", "mae.json"):
            (run_dir / stale).unlink(missing_ok=True)
        if record["role"] == "mae":
            save_atomic({"encoder": state, "config": record["config"], "hash": h, "train_version": TRAIN_VERSION},
                        run_dir / "encoder.pt")
            save_atomic(dict(record["training"], hash=h, config=record["config"], released=record["file"]),
                        run_dir / "mae.json")
        else:
            save_atomic({"model": state, "config": record["config"], "hash": h, "classes": record["classes"],
                         "norm": record["norm"], "epoch": record["best_epoch"], "val": record["val"],
                         "train_version": TRAIN_VERSION}, run_dir / "best.pt")
            save_atomic(dict(record["training"], hash=h, config=record["config"], classes=record["classes"],
                             best_epoch=record["best_epoch"], val_accuracy=record["val_accuracy"],
                             val=record["val"], released=record["file"]), run_dir / "train.json")
            save_atomic(dict(record["test"], hash=h, released=record["file"]), run_dir / "test.json")
        atomic_write_json(marker, {"file": record["file"], "sha256": record["sha256"], "profile": profile}, indent=1)
        written.append(h)
    return written


def released_digest(run_dir) -> str | None:
    """The release file's sha256 when this run folder was materialized from the release, else None."""
    marker = Path(run_dir) / MARKER
    return read_json(marker)["sha256"] if marker.is_file() else None


# ---------------------------------------------------------------------------------------------- pack

def _parents(cfg) -> list:
    init = getattr(cfg, "init", None)
    return [init] if init else []


def _evaluate_fp16(cfg, state, progress: bool) -> dict:
    """Validation and test metrics of the float16 weights (cast back to float32, as every reader loads them)."""
    from .evaluation import evaluate
    from ..nn.models import create_model
    from .train import architecture, load_split
    from .runtime import cpu_threads
    model = create_model(cfg.family, cfg.size, cfg.frames, state["head.weight"].shape[0], mel=cfg.mel,
                         **architecture(cfg))
    model.load_state_dict(state)
    out = {}
    for split in ("val", "test"):
        data = load_split(cfg, split, progress)
        with cpu_threads(cfg.threads):
            out[split] = evaluate(model.eval(), data, batch_size=cfg.eval_batch_size, split=split,
                                  precision=cfg.precision)
    return out


def _record_for(role: str, cfg, profile: str, path: Path, progress: bool) -> dict:
    from safetensors.torch import save_file
    run_dir = zoo_root() / cfg.hash()
    if (run_dir / MARKER).is_file():
        raise ReleaseError(f"{run_dir}: written from a release file, its float32 checkpoint is gone; pack the run "
                           "where it was trained")
    common = {"role": role, "hash": cfg.hash(), "seed": cfg.seed, "config": cfg.to_dict(), "parents": _parents(cfg)}
    if role == "mae":
        ck = torch.load(run_dir / "encoder.pt", map_location="cpu", weights_only=True)
        state = _to_fp16(ck["encoder"])
        save_file(state, str(path), metadata={"format": FORMAT, "role": role, "hash": cfg.hash()})
        s = read_json(run_dir / "mae.json")
        rec = dict(common, family="audiomae", dataset="+".join(x["dataset"] for x in cfg.sources),
                   training={k: s.get(k) for k in ("final_loss", "train_seconds", "steps", "n_clips", "sources",
                                                   "machine", "code_version", "history")})
    else:
        ck = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=False)
        state = _to_fp16(ck["model"])
        save_file(state, str(path), metadata={"format": FORMAT, "role": role, "hash": cfg.hash()})
        s, t = read_json(run_dir / "train.json"), read_json(run_dir / "test.json")
        m = _evaluate_fp16(cfg, _to_fp32(state), progress)
        norm = ck.get("norm")
        rec = dict(common, family=cfg.family, dataset=cfg.dataset, classes=list(ck["classes"]),
                   norm=[float(v) for v in norm] if norm is not None else None, best_epoch=ck["epoch"],
                   val_accuracy=m["val"]["accuracy"], test_accuracy=m["test"]["accuracy"],
                   val_accuracy_fp32=s["val_accuracy"], test_accuracy_fp32=t["accuracy"],
                   val={k: v for k, v in m["val"].items()
                        if isinstance(v, (int, float, str)) and k != "correct_per_clip"},
                   test={k: v for k, v in dict(t, **m["test"]).items() if k not in ("hash", "correct_per_clip")},
                   training={k: s.get(k) for k in ("train_seconds", "steps", "n_train", "n_val", "train_source",
                                                   "machine", "torch", "threads", "device", "final_sha256",
                                                   "code_version", "history")})
    path.chmod(0o644)
    rec.update(file=path.name, sha256=sha256_file(path), bytes=path.stat().st_size,
               params=int(sum(v.numel() for v in state.values())), torch=torch.__version__)
    return rec


def _is_built(role: str, cfg) -> bool:
    run_dir = zoo_root() / cfg.hash()
    if role == "mae":
        return (run_dir / "mae.json").is_file()
    return (run_dir / "train.json").is_file() and (run_dir / "test.json").is_file()


def pack(profile: str, plan: list, code_commit: str | None = None, progress: bool = True) -> list:
    """Add every built run of ``plan`` ((role, config) pairs: the profile's released roles, see
    ``build.pack_release``) to the release, skipping those already in it; runs not built yet are left for a later
    pack. Records no longer in the plan (an older recipe) are removed with their files: one release in the tree at
    a time. Returns the records added. ``code_commit``: the commit that trained runs whose summary predates the
    ``code_version`` field."""
    folder = release_dir(profile)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(profile)
    wanted = {cfg.hash() for _, cfg in plan}
    keep = [r for r in manifest["models"] if r["hash"] in wanted]
    have = {r["hash"] for r in keep}
    added = []
    for role, cfg in plan:
        if cfg.hash() in have or not _is_built(role, cfg):
            continue
        path = folder / file_name(role, cfg)
        rec = _record_for(role, cfg, profile, path, progress)
        if code_commit and not rec["training"].get("code_version"):
            rec["training"]["code_version"] = code_commit
        keep.append(rec)
        added.append(rec)
        _write_manifest(profile, keep)   # after each model: a killed pack keeps what it finished
        print(f"tprune zoo pack: {rec['file']} ({rec['bytes'] / 1e6:.1f} MB)"
              + (f", test {100 * rec['test_accuracy']:.2f}% fp16 / {100 * rec['test_accuracy_fp32']:.2f}% fp32"
                 if role != "mae" else ""), flush=True)
    _write_manifest(profile, keep)
    listed = {r["file"] for r in keep} | {"manifest.json"}
    for stray in folder.iterdir():
        if stray.name not in listed:
            stray.unlink() if stray.is_file() else shutil.rmtree(stray)
            print(f"tprune zoo pack: removed {stray.name} (not in this release)", flush=True)
    materialize(profile, {r["hash"] for r in added})   # the local runs now hold the released weights too
    return added


def _write_manifest(profile: str, records: list):
    order = {"mae": 0, "base": 1}
    records = sorted(records, key=lambda r: (order.get(r["role"], 9), r.get("dataset", ""), r["family"], r["seed"]))
    atomic_write_json(release_dir(profile) / "manifest.json",
                      {"format": FORMAT, "profile": profile, "models": records}, indent=1)


# ---------------------------------------------------------------------------------------------- verify

def verify(profile: str = "full", load: bool = True) -> list:
    """Check every released file against the manifest (present, same sha256) and, with ``load``, build each model
    from it. Raises ReleaseError naming the first bad file; returns the records checked."""
    folder = release_dir(profile)
    records = read_manifest(profile)["models"]
    if not records:
        raise ReleaseError(f"{folder}: no released models (no manifest.json, or an empty one)")
    for r in records:
        if load:
            build_released(r, profile)
        else:
            read_weights(r, profile)
    listed = {r["file"] for r in records} | {"manifest.json"}
    extra = sorted(p.name for p in folder.iterdir() if p.name not in listed)
    if extra:
        raise ReleaseError(f"{folder}: files not in the manifest: {', '.join(extra)}")
    return records
