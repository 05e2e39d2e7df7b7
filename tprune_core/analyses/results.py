"""The small results store the book is built from.

A table lives at `<root>/<chapter>/<name>.csv` (or `.json` for non-tabular data) next to a sidecar
`<name>.meta.json` that records the parameters that made it, the code version, a timestamp and a checksum of
the data file. Loading asks for the parameters the caller runs with and refuses a table made with different
ones, or one edited after it was saved, so a chapter never shows numbers that do not belong to its settings.

Root: `TPRUNE_RESULTS` if set; otherwise `<repo>/results` for the `full` profile, and for the `smoke` profile
`<repo>/_build/smoke/results` (smoke numbers must never overwrite the published ones). Loads that find nothing
usable there also look in the roots listed in `TPRUNE_RESULTS_FALLBACK` (os.pathsep-separated; read only): a
rerun (`tprune run`) writes into its own root but can still use published tables made with the same parameters.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
from pathlib import Path, PurePath

from .. import __version__  # noqa: F401  (results.__version__: the version tables record)
from ..errors import ConfigError, TpruneError
from ..fsio import atomic_write
from ..rules import BOOK_PROFILES
from ..source import GENERATED, code_version, repo_root  # noqa: F401  (re-exported: results.code_version ...)

PROFILES = BOOK_PROFILES  # the book's build profiles (rules.py holds every list of allowed values)
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
META_SUFFIX = ".meta.json"


class ResultsError(TpruneError):
    """A stored result is missing, unreadable, was edited by hand, or was made with other parameters."""


class MissingResultError(ResultsError, FileNotFoundError):
    """No stored result under that chapter/name."""


class StaleResultError(ResultsError):
    """The stored result was made with parameters (or model weights) other than the requested ones."""


# ---------------------------------------------------------------------------------------------- locations

def current_profile() -> str:
    """`full` (default) or `smoke`, from the environment variable TPRUNE_PROFILE."""
    value = os.environ.get("TPRUNE_PROFILE", "").strip() or "full"
    if value not in PROFILES:
        raise ConfigError(f"TPRUNE_PROFILE={value!r}: expected one of {', '.join(PROFILES)}")
    return value


def default_root(base=None) -> Path:
    """Where results are stored (see the module docstring); `base`: the checkout (default: this package's)."""
    env = os.environ.get("TPRUNE_RESULTS", "").strip()
    if env:
        return Path(env).expanduser().resolve()
    base = Path(base).resolve() if base is not None else (repo_root() or Path.cwd())
    if current_profile() == "smoke":
        return base / "_build" / "smoke" / "results"
    return base / "results"


def _read_roots(root) -> list:
    """Where loads look: the given root only, or the default root then the fallback roots."""
    if root is not None:
        return [root]
    extra = os.environ.get("TPRUNE_RESULTS_FALLBACK", "")
    return [None] + [Path(p).expanduser().resolve() for p in extra.split(os.pathsep) if p.strip()]


def _check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ConfigError(f"{kind}={value!r}: expected lower-case letters, digits, '-' or '_' "
                          f"(it becomes a file name under results/)")
    return value


def _paths(chapter: str, name: str, root) -> tuple[Path, Path]:
    folder = Path(root).resolve() if root is not None else default_root()
    folder = folder / _check_name("chapter", chapter)
    return folder, folder / f"{_check_name('name', name)}{META_SUFFIX}"


# ---------------------------------------------------------------------------------------------- parameters

def canonical_params(params: dict) -> dict:
    """Parameters as plain JSON values (tuples → lists, numpy scalars → numbers, paths → strings), so that a
    round trip through the sidecar compares equal to what the caller passes next time."""
    if not isinstance(params, dict):
        raise ConfigError(f"params: expected a dict of parameter name -> value, got {type(params).__name__}")
    return _canon(params, "params")


def _canon(value, where: str):
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where}={value!r}: parameters must be finite numbers")
        return float(value)
    if isinstance(value, PurePath):
        return value.as_posix()
    if isinstance(value, dict):
        out = {}
        for key in sorted(value, key=str):
            if not isinstance(key, str):
                raise ConfigError(f"{where}: parameter names must be strings, got {key!r}")
            out[key] = _canon(value[key], f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [_canon(v, f"{where}[{i}]") for i, v in enumerate(value)]
    # numpy / torch scalars and arrays, without importing either here
    if hasattr(value, "tolist") and callable(value.tolist):
        return _canon(value.tolist(), where)
    raise ConfigError(f"{where}={value!r}: parameters must be JSON-like (numbers, strings, lists, dicts), "
                      f"got {type(value).__name__}")


def params_digest(params: dict) -> str:
    """A short stable hash of the canonical parameters."""
    text = json.dumps(canonical_params(params), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _param_diff(saved: dict, wanted: dict) -> list[str]:
    lines = []
    for key in sorted(set(saved) | set(wanted)):
        if key not in wanted:
            lines.append(f"{key}: saved {saved[key]!r}, not requested")
        elif key not in saved:
            lines.append(f"{key}: requested {wanted[key]!r}, not in the saved parameters")
        elif saved[key] != wanted[key]:
            lines.append(f"{key}: saved {saved[key]!r}, requested {wanted[key]!r}")
    return lines


# ---------------------------------------------------------------------------------------------- store

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


_DTYPES = ("int", "uint", "float", "bool", "object", "string", "category")


def _save(chapter, name, payload: bytes, kind: str, params, root, extra: dict) -> Path:
    folder, meta_path = _paths(chapter, name, root)
    data_path = folder / f"{name}.{kind}"
    meta = {
        "chapter": chapter,
        "name": name,
        "kind": kind,
        "file": data_path.name,
        "params": canonical_params(params),
        "code_version": code_version(),
        "profile": current_profile(),
        "saved_at": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "sha256": hashlib.sha256(payload).hexdigest(),
        **extra,
    }
    # Data first, sidecar last: a crash in between leaves a checksum mismatch, which load refuses.
    atomic_write(data_path, payload)
    other = folder / f"{name}.{'json' if kind == 'csv' else 'csv'}"
    if other.exists():
        other.unlink()
    atomic_write(meta_path, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return data_path


def _provenance(checkpoints, machine) -> dict:
    """Sidecar fields of a table computed from trained models: ``checkpoints`` (model name -> sha256 of its
    weights file) and ``machine`` (processor, threads, library versions of the computing process)."""
    out = {}
    if checkpoints is not None:
        if not isinstance(checkpoints, dict) or not checkpoints or not all(
                isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in checkpoints.items()):
            raise ConfigError(f"checkpoints: expected a non-empty dict of model name -> sha256 hex digest (64 "
                              f"characters), got {checkpoints!r:.200}")
        out["checkpoints"] = dict(sorted(checkpoints.items()))
    if machine is not None:
        out["machine"] = canonical_params(machine)
    return out


def save_table(chapter: str, name: str, table, params: dict, root=None, checkpoints=None, machine=None) -> Path:
    """Save a pandas DataFrame as `<root>/<chapter>/<name>.csv` with its parameters; returns the CSV path. A table
    computed from trained models passes ``checkpoints`` (name -> weights sha256; loads then refuse it once any
    model changed) and ``machine`` (see ``_provenance``)."""
    import pandas as pd

    if not isinstance(table, pd.DataFrame):
        raise ConfigError(f"{chapter}/{name}: expected a pandas DataFrame, got {type(table).__name__}")
    if not table.columns.is_unique or not all(isinstance(c, str) for c in table.columns):
        raise ConfigError(f"{chapter}/{name}: column names must be unique strings, got {list(table.columns)}")
    dtypes = {}
    for col, dtype in table.dtypes.items():
        kind = str(dtype)
        if not kind.startswith(_DTYPES):
            raise ConfigError(f"{chapter}/{name}: column {col!r} has dtype {kind}; store numbers, booleans or "
                              f"strings (convert dates/objects to strings first)")
        dtypes[col] = kind
    payload = table.to_csv(index=False, lineterminator="\n").encode()
    return _save(chapter, name, payload, "csv", params, root, {"columns": list(table.columns), "dtypes": dtypes,
                                                               "rows": int(len(table)),
                                                               **_provenance(checkpoints, machine)})


def save_json(chapter: str, name: str, data, params: dict, root=None, checkpoints=None, machine=None) -> Path:
    """Save JSON-like data (dicts, lists, numbers, strings) as `<root>/<chapter>/<name>.json` (``checkpoints``,
    ``machine``: as in save_table)."""
    try:
        payload = (json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{chapter}/{name}: data is not plain JSON ({exc})") from None
    return _save(chapter, name, payload, "json", params, root, _provenance(checkpoints, machine))


def read_meta(chapter: str, name: str, root=None) -> dict:
    """The sidecar of a stored result, after checking that the data file is intact."""
    folder, meta_path = _paths(chapter, name, root)
    if not meta_path.is_file():
        raise MissingResultError(f"{meta_path}: no stored result {chapter}/{name} (run the chapter to make it)")
    try:
        meta = json.loads(meta_path.read_text())
        data_path = folder / meta["file"]
        sha = meta["sha256"]
        meta["params"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ResultsError(f"{meta_path}: unreadable sidecar ({exc!r}); delete it and re-run the chapter") from None
    if not data_path.is_file():
        raise MissingResultError(f"{data_path}: data file named by {meta_path.name} is missing")
    if _sha256(data_path) != sha:
        raise ResultsError(f"{data_path}: contents differ from what was saved (edited by hand or a partial "
                           f"write); re-run the chapter to regenerate it")
    meta["path"] = str(data_path)
    return meta


def _check_params(meta: dict, params, what: str) -> None:
    if params is None:
        return
    wanted = canonical_params(params)
    if meta["params"] != wanted:
        diff = "; ".join(_param_diff(meta["params"], wanted))
        raise StaleResultError(f"{meta['path']}: made with other parameters than requested ({diff}); "
                               f"re-run the chapter to refresh {what}")


def _check_checkpoints(meta: dict, checkpoints, what: str) -> None:
    """Refuse a table made from other model weights than the caller's (a retrained zoo never reuses it)."""
    if checkpoints is None:
        return
    saved = meta.get("checkpoints")
    if saved is None:
        raise StaleResultError(f"{meta['path']}: records no checkpoint digests (made before they were recorded, or "
                               f"not from trained models); re-run the chapter to refresh {what}")
    wanted = dict(checkpoints)
    changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if changed:
        shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
        raise StaleResultError(f"{meta['path']}: made from other model weights than the current ones ({shown}: "
                               f"retrained, added or removed); re-run the chapter to refresh {what}")


def _find(chapter: str, name: str, params, root, kind: str, checkpoints=None) -> dict:
    """The sidecar of the first stored result (default root, then fallbacks) made with `params` (and, when given,
    from the models whose weights digests are `checkpoints`)."""
    errors = []
    for where in _read_roots(root):
        try:
            meta = read_meta(chapter, name, where)
            if meta.get("kind") != kind:
                other = "load_json" if kind == "csv" else "load_table"
                raise ResultsError(f"{meta['path']}: stored as {meta.get('kind')}, not {kind}; use {other}")
            _check_params(meta, params, f"{chapter}/{name}")
            _check_checkpoints(meta, checkpoints, f"{chapter}/{name}")
            return meta
        except (MissingResultError, StaleResultError) as exc:
            errors.append(exc)
    stale = [e for e in errors if isinstance(e, StaleResultError)]
    raise (stale or errors)[0]


def load_table(chapter: str, name: str, params: dict | None, root=None, checkpoints=None):
    """Load a stored table. `params` are the parameters the caller runs with: a table saved with different ones
    raises StaleResultError, and so does one made from other model weights than `checkpoints` (name -> sha256),
    when given. Pass `params=None` only to inspect whatever is stored."""
    import pandas as pd

    meta = _find(chapter, name, params, root, "csv", checkpoints)
    dtypes = meta.get("dtypes", {})
    # Read everything as text first so that strings like "1.0" stay strings, then restore the saved dtypes.
    table = pd.read_csv(meta["path"], dtype=str, keep_default_na=False)
    if list(table.columns) != meta.get("columns", list(table.columns)):
        raise ResultsError(f"{meta['path']}: columns {list(table.columns)} differ from the sidecar's "
                           f"{meta.get('columns')}")
    for col, kind in dtypes.items():
        if kind.startswith(("int", "uint", "float")):
            table[col] = pd.to_numeric(table[col].mask(table[col] == "")).astype(kind)
        elif kind == "bool":
            table[col] = table[col].map({"True": True, "False": False}).astype(bool)
        elif kind == "category":
            table[col] = table[col].astype("category")
        # object/string columns stay text; empty cells were empty strings or missing values, kept as ""
    table.attrs["meta"] = meta
    return table


def load_json(chapter: str, name: str, params: dict | None, root=None, checkpoints=None):
    """Load stored JSON data; refuses data saved with other parameters or model weights (see load_table)."""
    meta = _find(chapter, name, params, root, "json", checkpoints)
    return json.loads(Path(meta["path"]).read_text())


def load_or_compute(chapter: str, name: str, params: dict, compute, root=None, checkpoints=None, machine=None):
    """The stored table if it was made with `params` from the models `checkpoints` (name -> weights sha256; pass
    them for every table computed from trained models), else `compute()` (a DataFrame), saved and returned."""
    try:
        return load_table(chapter, name, params, root, checkpoints)
    except (MissingResultError, StaleResultError):
        pass
    table = compute()
    save_table(chapter, name, table, params, root, checkpoints, machine)
    return load_table(chapter, name, params, root, checkpoints)


def list_results(root=None) -> list[dict]:
    """Sidecars of everything stored (unchecked), sorted by chapter and name."""
    base = Path(root).resolve() if root is not None else default_root()
    found = []
    for meta_path in sorted(base.glob(f"*/*{META_SUFFIX}")):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise ResultsError(f"{meta_path}: unreadable sidecar ({exc!r})") from None
        meta["meta_path"] = str(meta_path)
        found.append(meta)
    return found


def provenance_problems(root=None, current: dict | None = None) -> list[str]:
    """What is wrong with the checkpoint digests stored beside the tables: the same model recorded with different
    weights by two tables, or (``current``: model name -> sha256 of the zoo's weights now) a table computed from
    weights the zoo no longer has. Empty when every table agrees with every other and with the zoo."""
    seen, problems = {}, []
    for meta in list_results(root):
        where = f"{meta['chapter']}/{meta['name']}"
        for name, digest in sorted((meta.get("checkpoints") or {}).items()):
            first = seen.setdefault(name, (digest, where))
            if first[0] != digest:
                problems.append(f"{name}: {first[1]} and {where} were computed from different weights")
            if current is not None and name in current and current[name] != digest:
                problems.append(f"{where}: computed from {name} weights that are no longer the zoo's")
    return problems
