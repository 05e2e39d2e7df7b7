"""`tprune study PATH`: the book's study on a folder of your own audio (tprune_core.book.study). Progress to stderr."""
import json

from ..errors import ConfigError
from ..rules import BOOK_PROFILES, ON_ERROR

# Kept in step with tprune_core.book.study.CHAPTERS / OPTIONAL / LEFT_OUT (that module imports torch; --help must not).
DEFAULT_CHAPTERS = ("pruning-tradeoffs", "what-attention-sees")


def add_parser(subparsers):
    p = subparsers.add_parser(
        "study", help="the whole study on a folder of your own audio: train the chapters' models from the release, "
                      "then execute the chapters into book/reruns/",
        description="Check the folder (every file of every split is read before any training; a bad file is named), "
                    "print the plan and a time estimate, train both model families x 3 seeds fine-tuned from the "
                    "released encoders (AudioMAE-style from the MAE encoder, AST-style from a released AST-style "
                    "model) with a recipe sized to the folder, then the pruning-aware fine-tunes and controls the "
                    "pruning chapters read, and execute the chapters on them into book/reruns/. Resumable: run the "
                    "same command again to continue. The models form the zoo profile study-NAME; any chapter then "
                    "takes `tprune run CHAPTER -p zoo_profile study-NAME -p datasets '[\"NAME\"]'`.")
    p.add_argument("path", help="a folder of your own audio: class folders, {train,val,test}/<label>/ or a "
                                "metadata.csv (file,label[,split][,group]); `tprune data check PATH` says what it finds")
    p.add_argument("--name", default=None, help="the study's name (default: the folder's name); its models are the "
                                                "zoo profile study-NAME, its dataset is called NAME in the chapters")
    p.add_argument("--jobs", type=int, default=2,
                   help="runs trained at once, each in its own one-thread process (default 2: a 2-core CPU)")
    p.add_argument("--on-error", default="raise", choices=ON_ERROR,
                   help="an unreadable audio file: raise (default: stop before training, naming it) or skip (leave "
                        "it out, print it with its reason, list it in the study's spec and each run's train.json)")
    p.add_argument("--seconds", type=float, default=None, metavar="S",
                   help="clip length: every clip is read as its first S seconds (default: the folder's median clip "
                        "length, at most 4 s)")
    p.add_argument("--chapters", nargs="*", default=None, metavar="CHAPTER",
                   help=f"chapters to execute (default: {' '.join(DEFAULT_CHAPTERS)}; intensity-buckets on "
                        "request; none with an empty list). speech-vs-general (needs a speech and a general-audio "
                        "dataset) and counting-the-work (no trained models) are not run on a study")
    p.add_argument("--profile", default=None, choices=BOOK_PROFILES,
                   help="book profile the chapters run with (default: $TPRUNE_PROFILE or full; smoke: their tiny "
                        "settings)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the folder, read every file, print the plan and the estimate; train nothing")
    p.add_argument("--recipe", default=None, metavar="JSON",
                   help="recipe changes merged into the study's zoo profile, for experiments and tests, e.g. "
                        "'{\"dataset\": {\"epochs\": 3}, \"seeds\": [0, 1]}'")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--root", default=None, help="book root holding _toc.yml and book/ (default: this checkout)")
    p.add_argument("--json", action="store_true", help="print the result (spec path, accuracy, chapters) as JSON")
    p.set_defaults(func=cmd_study)


def cmd_study(args):
    from ..book import study
    from ..training import zoo
    overrides = None
    if args.recipe:
        try:
            overrides = json.loads(args.recipe)
        except ValueError as exc:
            raise ConfigError(f"--recipe {args.recipe!r}: not JSON ({exc})") from None
    chapters = None if args.chapters is None else [c for c in args.chapters if c != "none"]
    out = study.run_study(args.path, name=args.name, jobs=args.jobs, on_error=args.on_error, chapters=chapters,
                          dry_run=args.dry_run, seconds=args.seconds, overrides=overrides,
                          book_profile=args.profile, root=args.root, device=args.device, progress=not args.json)
    spec = out["spec"]
    failed = {c: str(r) for c, r in out["chapters"].items() if isinstance(r, Exception)}
    result = {"study": spec["name"], "profile": spec["profile"], "spec": str(zoo.study_path(spec["name"])),
              "skipped": out["skipped"], "trained_now": out["trained"], "seconds": round(out["seconds"], 1),
              "chapters": {c: str(r) for c, r in out["chapters"].items()},
              "test_accuracy": {e["name"]: e["test_accuracy"] for e in out["entries"] if e["role"] == "base"}}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for chapter, where in result["chapters"].items():
            print(f"{chapter}: {where}")
        if out["chapters"]:
            print("listed under Reruns; run `make book` to publish them")
    return 1 if failed else 0
