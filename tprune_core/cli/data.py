"""`tprune data list|check|fetch|featurize`: find, verify, download and featurize datasets.
Results go to stdout, progress and problems to stderr."""
import json
import sys

from ..rules import DATA_SPLITS, ON_ERROR


def add_parser(subparsers):
    p = subparsers.add_parser("data", help="find, check, download and featurize datasets")
    sub = p.add_subparsers(dest="data_command", required=True)

    q = sub.add_parser("list", help="known datasets, where they were found, clips and classes")
    q.add_argument("--root", help="folder holding the datasets (default: $TPRUNE_DATA)")
    q.add_argument("--json", action="store_true", help="print a JSON list of {name, path, clips, classes, ...}")
    q.set_defaults(func=cmd_list)

    q = sub.add_parser("check", help="read and featurize every file of a dataset, list every problem (exit 1 if any)")
    q.add_argument("name", help="urbansound8k | speechcommands | esc50 | voxceleb1 | synthetic | default[:speech], "
                                "or a dataset folder (a path, or a folder name under $TPRUNE_DATA)")
    q.add_argument("--root", help="dataset folder or a folder holding it (default: $TPRUNE_DATA)")
    q.set_defaults(func=cmd_check)

    q = sub.add_parser("fetch", help="download and unpack an official archive (esc50, speechcommands)")
    q.add_argument("name")
    q.add_argument("--to", required=True, metavar="DIR", help="folder to unpack into (then TPRUNE_DATA=DIR)")
    q.add_argument("--url", help="download from this URL instead of the official one")
    q.add_argument("--sha256", help="expected SHA-256 of the archive (the official one is checked by default)")
    q.set_defaults(func=cmd_fetch)

    q = sub.add_parser("featurize", help="fill the feature cache for a dataset split")
    q.add_argument("name", help="a dataset name or folder, as for check")
    q.add_argument("--root")
    q.add_argument("--split", default="all", choices=DATA_SPLITS)
    q.add_argument("--frames", type=int, help="frames per clip (default: a full clip, rounded up to 16)")
    q.add_argument("--mel-bins", type=int, default=128)
    q.add_argument("--on-error", default="raise", choices=ON_ERROR,
                   help="skip: leave unreadable files out and list them (default: stop at the first)")
    q.set_defaults(func=cmd_featurize)


def cmd_list(args):
    from ..data.datasets import find_datasets
    entries = find_datasets(args.root)
    if args.json:
        print(json.dumps(entries, indent=1))
        return 0
    for e in entries:
        name = e["name"] + (f":{e['flavour']}" if "flavour" in e else "")
        if e["found"]:
            splits = " ".join(f"{k}={v}" for k, v in e["splits"].items())
            print(f"{name:22s} {e['clips']:6d} clips {e['classes']:3d} classes  {e['layout']:9s} "
                  f"{e['path']}  [{splits}]")
        elif e["path"]:
            print(f"{name:22s} unusable: {e['problem']}")
        else:
            print(f"{name:22s} not found ({e['problem']})")
    from ..data.folders import expected
    print(f"any other folder: tprune data check PATH, with {expected()}")
    return 0


def cmd_check(args):
    import numpy as np
    from tqdm.auto import tqdm

    from ..data.cache import clip_fbank, one_thread
    from ..data.datasets import load_dataset
    from ..errors import AudioError, counted
    clips = load_dataset(args.name, args.root, "all")
    problems, seconds = [], []
    with one_thread():
        for i in tqdm(range(len(clips)), desc=f"checking {clips.name}", unit="file", file=sys.stderr):
            try:  # the featurizer's own path: a file passes only if it can be featurized
                seconds.append(clip_fbank(clips, i)[1] / 16000)
            except AudioError as exc:
                problems.append(str(exc))
    print(clips.describe())
    if seconds:
        print(f"read {len(seconds)} of {len(clips)} files; duration {min(seconds):.2f}-{max(seconds):.2f} s "
              f"(median {float(np.median(seconds)):.2f} s)")
    for p in problems:
        print(f"problem: {p}")
    print(counted(len(problems), "problem"))
    return 1 if problems else 0


def cmd_fetch(args):
    from ..data.fetch import fetch
    folder = fetch(args.name, args.to, url=args.url, sha256=args.sha256)
    print(folder)
    return 0


def cmd_featurize(args):
    from ..data.cache import featurize
    from ..data.datasets import load_dataset
    clips = load_dataset(args.name, args.root, args.split)
    frames = args.frames or clips.default_frames()
    fs = featurize(clips, frames, args.mel_bins, on_error=args.on_error)
    mean, std = fs.stats
    print(f"{fs.dataset}\n{len(fs)} clips x {frames} frames x {args.mel_bins} mel in {fs.path} "
          f"({'cached' if fs.from_cache else 'computed'}); fbank mean {mean:.4f} std {std:.4f}; "
          f"{len(fs.skipped)} skipped")
    for cid, path, problem in fs.skipped:
        print(f"skipped: {path}: {problem}")
    return 0
