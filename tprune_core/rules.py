"""Every rule and every list of allowed values, in one torch-free module.

The model factory, the MAC counter, pruning, the benchmark, the training configs and the command line all read
these names, so a new model size is added here once, and a new pruning method is one ``register_method`` call
(its record: name, flags, options, and its select and extra-MACs functions named lazily). Importing this module must
never import torch: ``tprune --help`` builds its ``choices=`` from it.

Each ``check_*`` raises ``ConfigError`` with a message that names the parameter and says what was expected.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import math
from numbers import Integral

from .errors import ConfigError

PATCH = 16                                  # patch side in mel bins and in 10 ms frames
MEL_BINS = 128
FAMILIES = ("ast", "audiomae")              # AST: CLS + distillation token; AudioMAE: mean-pooled patch tokens
SIZES = {  # name: (embed_dim, depth, num_heads)
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
}
DEFAULT_DROP_LOC = (3, 6, 9)
# Pruning methods (METHODS, FIXED_BUDGET, PER_CLIP, ...): one record each, registered at the end of this module.

PRECISIONS = ("auto", "fp32", "bf16")       # training / evaluation: auto = bf16 autocast on CUDA, fp32 on CPU
BENCH_DTYPES = ("fp32", "bf16", "fp16")     # autocast dtypes the benchmark times
LINEARS = ("auto", "onednn", "default")     # linear-layer backends of the benchmark
BENCH_COMPILE = ("none", "default", "reduce-overhead", "max-autotune")   # torch.compile modes it times
BENCH_DEVICES = ("cpu", "cuda")
OMP_WAITS = ("active", "passive", "default")   # libgomp's wait policy for timing; default = unset (spin, then sleep)
SPLITS = ("train", "val", "test")
DATA_SPLITS = SPLITS + ("all",)             # what the data commands featurize and load: a split, or every clip
ON_ERROR = ("raise", "skip")                # what featurizing does with an unreadable file
ZOO_PROFILES = ("full", "long", "smoke")
BOOK_PROFILES = ("full", "smoke")


@contextlib.contextmanager
def fields_of(owner: str):
    """Run ``check_*`` calls on the fields of a config class: a failing one names the field as ``Owner.field``
    (``TrainConfig.size: expected ...``), so configs and the command line share one rule and one message."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError(f"{owner}.{exc}") from None


def check_one_of(name: str, allowed, value) -> None:
    """``value`` is one of ``allowed`` (one of the lists above)."""
    if value not in allowed:
        raise ConfigError(f"{name}: expected one of {tuple(allowed)}, got {value!r}")


def apply_omp_wait(choice: str | None) -> str:
    """Set libgomp's wait policy for a timing run, before torch loads (libgomp reads ``OMP_WAIT_POLICY`` once).

    ``None`` keeps a policy the user exported, else ``active``: between two operators the threads spin instead of
    sleeping, which at batch 1 on an idle machine saves a wake-up per operator (Intel Xeon, 2 cores, ViT-B: 256
    tokens pruned 0.5 ran 108 ms instead of 125 ms). On a machine shared with other work, ``passive`` keeps spinning
    threads off the cores the others need. With torch already loaded an explicit choice must match the policy it
    loaded with (else ConfigError). Returns the policy in force, the one every timing row records."""
    import os
    import sys
    loaded = "torch" in sys.modules
    if choice is None:   # torch already loaded (a caller in-process): the policy it loaded with is the one in force
        choice = os.environ.get("OMP_WAIT_POLICY", "default" if loaded else "active").lower()
    check_one_of("omp_wait", OMP_WAITS, choice)
    wanted = None if choice == "default" else choice.upper()
    if loaded:   # too late to change it: say so rather than record a policy that is not in force
        if os.environ.get("OMP_WAIT_POLICY") != wanted:
            raise ConfigError(f"omp_wait: torch is already loaded with OMP_WAIT_POLICY="
                              f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}; expected {choice!r} to be set before "
                              "torch loads (export OMP_WAIT_POLICY, or run the benchmark in a fresh process)")
    elif wanted is None:
        os.environ.pop("OMP_WAIT_POLICY", None)
    else:
        os.environ["OMP_WAIT_POLICY"] = wanted
    return choice


def check_family(family) -> None:
    check_one_of("family", FAMILIES, family)


def check_size(size) -> None:
    check_one_of("size", SIZES, size)


def depth_of(size: str) -> int:
    check_size(size)
    return SIZES[size][1]


MAX_DEPTH = max(depth for _, depth, _ in SIZES.values())   # drop blocks any size can take (before a size is known)


def check_model(family, size, frames, mel) -> None:
    """The family, size and fbank grid (``frames`` x ``mel``) of a model, in the order ``create_model`` checks."""
    check_family(family)
    check_size(size)
    check_patch_multiple("frames", frames)
    check_patch_multiple("mel", mel)


def is_patch_multiple(value) -> bool:
    return is_positive_int(value) and value % PATCH == 0


