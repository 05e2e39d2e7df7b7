"""`tprune run`: a chapter executed by papermill with changed parameters into `book/reruns/`.

The copy gets a header naming what changed, its labels prefixed (Sphinx labels are global), and its result
tables kept beside it (`book/reruns/<name>.results/`); the default chapter, its cache and `results/` are not
touched. The copy is then listed in the generated "Reruns" part (`listing.sync_reruns`).
"""
from __future__ import annotations

import ast
import datetime as _dt
import json
import re
import shutil
import tempfile
from pathlib import Path

from ..analyses import results
from ..errors import ConfigError, TpruneError
from ..rules import BOOK_PROFILES
from ._shared import book_root, cell_text, environ, two_column_table
from .listing import RERUNS_DIR, sync_reruns
from .params import chapter_source, parameter_names, profile, read_chapter

CELL_TIMEOUT = 1800  # seconds, as `execute.timeout` in _config.yml
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_TARGET = re.compile(r"^\(([^()\s]+)\)=\s*$", re.M)
_NAME_OPT = re.compile(r"^(\s*:(?:name|label):\s*)(\S+)\s*$", re.M)
_ROLE = re.compile(r"\{(ref|numref|eq)\}`([^`<]*<)?([^`<>]+)(>?)`")


def rerun_label(params: dict, tag: str | None, profile_name: str) -> str:
    """The file label of a rerun: the tag, or a hash of the parameters and profile."""
    if tag is not None:
        if not _TAG.match(tag):
            raise ConfigError(f"--tag {tag!r}: expected letters, digits, '_' or '-' (at most 64)")
        return tag
    return results.params_digest({"params": params, "profile": profile_name})[:8]


def parse_value(text: str):
    """A `-p NAME VALUE` value: a Python literal (number, list, dict, True/None, quoted string), else text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _params_summary(params: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in params.items()) or "default parameters"


def _relabel(notebook, prefix: str) -> None:
    """Prefix the labels a chapter defines (and its own references to them): the rerun copy is built next to
    the chapter and Sphinx labels are global, so duplicates would fail the -W build."""
    labels = set()
    for cell in notebook.cells:
        labels.update(_TARGET.findall(cell.source))
        labels.update(m.group(2) for m in _NAME_OPT.finditer(cell.source))
    if not labels:
        return
    for cell in notebook.cells:
        src = _TARGET.sub(lambda m: f"({prefix}{m.group(1)})=" if m.group(1) in labels else m.group(0), cell.source)
        src = _NAME_OPT.sub(lambda m: m.group(1) + (prefix + m.group(2) if m.group(2) in labels else m.group(2)),
                            src)
        src = _ROLE.sub(lambda m: (f"{{{m.group(1)}}}`{m.group(2) or ''}{prefix}{m.group(3)}{m.group(4)}`"
                                   if m.group(3) in labels else m.group(0)), src)
        cell.source = src


def _rerun_note(chapter: str, title: str, params: dict, profile_name: str, results_dir: str) -> str:
    rows = [(f"`{k}`", cell_text(v)) for k, v in params.items()] or [("(none)", "default parameters")]
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (":::{admonition} Rerun with changed parameters\n:class: tip tprune-rerun\n"
            f"This is [{title}](../{chapter}.md) executed by `tprune run` on {now} with profile "
            f"`{profile_name}`, code `{results.code_version()}`, and these parameters changed:\n\n"
            + two_column_table(("Parameter", "Value"), rows)
            + f"\n\nIts result tables are kept in `{results_dir}`, apart from the published `results/`.\n:::")


def _title_of(notebook) -> str | None:
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
            return None
    return None


def _checked_params(source: Path, names: list[str], params: dict, profile_name: str | None) -> tuple[dict, str]:
    """The requested parameters in the chapter's order, and the profile; refuses what the chapter lacks."""
    if "profile" in params:
        raise ConfigError("-p profile: the profile is not a chapter parameter; use --profile full|smoke")
    unknown = [n for n in params if n not in names]
    if unknown:
        raise ConfigError(f"{source}: no parameter {unknown} in its parameters cell; it has {names}")
    profile_name = profile_name or profile()
    if profile_name not in BOOK_PROFILES:
        raise ConfigError(f"--profile {profile_name!r}: expected one of {', '.join(BOOK_PROFILES)}")
    params = results.canonical_params(params)
    if {"datasets", "families", "zoo_profile"} & set(params):   # before hours of work: the zoo must have models of them
        from ..training import zoo
        zoo_profile = params.get("zoo_profile") or ("smoke" if profile_name == "smoke" else "full")
        zoo.check_selection(zoo_profile, params.get("families"), params.get("datasets"))
        if zoo_profile.startswith(zoo.STUDY_PREFIX):   # made by `tprune study` only: say so rather than fail inside
            zoo.zoo_entries(zoo_profile, families=params.get("families"), datasets=params.get("datasets"))
    return {n: params[n] for n in names if n in params}, profile_name


