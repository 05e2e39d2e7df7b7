"""`tprune` command line. Each sub-command group lives in its own module with an `add_parser(subparsers)`."""
import argparse
import importlib
import sys

from ..errors import TpruneError

# module name -> registers its sub-commands; imported lazily so `tprune data list` does not import torch-heavy code.
GROUPS = ["data", "macs", "train", "bench", "book", "study"]


def drop_loc_arg(text: str) -> tuple:
    """argparse ``type`` of every ``--drop-loc``: ``rules.parse_drop_loc``, its message as argparse's error."""
    from ..errors import ConfigError
    from ..rules import parse_drop_loc
    try:
        return parse_drop_loc(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("drop_loc: ")) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tprune", description="Token pruning in audio transformers.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in GROUPS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # group not written yet
            raise
        module.add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TpruneError as exc:
        print(f"tprune: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