def check_patch_multiple(name: str, value) -> None:
    """``frames`` and ``mel`` must tile into whole 16x16 patches."""
    if not is_patch_multiple(value):
        raise ConfigError(f"{name}: expected a positive multiple of {PATCH}, got {value!r}")


def check_method(method) -> None:
    check_one_of("method", method_names(), method)


def is_keep_rate(value) -> bool:
    try:
        return 0.0 < float(value) <= 1.0 and not math.isnan(float(value))
    except (TypeError, ValueError):
        return False


def check_keep_rate(keep_rate) -> None:
    if not is_keep_rate(keep_rate):
        raise ConfigError(f"keep_rate: expected a number in (0, 1], got {keep_rate!r}")


def is_drop_loc(blocks, depth: int) -> bool:
    """Distinct block indices of a ``depth``-block model, at least one."""
    blocks = tuple(blocks or ())
    return (bool(blocks) and all(isinstance(b, Integral) and 0 <= int(b) < depth for b in blocks)
            and len(set(blocks)) == len(blocks))


def check_drop_loc(drop_loc, depth: int) -> None:
    """Distinct block indices of a ``depth``-block model, at least one."""
    blocks = tuple(drop_loc or ())
    if not is_drop_loc(blocks, depth):
        raise ConfigError(f"drop_loc: expected distinct block indices in 0..{depth - 1}, got {blocks}")


def parse_drop_loc(text: str, depth: int | None = None) -> tuple[int, ...]:
    """The one reader of a drop-location string for every command: ``"3,6,9"`` (or ``"3 6 9"``) -> ``(3, 6, 9)``,
    sorted; distinct indices of a ``depth``-block model (default: the deepest size, before a size is known)."""
    depth = MAX_DEPTH if depth is None else depth
    try:
        blocks = tuple(int(b) for b in str(text).replace(",", " ").split())
    except ValueError:
        raise ConfigError(f"drop_loc: expected block indices like 3,6,9, got {text!r}") from None
    check_drop_loc(blocks, depth)
    return tuple(sorted(blocks))


def check_options(method: str, options: dict) -> None:
    """The keyword options a pruning method takes (its record's ``options``), and their ranges (its
    ``check_options``)."""
    record = _METHODS.get(method)
    allowed = record.options if record else frozenset()
    unknown = set(options) - allowed
    if unknown:
        raise ConfigError(f"{method}: unknown option(s) {sorted(unknown)}; expected {sorted(allowed) or 'none'}")
    if record and record.check_options:
        record.check_options(options)


def check_pruning(method, keep_rate, drop_loc, depth: int, options: dict | None = None) -> None:
    """Everything ``apply_pruning`` needs of its arguments, for a model of ``depth`` blocks."""
    check_method(method)
    check_keep_rate(keep_rate)
    check_drop_loc(drop_loc, depth)
    check_options(method, options or {})


def is_positive_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value > 0


def check_positive_int(name: str, value) -> None:
    if not is_positive_int(value):
        raise ConfigError(f"{name}: expected a positive integer, got {value!r}")


def check_precision(precision) -> None:
    check_one_of("precision", PRECISIONS, precision)


def check_device_name(device: str) -> None:
    """'auto', 'cpu', 'cuda' or 'cuda:N' (whether CUDA exists is checked where torch is imported)."""
    text = str(device)
    ok = text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit())
    if not ok:
        raise ConfigError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {text!r}")


# ---------------------------------------------------------------------------------------------------------------
# Pruning methods: one record each. Everything the package asks about a method (the CLI's choices, the checks,
# which blocks compute attention scores, the MAC count, compiling, the book's colour) is read from its record, so a
# method is added by registering one record. Its torch code is named as "module:function" and imported only when
# first called, which keeps this module torch-free.

PATCH_STATS = ("mean", "std")   # statistics of a patch's pixels a method may rank by (pruning computes them)


@dataclasses.dataclass(frozen=True)
class PruningMethod:
    """One pruning method.

    ``select(state, block, x, scores) -> x``: the drop after block ``block``'s attention (see ``pruning.select``);
    ``extra_macs(dims, n_patch_in, removed, fused_before) -> int``: MACs a drop that removes ``removed`` of
    ``n_patch_in`` patch tokens spends itself, ``dims`` a ``macs.Dims`` (None: nothing beyond the blocks). Either
    is a function or a "module:function" string. ``options``: the keyword options ``apply_pruning`` accepts;
    ``check_options(options)`` raises ConfigError for one out of range (unknown names are refused already)."""
    name: str
    select: object
    extra_macs: object = None
    scored: bool = False             # ranks by attention: its drop blocks compute attention scores
    per_clip: bool = False           # keep counts differ between clips: no token schedule, no fullgraph compile
    patch_stat: str | None = None    # one of PATCH_STATS: computed per patch once per forward, in state.stat
    fuses: bool = False              # its first drop adds one token (evit_fuse's fused token), kept from then on
    # per-clip methods whose first drop the input alone decides: ``first_counts(stat, options) -> (B,)`` patch tokens
    # each clip keeps there (``stat`` the method's patch_stat); evaluation batches clips of similar counts together
    first_counts: object = None
    options: frozenset = frozenset()
    check_options: object = None
    color: int | None = None         # the book's colour: index into plots' colour-blind palette


