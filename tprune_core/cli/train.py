"""`tprune train | eval | zoo`: train a model (cached by config hash), evaluate a checkpoint, build the model zoo.
Results go to stdout (JSON with --json), progress to stderr."""
import json
import sys

from ..rules import DEFAULT_DROP_LOC, ON_ERROR, SPLITS, ZOO_PROFILES, method_names
from ..training.config import TrainConfig
from . import add_field_flags, drop_loc_arg, flag_values


def _value(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pairs(items, what):
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"tprune: error: {what} {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.replace("-", "_")] = _value(v)
    return out


def _map(result: dict, key: str = "mAP") -> str:
    """ ", mAP 0.8123" for a multi-label result (its accuracy is the top-1 hit rate), else nothing."""
    return f", mAP {result[key]:.4f}" if key in result else ""


def add_parser(subparsers):
    p = subparsers.add_parser("train", help="train a model (or find it in the cache); selection on val, then test once")
    p.add_argument("--dataset", default="speechcommands", metavar="NAME|PATH",
                   help="a built-in dataset (speechcommands, urbansound8k, esc50, voxceleb1, synthetic, "
                        "default[:speech|:ambient]) or a path to a folder of your own audio: class folders "
                        "<label>/*.wav|flac|..., {train,val,test}/<label>/... or a metadata.csv (file,label[,split]"
                        "[,group]); `tprune data check PATH` says what it finds (default: speechcommands)")
    p.add_argument("--seconds", type=float, default=None, metavar="S",
                   help="clip length: every clip is read as its first S seconds (shorter ones padded), and the "
                        "model's input is as long unless --frames is given (training then draws random --frames "
                        "crops inside). Default: for a folder, its median clip length; for a built-in dataset, "
                        "--frames (96 frames, 0.975 s). The length and how many clips it crops are printed when "
                        "training starts")
    p.add_argument("--on-error", default=None, choices=ON_ERROR,
                   help="what an unreadable audio file does; every split (train, val and test) is read before the "
                        "first training step. raise (default): stop before training, naming the file; skip: leave "
                        "such files out, print them with their reasons and list them in the run's train.json "
                        "(`skipped`)")
    p.add_argument("--protocol", nargs="*", metavar="KEY=VALUE", help="dataset protocol, e.g. test_fold=10")
    p.add_argument("--profile", default=None, choices=ZOO_PROFILES,
                   help="start from the zoo profile's settings for this family/dataset (then apply the flags)")
    p.add_argument("--pretrained", default=None,
                   metavar="release:NAME|mae|mae:HASH|run:HASH|transfer:HASH|official:PATH",
                   help="release:NAME: a model of the repository's release (zoo/full/manifest.json): release:mae "
                        "(the MAE encoder, --family audiomae) or release:FAMILY/DATASET/sSEED (a released classifier "
                        "of your --family, e.g. release:ast/speechcommands/s0: all but its head); mae: the zoo's "
                        "MAE encoder (pretrained first if missing); run:HASH: another run's weights; "
                        "transfer:HASH: a run of another dataset, all but its head (position embeddings resized); "
                        "official:PATH: an official AST (16x16 patches, e.g. audioset_16_16_0.4422.pth) or AudioMAE "
                        "checkpoint of your --family, all but its head (the run is named by the file's sha256)")
    # every other TrainConfig field is a flag of its own, typed and explained by the field (training/config.py)
    fields = add_field_flags(p, TrainConfig, skip={"dataset", "on_error", "init"})
    p.epilog = ("Unset flags take the TrainConfig defaults (tprune_core/training/config.py), or the zoo profile's "
                "with --profile.")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="any other TrainConfig field")
    p.add_argument("--no-test", action="store_true", help="stop after training and selection")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.set_defaults(func=cmd_train, field_flags=fields)

    q = subparsers.add_parser("eval", help="evaluate a checkpoint, optionally with token pruning")
    q.add_argument("--checkpoint", required=True, help="run folder, best.pt, or a run hash under the zoo")
    q.add_argument("--method", default=None, choices=(*method_names(), "none"),
                   help="pruning method (default: as the run was fine-tuned; 'none' for the unpruned model)")
    q.add_argument("--keep-rate", type=float, default=None,
                   help="keep rate (default 0.5 with --method; without --method: the run's own method, topk for unpruned runs)")
    q.add_argument("--drop-loc", type=drop_loc_arg, default=DEFAULT_DROP_LOC, help="drop blocks, e.g. 3,6,9")
    q.add_argument("--option", nargs="*", metavar="KEY=VALUE", help="method options, e.g. mass=0.9")
    q.add_argument("--split", default="test", choices=SPLITS)
    q.add_argument("--batch-size", type=int, default=128)
    q.add_argument("--device", default="cpu")
    q.add_argument("--on-error", default=None, choices=ON_ERROR,
                   help="an unreadable audio file: raise or skip (default: as the run was trained)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_eval)

    z = subparsers.add_parser("zoo", help="train (or find) the model zoo the book uses; pack / verify its release")
    z.add_argument("action", nargs="?", default="build", choices=["build", "pack", "verify"],
                   help="build (default): train what is neither built nor released, print the total time; "
                        "pack: add the built base models to the release in zoo/<profile>/ (fp16 safetensors + "
                        "manifest.json); verify: check every released file's sha256 and load every model")
    z.add_argument("--profile", default="full", choices=ZOO_PROFILES)
    z.add_argument("--roles", default=None,
                   help="build only these roles, comma-separated (mae, base, prune, control, reverse); pack: "
                        "default mae,base (the released ones)")
    z.add_argument("--code-commit", default=None,
                   help="pack: the commit that trained runs whose summary does not record it")
    z.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    z.add_argument("--device", default="auto")
    z.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once, each in its own one-thread process (2 on a 2-core CPU: faster)")
    z.add_argument("--list", action="store_true", help="only list the runs and which are built")
    z.add_argument("--json", action="store_true", help="print the entries as JSON")
    z.set_defaults(func=cmd_zoo)


def cmd_train(args):
    from ..errors import ConfigError
    from ..training.runtime import read_json
    from ..training.train import run, train_run
    from ..training import zoo as zoo_mod

    kw = {}
    if args.profile:
        kw = zoo_mod.base_config(args.profile, args.family or "ast", args.dataset, args.seed or 0).to_dict()
    kw["dataset"] = args.dataset
    if args.protocol is not None:
        kw["protocol"] = _pairs(args.protocol, "--protocol")
    kw.update(flag_values(args, args.field_flags))
    kw.update(_pairs(args.set, "--set"))
    if args.on_error is not None:
        kw["on_error"] = args.on_error
    print(_choose_clip_length(args, kw), file=sys.stderr)
    if args.pretrained is not None:
        if args.pretrained == "mae":
            if kw.get("family", TrainConfig.family) != "audiomae":
                raise ConfigError("--pretrained mae: MAE weights are for --family audiomae")
            kw["init"] = "mae:" + _ensure_mae(args, kw).hash()
        elif args.pretrained.startswith("release:"):
            from ..training.release import init_from_release
            kw["init"] = init_from_release(args.pretrained.split(":", 1)[1], kw.get("family", TrainConfig.family))
        else:
            kw["init"] = args.pretrained
    cfg = TrainConfig.from_dict(kw)
    if args.no_test:
        summary = read_json(train_run(cfg) / "train.json")
    else:
        summary = run(cfg)
    from ..training.distributed import is_main
    if not is_main():   # under torchrun rank 0 alone reports
        return 0
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
    else:
        test = summary.get("test", {})
        print(f"run {summary['hash']}: val acc {summary['val_accuracy']:.4f}{_map(summary, 'val_mAP')} "
              f"(epoch {summary['best_epoch']})"
              + (f", test acc {test['accuracy']:.4f}{_map(test)} on {test['n_clips']} clips" if test else "")
              + f", {summary['train_seconds']:.0f} s training")
    return 0


def _choose_clip_length(args, kw) -> str:
    """Set the frames read per clip in ``kw``: from --seconds (also the dataset's `seconds` protocol parameter where
    it has one), else from a folder's own clip length (its median) when no flag or profile sets them. Returns the
    line that says what was chosen and why."""
    from ..data.datasets import frames_for, is_builtin, load_dataset, seconds_of, takes_seconds
    from ..errors import ConfigError
    from ..data.folders import LAYOUTS as FOLDER_LAYOUTS
    if args.seconds is not None:
        if args.data_frames is not None:
            raise ConfigError("--seconds and --data-frames both set the frames read per clip; give one of them")
        frames = frames_for(args.seconds)
        if args.frames is not None and frames < args.frames:
            raise ConfigError(f"--seconds {args.seconds:g} reads {frames} frames, fewer than --frames "
                              f"{args.frames}; expected --seconds of at least {seconds_of(args.frames):g}")
        if takes_seconds(kw["dataset"]):
            kw["protocol"] = dict(kw.get("protocol") or {}, seconds=args.seconds)
        if args.frames is None:
            kw.update(frames=frames, data_frames=None)
        else:
            kw["data_frames"] = frames if frames > args.frames else None
        return (f"tprune train: clip length {args.seconds:g} s (--seconds), read as {frames} frames "
                f"({seconds_of(frames):g} s: whole 16-frame patches)")
    if "frames" not in kw and "data_frames" not in kw and not is_builtin(kw["dataset"]):
        clips = load_dataset(kw["dataset"], split="train", **(kw.get("protocol") or {}))
        # a folder of your own is read at its clips' length; a path to a built-in layout keeps the default
        if clips.layout in FOLDER_LAYOUTS:
            kw["frames"] = frames = clips.default_frames()
            how = str(clips.protocol.get("length", "")).split(";")[0] or "the folder's clip length"
            return (f"tprune train: clip length {clips.seconds:g} s ({how}), read as {frames} frames "
                    f"({seconds_of(frames):g} s: whole 16-frame patches); --seconds S changes it")
    grid = kw.get("data_frames") or kw.get("frames") or TrainConfig.frames
    why = ("--data-frames" if args.data_frames is not None else "--frames" if args.frames is not None
           else "--set" if {"frames", "data_frames"} & set(_pairs(args.set, "--set"))
           else f"zoo profile {args.profile}" if args.profile else "the default --frames")
    return (f"tprune train: clip length {seconds_of(grid):g} s, read as {grid} frames ({why}); --seconds S "
            f"changes it")


def _ensure_mae(args, kw):
    """The zoo's MAE when this dataset/protocol is one of its sources, else an MAE on this dataset's train split."""
    from ..training import zoo as zoo_mod
    from ..training.mae import MAEConfig, pretrain
    profile = args.profile or "full"
    cfg = zoo_mod.mae_config(profile)
    wanted = {"dataset": kw["dataset"], "protocol": kw.get("protocol", {})}
    if not any(s["dataset"] == wanted["dataset"] and s["protocol"] == wanted["protocol"] for s in cfg.sources):
        frames = kw.get("data_frames") or kw.get("frames") or 96
        cfg = MAEConfig(**dict(cfg.to_dict(), sources=[dict(wanted, frames=frames)],
                               crop_frames=min(cfg.crop_frames, kw.get("frames") or 96)))
    if kw.get("threads"):
        cfg.threads = kw["threads"]
    pretrain(cfg)
    return cfg


def cmd_eval(args):
    import dataclasses
    from ..training.evaluation import evaluate
    from ..training.train import apply_run_pruning, load_checkpoint, load_split

    model, meta = load_checkpoint(args.checkpoint, args.device)
    cfg = TrainConfig.from_dict(meta["config"])
    method = args.method
    if method is None:
        apply_run_pruning(model, meta)     # as fine-tuned (nothing for unpruned runs)
        if args.keep_rate is not None:
            from ..nn.pruning import apply_pruning, is_pruned, set_keep_rate
            if is_pruned(model):
                set_keep_rate(model, args.keep_rate)
            else:
                apply_pruning(model, "topk", args.keep_rate, args.drop_loc)
        method_arg, keep = None, 1.0
    elif method == "none":
        method_arg, keep = None, 1.0
    else:
        method_arg, keep = method, (0.5 if args.keep_rate is None else args.keep_rate)
    if args.on_error is not None:
        cfg = dataclasses.replace(cfg, on_error=args.on_error)
    fs = load_split(cfg, args.split, progress=not args.json)   # as the run read it (its norm, stream, protocol)
    result = evaluate(model, fs, method=method_arg, keep_rate=keep, drop_loc=args.drop_loc,
                      batch_size=args.batch_size, options=_pairs(args.option, "--option"), split=args.split)
    result.update(checkpoint=meta["path"], family=cfg.family, dataset=cfg.dataset, run=meta["hash"],
                  source=getattr(fs, "source", None))
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{cfg.family}/{cfg.dataset} {args.split}: accuracy {result['accuracy']:.4f}{_map(result)} on "
              f"{result['n_clips']} "
              f"clips, {result['gmacs_per_clip']:.4f} GMACs/clip (method {result['method']}, keep {result['keep_rate']})")
    return 0


