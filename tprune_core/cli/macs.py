"""`tprune macs`: analytic MACs of an AST / AudioMAE model, pruned or not, block by block."""
from __future__ import annotations

import argparse
import json

from ..errors import ConfigError
from ..rules import (DEFAULT_DROP_LOC, FAMILIES, MEL_BINS, PATCH, SIZES, fixed_budget_methods, is_keep_rate,
                     is_patch_multiple, is_positive_int, registered_methods)
from . import drop_loc_arg


def _checked(convert, valid, expected: str):
    """An argparse ``type``: ``convert(text)``, then ``valid(value)``; either failing names what was expected."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value
    return parse


_positive_multiple_of_16 = _checked(int, is_patch_multiple, f"a positive multiple of {PATCH}")
_keep_rate = _checked(float, is_keep_rate, "a number in (0, 1]")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not is_positive_int(value):
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "macs", help="count the MACs of a (pruned) AST / AudioMAE model",
        description="Analytic multiply-accumulates of one clip, from the tokens entering each block "
                    "(equal to torch's FlopCounterMode; bias adds, norms and softmax are not counted).")
    p.add_argument("--family", choices=FAMILIES, required=True)
    p.add_argument("--size", choices=tuple(SIZES), required=True)
    p.add_argument("--frames", type=_positive_multiple_of_16, required=True, help=f"fbank frames (multiple of {PATCH})")
    p.add_argument("--mel", type=_positive_multiple_of_16, default=MEL_BINS, help=f"mel bins (default {MEL_BINS})")
    p.add_argument("--keep-rate", type=_keep_rate, default=1.0,
                   help="share of patch tokens kept at each drop block (default 1.0: no pruning)")
    p.add_argument("--drop-loc", type=drop_loc_arg, default=DEFAULT_DROP_LOC, help="drop blocks, e.g. 3,6,9 (default)")
    per_clip = ", ".join(m.name for m in registered_methods() if m.per_clip)
    p.add_argument("--method", choices=fixed_budget_methods(), default="topk",
                   help=f"pruning method ({per_clip} keep a different count per clip: count those from a forward "
                        "pass)")
    p.add_argument("--num-classes", type=_positive_int, default=527, help="classifier outputs (default 527)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..nn.macs import count_macs   # torch import only when the command runs

    try:
        out = count_macs(args.family, args.size, args.frames, args.keep_rate, args.drop_loc, args.method,
                         mel=args.mel, num_classes=args.num_classes)
    except ConfigError as exc:   # name the option, not the Python parameter
        name, _, rest = str(exc).partition(":")
        raise ConfigError(f"--{name.replace('_', '-')}:{rest}") from exc
    result = {
        "family": args.family, "size": args.size, "frames": args.frames, "mel": args.mel,
        "keep_rate": args.keep_rate, "drop_loc": list(args.drop_loc), "method": args.method,
        "num_classes": args.num_classes,
        "gmacs": out["gmacs"], "macs": out["macs"],
        "tokens_per_block": out["tokens_per_block"],
        "gmacs_per_block": out["gmacs_per_block"],
        "parts": {k: v / 1e9 for k, v in out["parts"].items()},   # GMACs by kind of work
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(_table(result))
    return 0


def _table(r: dict) -> str:
    n_patch = (r["frames"] // PATCH) * (r["mel"] // PATCH)
    pruned = (f"{r['method']}, keep rate {r['keep_rate']:g} at blocks {','.join(map(str, r['drop_loc']))}"
              if r["keep_rate"] < 1.0 else "no pruning")
    lines = [f"{r['family']} {r['size']}: {r['frames']} frames x {r['mel']} mel = {n_patch} patch tokens, "
             f"{r['num_classes']} classes; {pruned}",
             "",
             f"{'block':>5}  {'tokens':>6}  {'GMACs':>8}"]
    for i, (t, g) in enumerate(zip(r["tokens_per_block"], r["gmacs_per_block"])):
        lines.append(f"{i:>5}  {t:>6}  {g:>8.4f}")
    lines += ["", "where the MACs go:"]
    for name, g in r["parts"].items():
        if g:
            lines.append(f"  {name:<12} {g:>8.4f} GMACs  {100 * g / r['gmacs']:5.1f}%")
    lines += ["", f"total {r['gmacs']:.2f} GMACs ({r['macs']:,} MACs)"]
    return "\n".join(lines)
