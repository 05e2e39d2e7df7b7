"""`tprune run` (a chapter with changed parameters, published under Reruns) and `tprune book` (build the site)."""
import argparse

from ..errors import ConfigError
from ..rules import BOOK_PROFILES


def add_parser(subparsers) -> None:
    run = subparsers.add_parser(
        "run", help="execute a book chapter with changed parameters into book/reruns/",
        description="Convert a chapter (book/CHAPTER.md) with jupytext, execute it with papermill with the given "
                    "parameters into book/reruns/CHAPTER-<tag or parameter hash>.ipynb, and list it in the "
                    "Reruns part of the site (shown after the next `make book`). The default chapter is unchanged.")
    run.add_argument("chapter", help="chapter name, e.g. pruning-tradeoffs (or a path to book/*.md)")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="override a parameter of the chapter's parameters cell; VALUE is a Python literal "
                          "(3, 0.5, \"[1.0, 0.5]\", True) or else taken as text; repeatable")
    run.add_argument("--tag", help="label of the rerun (file name and title); default: a hash of the parameters")
    run.add_argument("--profile", choices=BOOK_PROFILES, default=None,
                     help="build profile the chapter runs with (default: $TPRUNE_PROFILE or full)")
    run.add_argument("--timeout", type=int, default=None, help="seconds allowed per cell (default 1800)")
    run.add_argument("--root", default=None, help="book root holding _toc.yml and book/ (default: this checkout)")
    run.set_defaults(func=_run)

    build = subparsers.add_parser(
        "book", help="build the book (jupyter-book, -W) into _build/html",
        description="Sync the Reruns part, then build the book with jupyter-book under -W. Chapters whose "
                    "executed notebook stored in results/ is current (same code cells, same tprune_core code, "
                    "tables computed from the released weights) are rendered from it without executing; the "
                    "others are executed, after training the models they need. The full profile writes "
                    "_build/html; other profiles write _build/<profile>/_build/html with their own "
                    "execution cache. The html folder is recorded in _build/last-build.json for the site check.")
    build.add_argument("--profile", choices=BOOK_PROFILES, default=None,
                       help="full (default: $TPRUNE_PROFILE or full) or smoke (tiny settings)")
    build.add_argument("--reexecute", action="store_true",
                       help="drop this profile's execution cache and run every chapter again (after a change "
                            "in tprune_core: the cache is keyed on the chapters' code cells only)")
    build.add_argument("--jobs", type=int, default=1,
                       help="zoo runs trained at once when a chapter must be executed and its models are neither "
                            "built nor released (2 on a 2-core CPU)")
    build.add_argument("--no-train", action="store_true",
                       help="never train: a chapter whose models are missing fails instead")
    build.add_argument("--root", default=None, help="book root (default: this checkout)")
    build.add_argument("jb_args", nargs=argparse.REMAINDER, help="extra arguments for jupyter-book build, after --")
    build.set_defaults(func=_build)


def _run(args) -> int:
    from .. import book

    params = {}
    for name, value in args.parameter:
        if name in params:
            raise ConfigError(f"-p {name}: given twice")
        params[name] = book.parse_value(value)
    kwargs = {} if args.timeout is None else {"timeout": args.timeout}
    path = book.run_chapter(args.chapter, params, root=args.root, tag=args.tag, profile_name=args.profile, **kwargs)
    print(f"{path}\nlisted under Reruns; run `make book` to publish it")
    return 0


def _build(args) -> int:
    from .. import book

    extra = [a for a in args.jb_args if a != "--"]
    book.build(root=args.root, profile_name=args.profile, extra_args=extra, reexecute=args.reexecute,
               train=not args.no_train, jobs=args.jobs)
    return 0