def cmd_zoo(args):
    from ..errors import ConfigError
    from ..training import build, release
    from ..training import zoo as zoo_mod
    roles = tuple(r.strip() for r in args.roles.split(",")) if args.roles else None
    known = {"mae", "base", "prune", "control", "reverse"}
    if roles and not set(roles) <= known:
        raise ConfigError(f"--roles: {', '.join(sorted(set(roles) - known))} not among {', '.join(sorted(known))}")
    from ..training.distributed import environment
    if args.jobs > 1 and environment().active:   # worker processes would join torchrun's group a second time
        raise ConfigError(f"--jobs {args.jobs}: under torchrun the {environment().size} processes train each run "
                          "together; leave --jobs at 1")
    if args.action == "pack":
        added = build.pack_release(args.profile, roles or release.RELEASED_ROLES, code_commit=args.code_commit)
        print(f"tprune zoo pack: {len(added)} model(s) added to {release.release_dir(args.profile)}")
        return 0
    if args.action == "verify":
        records = release.verify(args.profile)
        size = sum(r["bytes"] for r in records)
        print(f"tprune zoo verify: {len(records)} released model(s), {size / 1e6:.1f} MB, every sha256 matches "
              f"{release.release_dir(args.profile) / 'manifest.json'} and every model loads")
        return 0
    if args.list:
        entries = zoo_mod.zoo_entries(args.profile, require=False)
        if args.json:
            print(json.dumps(entries, indent=1, default=str))
        else:
            shipped = release.released(args.profile)
            for e in entries:
                acc = f"test {100 * e['test_accuracy']:.1f}%" if "test_accuracy" in e else ""
                state = "released" if e["hash"] in shipped else ("built" if e["trained"] else "missing")
                print(f"{e['hash']}  {e['role']:7s} {e['family']:8s} {e['dataset']:28s} seed {e['seed']} "
                      f"keep {e.get('keep_rate', '-')!s:4s} {state:8s} {acc}")
        return 0
    entries = build.build_zoo(args.profile, threads=args.threads, progress=not args.json, device=args.device,
                                report=not args.json, jobs=args.jobs, roles=roles)
    if args.json:
        print(json.dumps({"entries": entries, "summary": zoo_mod.summarize(entries)}, indent=1, default=str))
    return 0