_METHODS: dict[str, PruningMethod] = {}   # registration order is the order of every list and CLI choice


def register_method(method: PruningMethod, replace: bool = False) -> PruningMethod:
    """Add ``method`` to every list, check and CLI choice (a name already taken needs ``replace=True``)."""
    if not isinstance(method.name, str) or not method.name.isidentifier():
        raise ConfigError(f"method name: expected an identifier, got {method.name!r}")
    if method.name == "none":   # `tprune eval --method none` means the unpruned model
        raise ConfigError("method name: 'none' is reserved for the unpruned model")
    if method.name in _METHODS and not replace:
        raise ConfigError(f"method name: {method.name!r} is already registered")
    if method.patch_stat not in (None, *PATCH_STATS):
        raise ConfigError(f"{method.name}: patch_stat must be one of {PATCH_STATS} or None, got {method.patch_stat!r}")
    if method.select is None:
        raise ConfigError(f"{method.name}: a select function is required")
    # a record may list its options in any collection; the registry keeps them immutable
    _METHODS[method.name] = dataclasses.replace(method, options=frozenset(method.options))
    return _METHODS[method.name]


def unregister_method(name: str) -> None:
    """Remove a registered method (a test's toy method, afterwards)."""
    check_method(name)
    del _METHODS[name]


def pruning_method(name: str) -> PruningMethod:
    """The record of a registered method (ConfigError naming ``method`` otherwise)."""
    check_method(name)
    return _METHODS[name]


def registered_methods() -> tuple:
    """Every method's record, in registration order."""
    return tuple(_METHODS.values())


def method_names() -> tuple:
    """Every registered method, in registration order (the built-ins first)."""
    return tuple(_METHODS)


def fixed_budget_methods() -> tuple:
    """Methods that keep the same token count for every clip: a static token schedule, one compiled graph."""
    return tuple(m.name for m in _METHODS.values() if not m.per_clip)


@functools.lru_cache(maxsize=None)
def load_function(ref):
    """A record's function: ``ref`` itself, or the function a "module:function" string names (imported here)."""
    if not isinstance(ref, str):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def __getattr__(name: str):
    """The method lists that predate the records, as views of the registry (so they include later additions)."""
    views = {
        "METHODS": method_names,
        "FIXED_BUDGET": fixed_budget_methods,
        "SCORED": lambda: frozenset(m.name for m in _METHODS.values() if m.scored),
        "PER_CLIP": lambda: frozenset(m.name for m in _METHODS.values() if m.per_clip),
        "PATCH_STAT": lambda: frozenset(m.name for m in _METHODS.values() if m.patch_stat),
        "OPTIONS": lambda: {m.name: set(m.options) for m in _METHODS.values() if m.options},
    }
    if name in views:
        return views[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


MATCHED_CONTROLS = ("random",)   # intensity_range's control: the same count per clip, drawn elsewhere


def _check_intensity_range_options(options: dict) -> None:
    if options.get("matched") not in (None, *MATCHED_CONTROLS):
        raise ConfigError(f"intensity_range: matched must be one of {MATCHED_CONTROLS} or absent, got "
                          f"{options['matched']!r}")


def _check_adaptive_options(options: dict) -> None:
    if not 0.0 < float(options.get("mass", 0.9)) <= 1.0:
        raise ConfigError(f"adaptive: mass must be in (0, 1], got {options['mass']!r}")


_SELECT = "tprune_core.nn.pruning:"
_EXTRA = "tprune_core.nn.macs:"
for _record in (
    PruningMethod("topk", _SELECT + "select_topk", scored=True, color=0),
    PruningMethod("random", _SELECT + "select_random", options={"seed"}, color=7),
    PruningMethod("mean", _SELECT + "select_by_patch_stat", patch_stat="mean", color=1),
    PruningMethod("std", _SELECT + "select_by_patch_stat", patch_stat="std", color=8),
    PruningMethod("evit_fuse", _SELECT + "select_evit_fuse", _EXTRA + "evit_fuse_macs", scored=True, fuses=True,
                  color=2),
    PruningMethod("tome", _SELECT + "select_tome", _EXTRA + "tome_macs", color=4),
    PruningMethod("intensity_range", _SELECT + "select_intensity_range", per_clip=True, patch_stat="mean",
                  options={"keep_ranges", "lo", "hi", "matched", "seed"}, first_counts=_SELECT + "in_range_counts",
                  check_options=_check_intensity_range_options, color=6),
    PruningMethod("adaptive", _SELECT + "select_adaptive", scored=True, per_clip=True, options={"mass"},
                  check_options=_check_adaptive_options, color=5),
):
    register_method(_record)
del _record
