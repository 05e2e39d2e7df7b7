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


_TYPES = {"int": int, "float": float, "str": str}


def add_field_flags(parser, cls, skip=()) -> list[str]:
    """One ``--field-name`` flag per field of the config class ``cls`` not in ``skip`` (and not a dict: those take
    KEY=VALUE lists elsewhere), typed from its annotation, with its choices and help; every default None (unset:
    the config's own default). Returns the fields given flags, for ``flag_values``."""
    from dataclasses import MISSING, fields
    from .. import rules
    choices = {"size": tuple(rules.SIZES), "family": rules.FAMILIES, "precision": rules.PRECISIONS,
               "on_error": rules.ON_ERROR, "prune_method": rules.method_names()}
    added = []
    for f in fields(cls):
        kind = str(f.type).replace(" ", "")
        if f.name in skip or kind == "dict":
            continue
        base = kind.removesuffix("|None")
        default = f.default if f.default is not MISSING else None
        help_text = f.metadata.get("help", "") + (f" (default {default})" if default not in (None, "") else "")
        flag = "--" + f.name.replace("_", "-")
        if base == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif base == "tuple":
            parser.add_argument(flag, type=drop_loc_arg, default=None, help=help_text)
        else:
            parser.add_argument(flag, type=_TYPES[base], default=None, choices=choices.get(f.name), help=help_text)
        added.append(f.name)
    return added


def flag_values(args, names) -> dict:
    """The fields among ``names`` that were given on the command line."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


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