def _mark_as_rerun(notebook, slug: str, name: str, params: dict, tag: str | None, profile_name: str,
                   results_dir: Path) -> None:
    """Retitle the copy, put the rerun note under its title, prefix its labels and record how it was made."""
    import nbformat

    title = _title_of(notebook) or slug
    label = tag or _params_summary(params)
    first = next((c for c in notebook.cells if c.cell_type == "markdown"), None)
    note = _rerun_note(slug, title, params, profile_name, f"{RERUNS_DIR}/{results_dir.name}/")
    if first is not None and first.source.lstrip().startswith("# "):
        _, _, rest = first.source.lstrip().partition("\n")
        first.source = f"# {title} — rerun: {label}\n\n{note}\n{rest}"
    else:
        notebook.cells.insert(0, nbformat.v4.new_markdown_cell(f"# {title} — rerun: {label}\n\n{note}"))
    _relabel(notebook, f"rerun-{name}-")
    notebook.metadata.pop("jupytext", None)
    notebook.metadata["tprune_rerun"] = {
        "chapter": slug, "title": title, "label": label, "tag": tag, "params": params, "profile": profile_name,
        "code_version": results.code_version(),
        "executed_at": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }


def _execute(notebook, name: str, source: Path, params: dict, profile_name: str, root: Path,
             timeout: int, progress: bool) -> Path:
    """Run the prepared copy with papermill into book/reruns/<name>.ipynb (book/reruns/failed/ on an error)."""
    import nbformat
    import papermill

    reruns = root / RERUNS_DIR
    results_dir = reruns / f"{name}.results"
    kernel = notebook.metadata.get("kernelspec", {}).get("name", "python3")
    with tempfile.TemporaryDirectory(prefix="tprune-run-") as tmp:
        src_nb, out_nb = Path(tmp) / f"{name}.input.ipynb", Path(tmp) / f"{name}.ipynb"
        nbformat.write(notebook, src_nb)
        # the rerun writes its tables beside it and may read published ones made with the same parameters
        with environ(TPRUNE_PROFILE=profile_name):
            published = results.default_root(base=root)
        env = {"TPRUNE_PROFILE": profile_name, "TPRUNE_RESULTS": results_dir, "TPRUNE_RESULTS_FALLBACK": published}
        try:
            with environ(**env):
                papermill.execute_notebook(str(src_nb), str(out_nb), parameters=params, kernel_name=kernel,
                                           cwd=str(source.parent), execution_timeout=timeout,
                                           progress_bar=progress, request_save_on_cell_execute=False)
        except Exception as exc:
            failed = reruns / "failed" / f"{name}.ipynb"
            if out_nb.exists():
                failed.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(out_nb, failed)
            where = f"; the partly executed notebook is {failed}" if failed.exists() else ""
            raise TpruneError(f"{source}: execution with {_params_summary(params)} failed "
                              f"({type(exc).__name__}: {str(exc).strip()[:2000]}){where}") from None
        target = reruns / f"{name}.ipynb"
        shutil.move(str(out_nb), target)
    return target


def run_chapter(chapter: str, params: dict, *, root=None, tag: str | None = None, profile_name: str | None = None,
                timeout: int = CELL_TIMEOUT, progress: bool = True) -> Path:
    """Execute a chapter with changed parameters into `book/reruns/<chapter>-<tag or hash>.ipynb` and refresh
    the Reruns listing. The default chapter, its cache and `results/` are not touched."""
    root = book_root(root)
    source = chapter_source(chapter, root)
    slug = source.stem
    notebook = read_chapter(source)
    params, profile_name = _checked_params(source, parameter_names(notebook, source), params, profile_name)
    name = f"{slug}-{rerun_label(params, tag, profile_name)}"
    reruns = root / RERUNS_DIR
    reruns.mkdir(parents=True, exist_ok=True)
    _mark_as_rerun(notebook, slug, name, params, tag, profile_name, reruns / f"{name}.results")
    target = _execute(notebook, name, source, params, profile_name, root, timeout, progress)
    sync_reruns(root)
    return target
