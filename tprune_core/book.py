"""The book's machinery: profiles, what a chapter shows at its top, the findings table, reruns and the build.

- `profile()`: `full` or `smoke` (env TPRUNE_PROFILE); chapters pick their sizes from it.
- `chapter_params(chapter, globals())` and `show_setup(...)`: a chapter's parameters, data, splits and seeds
  rendered at its top, with a visible admonition when the data is synthetic or the profile is `smoke`.
- `save_findings(...)`: a chapter's verdict rows, stored in results/ and shown on the landing page through the
  `{tprune-findings}` directive (this module is also a Sphinx extension, listed in `_config.yml`).
- `run_chapter(...)`: `tprune run` — a chapter executed by papermill with changed parameters into
  `book/reruns/`, listed in a generated "Reruns" part (`sync_reruns`) without touching the default chapter.
- `build(...)`: `tprune book` — syncs the Reruns part and runs `jupyter-book build -W` with one output folder
  (and so one execution cache) per profile, because jupyter-cache keys notebooks on their code only.

Importing this module must stay cheap (Sphinx imports it): no torch, no pandas at module level.
"""
from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from . import results
from .errors import ConfigError, TpruneError

BOOK_DIR = "book"
RERUNS_DIR = "book/reruns"
TOC_NAME = "_toc.yml"
GENERATED_TOC = f"{RERUNS_DIR}/_toc.yml"
LAST_BUILD = "_build/last-build.json"
CELL_TIMEOUT = 1800  # seconds, as `execute.timeout` in _config.yml

FINDINGS = "findings"
FINDING_COLUMNS = ("claim", "verdict", "evidence", "where")
VERDICTS = ("reproduced", "not reproduced", "mixed", "inconclusive")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def profile() -> str:
    """The build profile: `full` (default) or `smoke` (tiny settings), from env TPRUNE_PROFILE."""
    return results.current_profile()


def _root(root) -> Path:
    if root is not None:
        return Path(root).resolve()
    found = results.repo_root()
    return found if found is not None else Path.cwd().resolve()


class _Markdown(str):
    """Text that Jupyter displays as Markdown (myst-nb parses it as MyST: admonitions work)."""

    def _repr_markdown_(self):
        return str(self)


def _cell_text(value) -> str:
    text = value if isinstance(value, str) else repr(value)
    return "`" + text.replace("|", "\\|").replace("`", "'").replace("\n", " ") + "`"


def _table(header: tuple[str, str], rows) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- chapter top

def parameter_names(notebook, source="notebook") -> list[str]:
    """Names assigned in the notebook's cell tagged `parameters`, in order."""
    cells = [c for c in notebook.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ConfigError(f"{source}: expected exactly one code cell tagged 'parameters', found {len(cells)}")
    try:
        tree = ast.parse(cells[0].source)
    except SyntaxError as exc:
        raise ConfigError(f"{source}: the parameters cell is not valid Python ({exc})") from None
    names = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        for target in targets:
            for leaf in ast.walk(target):
                if isinstance(leaf, ast.Name) and leaf.id not in names:
                    names.append(leaf.id)
    return names


def chapter_source(chapter: str, root=None) -> Path:
    """`book/<chapter>.md` (a slug like `counting-the-work`, or a path to a chapter file)."""
    root = _root(root)
    candidates = [Path(chapter), root / chapter, root / BOOK_DIR / f"{chapter}.md"]
    for path in candidates:
        if path.suffix == ".md" and path.is_file():
            return path.resolve()
    known = sorted(p.stem for p in (root / BOOK_DIR).glob("*.md"))
    raise ConfigError(f"chapter {chapter!r}: no {BOOK_DIR}/{chapter}.md under {root}; chapters: {', '.join(known)}")


def read_chapter(path: Path):
    import jupytext

    try:
        return jupytext.read(path)
    except Exception as exc:  # jupytext raises many kinds; name the file
        raise ConfigError(f"{path}: not a readable jupytext MyST notebook ({exc})") from None


def chapter_params(chapter: str, namespace: dict, root=None) -> dict:
    """The values of the chapter's parameters (the names its `parameters` cell assigns), read from the
    notebook's namespace after papermill's injection, plus the profile. Pass `globals()`."""
    path = chapter_source(chapter, root)
    names = parameter_names(read_chapter(path), path)
    missing = [n for n in names if n not in namespace]
    if missing:
        raise ConfigError(f"{path}: parameters {missing} are not defined; run the parameters cell first")
    params = {n: namespace[n] for n in names}
    params["profile"] = profile()
    return params


def show_setup(params: dict, *, data=None, splits=None, seeds=None, synthetic=None) -> _Markdown:
    """What a chapter shows at its top: parameters, data, splits, seeds, profile and code version.

    `data`: a description (str, dict, or an object with `.describe()`); `splits`: {split: description};
    `synthetic`: a reason string (or True) when the chapter runs on synthetic data, shown as a danger
    admonition. Returns Markdown the notebook displays; the box carries the class `tprune-chapter`, which is
    how the site check recognizes a chapter page.
    """
    parts = []
    if synthetic:
        reason = synthetic if isinstance(synthetic, str) else "no real audio was found"
        parts.append(":::{admonition} Synthetic data\n:class: danger tprune-synthetic\n"
                     f"This page ran on **synthetic data** ({reason}). Its numbers show that the code runs, "
                     "not anything about real audio. Point `TPRUNE_DATA` at the real datasets and rebuild.\n:::")
    if profile() == "smoke":
        parts.append(":::{admonition} Smoke profile\n:class: warning tprune-smoke\n"
                     "Built with `PROFILE=smoke`: tiny settings that check the book runs end to end. "
                     "The numbers are not results; build with the default profile for those.\n:::")
    body = [_table(("Parameter", "Value"), [(f"`{k}`", _cell_text(v)) for k, v in params.items()])]
    if data is not None:
        if hasattr(data, "describe") and callable(data.describe):
            data = data.describe()
        body.append("**Data**\n\n" + _describe(data))
    if splits is not None:
        body.append("**Splits**\n\n" + _describe(splits))
    if seeds is not None:
        seeds = list(seeds) if isinstance(seeds, (list, tuple, range)) else [seeds]
        body.append("**Seeds**: " + ", ".join(str(s) for s in seeds))
    body.append(f"**Profile** `{profile()}` · **code** `{results.code_version()}`")
    parts.append("::::{admonition} Setup of this run\n:class: note tprune-setup tprune-chapter\n"
                 + "\n\n".join(body) + "\n::::")
    return _Markdown("\n\n".join(parts))


def _describe(value) -> str:
    if isinstance(value, dict):
        return "\n".join(f"- **{k}**: {_describe_inline(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "\n".join(f"- {_describe_inline(v)}" for v in value)
    return str(value)


def _describe_inline(value) -> str:
    if isinstance(value, (dict, list, tuple)):
        return _cell_text(value)
    return str(value).replace("\n", " ")


# --------------------------------------------------------------------------------------------- findings

def save_findings(chapter: str, rows, params: dict, root=None) -> Path:
    """Store a chapter's verdicts for the landing page. `rows`: dicts (or a DataFrame) with `claim`,
    `verdict` (one of VERDICTS), `evidence` (the numbers that decide it) and optionally `where` (the figure or
    table in the chapter that shows it)."""
    import pandas as pd

    table = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if table.empty:
        raise ConfigError(f"findings of {chapter}: no rows")
    if "where" not in table.columns:
        table["where"] = ""
    missing = [c for c in FINDING_COLUMNS if c not in table.columns]
    extra = [c for c in table.columns if c not in FINDING_COLUMNS]
    if missing or extra:
        raise ConfigError(f"findings of {chapter}: columns must be {list(FINDING_COLUMNS)}; "
                          f"missing {missing}, unexpected {extra}")
    table = table[list(FINDING_COLUMNS)].fillna("").astype(str)
    bad = sorted(set(table["verdict"]) - set(VERDICTS))
    if bad:
        raise ConfigError(f"findings of {chapter}: verdict {bad} not in {list(VERDICTS)}")
    empty = table.index[(table["claim"].str.strip() == "") | (table["evidence"].str.strip() == "")].tolist()
    if empty:
        raise ConfigError(f"findings of {chapter}: rows {empty} have an empty claim or evidence")
    return results.save_table(chapter, FINDINGS, table, params, root=root)


def collect_findings(root=None) -> list[dict]:
    """Every stored findings row (checksums verified), with its chapter and how it was made."""
    rows = []
    for meta in results.list_results(root):
        if meta.get("name") != FINDINGS:
            continue
        table = results.load_table(meta["chapter"], FINDINGS, None, root=root)
        made = table.attrs["meta"]
        for rec in table.to_dict("records"):
            rows.append({"chapter": meta["chapter"], **{c: rec[c] for c in FINDING_COLUMNS},
                         "profile": made.get("profile", ""), "saved_at": made.get("saved_at", ""),
                         "code_version": made.get("code_version", "")})
    return rows


def findings_digest(root=None) -> str:
    """Changes whenever any stored findings (or their sidecars) change."""
    h = hashlib.sha256()
    for meta in results.list_results(root):
        if meta.get("name") == FINDINGS:
            h.update(Path(meta["meta_path"]).read_bytes())
    return h.hexdigest()


def findings_markdown(root=None, titles: dict | None = None) -> str:
    """The findings table as Markdown (the Sphinx directive builds the same table as docutils nodes)."""
    rows = collect_findings(root)
    if not rows:
        return "No findings yet. " + NO_FINDINGS
    titles = titles or {}
    lines = ["| Chapter | Claim | Verdict | Evidence | Run |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        cells = [titles.get(r["chapter"], r["chapter"]), r["claim"], f"**{r['verdict']}**",
                 r["evidence"] + (f" ({r['where']})" if r["where"] else ""), _run_label(r)]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


NO_FINDINGS = ("No chapter has stored its verdicts in results/ yet. "
               "Rows appear here when a written chapter is built.")


def _run_label(row: dict) -> str:
    return f"{row['profile']} · {row['saved_at'][:10]} · {row['code_version']}"


# --------------------------------------------------------------------------------------------- reruns

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


_TARGET = re.compile(r"^\(([^()\s]+)\)=\s*$", re.M)
_NAME_OPT = re.compile(r"^(\s*:(?:name|label):\s*)(\S+)\s*$", re.M)
_ROLE = re.compile(r"\{(ref|numref|eq)\}`([^`<]*<)?([^`<>]+)(>?)`")


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
    rows = [(f"`{k}`", _cell_text(v)) for k, v in params.items()] or [("(none)", "default parameters")]
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (":::{admonition} Rerun with changed parameters\n:class: tip tprune-rerun\n"
            f"This is [{title}](../{chapter}.md) executed by `tprune run` on {now} with profile "
            f"`{profile_name}`, code `{results.code_version()}`, and these parameters changed:\n\n"
            + _table(("Parameter", "Value"), rows)
            + f"\n\nIts result tables are kept in `{results_dir}`, apart from the published `results/`.\n:::")


@contextmanager
def _environ(**values):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update({k: str(v) for k, v in values.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_chapter(chapter: str, params: dict, *, root=None, tag: str | None = None, profile_name: str | None = None,
                timeout: int = CELL_TIMEOUT, progress: bool = True) -> Path:
    """Execute a chapter with changed parameters into `book/reruns/<chapter>-<tag or hash>.ipynb` and refresh
    the Reruns listing. The default chapter, its cache and `results/` are not touched."""
    import nbformat
    import papermill

    root = _root(root)
    source = chapter_source(chapter, root)
    slug = source.stem
    notebook = read_chapter(source)
    names = parameter_names(notebook, source)
    if "profile" in params:
        raise ConfigError("-p profile: the profile is not a chapter parameter; use --profile full|smoke")
    unknown = [n for n in params if n not in names]
    if unknown:
        raise ConfigError(f"{source}: no parameter {unknown} in its parameters cell; it has {names}")
    profile_name = profile_name or profile()
    if profile_name not in results.PROFILES:
        raise ConfigError(f"--profile {profile_name!r}: expected one of {', '.join(results.PROFILES)}")
    params = results.canonical_params(params)
    params = {n: params[n] for n in names if n in params}  # the chapter's order
    name = f"{slug}-{rerun_label(params, tag, profile_name)}"
    reruns = root / RERUNS_DIR
    reruns.mkdir(parents=True, exist_ok=True)
    results_dir = reruns / f"{name}.results"

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
    kernel = notebook.metadata.get("kernelspec", {}).get("name", "python3")

    with tempfile.TemporaryDirectory(prefix="tprune-run-") as tmp:
        src_nb, out_nb = Path(tmp) / f"{name}.input.ipynb", Path(tmp) / f"{name}.ipynb"
        nbformat.write(notebook, src_nb)
        # the rerun writes its tables beside it and may read published ones made with the same parameters
        with _environ(TPRUNE_PROFILE=profile_name):
            published = results.default_root(base=root)
        env = {"TPRUNE_PROFILE": profile_name, "TPRUNE_RESULTS": results_dir, "TPRUNE_RESULTS_FALLBACK": published}
        try:
            with _environ(**env):
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
    sync_reruns(root)
    return target


def _title_of(notebook) -> str | None:
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
            return None
    return None


def list_reruns(root=None) -> list[dict]:
    """The executed reruns in book/reruns (newest first), each with its metadata and docname."""
    import nbformat

    found = []
    for path in sorted((_root(root) / RERUNS_DIR).glob("*.ipynb")):
        try:
            meta = nbformat.read(path, as_version=4).metadata.get("tprune_rerun")
        except Exception as exc:
            raise ConfigError(f"{path}: unreadable rerun notebook ({exc}); delete it") from None
        if not meta:
            raise ConfigError(f"{path}: not made by `tprune run` (no tprune_rerun metadata); delete or move it")
        found.append({**meta, "name": path.stem, "docname": f"{RERUNS_DIR}/{path.stem}"})
    return sorted(found, key=lambda r: r["executed_at"], reverse=True)


def reruns_listing(reruns: list[dict]) -> str:
    """The Markdown of book/reruns/index.md."""
    lines = ["# Reruns", "",
             "Chapters executed with changed parameters by `tprune run CHAPTER -p NAME VALUE [--tag LABEL]`. "
             "Each is published as it ran; the default chapters and `results/` are not affected. "
             "Delete a file in `book/reruns/` and rebuild to remove it.", "",
             "| Rerun | Chapter | Parameters | Profile | Executed |", "| --- | --- | --- | --- | --- |"]
    for r in reruns:
        params = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in r["params"].items()) or "defaults"
        params = params.replace("|", "\\|")
        when = r["executed_at"][:16].replace("T", " ")
        lines.append(f"| [{r['label']}]({r['name']}.ipynb) | [{r['title']}](../{r['chapter']}.md) | "
                     f"{params} | `{r['profile']}` | {when} |")
    return "\n".join(lines) + "\n"


def _write_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True


def sync_reruns(root=None) -> tuple[Path, bool]:
    """Write book/reruns/index.md and book/reruns/_toc.yml (= _toc.yml + a "Reruns" part when there are
    reruns). Returns the generated toc and whether it changed. Files are rewritten only when their text
    changes, so an unchanged book stays unchanged for Sphinx."""
    import yaml

    root = _root(root)
    toc_path = root / TOC_NAME
    try:
        toc = yaml.safe_load(toc_path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{toc_path}: unreadable table of contents ({exc})") from None
    if not isinstance(toc, dict) or "root" not in toc:
        raise ConfigError(f"{toc_path}: expected a jb-book table of contents with a 'root' entry")
    reruns = list_reruns(root)
    index = root / RERUNS_DIR / "index.md"
    if reruns:
        _write_if_changed(index, reruns_listing(reruns))
        if "parts" not in toc:
            toc["parts"] = [{"chapters": toc.pop("chapters", [])}]
        toc["parts"].append({"caption": "Reruns", "chapters": [{
            "file": f"{RERUNS_DIR}/index",
            "sections": [{"file": r["docname"]} for r in reruns]}]})
    elif index.exists():
        index.unlink()
    text = ("# GENERATED by tprune_core.book.sync_reruns from _toc.yml and book/reruns/: edit _toc.yml instead.\n"
            + yaml.safe_dump(toc, sort_keys=False))
    out = root / GENERATED_TOC
    return out, _write_if_changed(out, text)


# --------------------------------------------------------------------------------------------- build

def output_dir(root, profile_name: str) -> Path:
    """Where jupyter-book writes a profile's build (`<it>/_build/html`, `<it>/_build/.jupyter_cache`)."""
    root = _root(root)
    return root if profile_name == "full" else root / "_build" / profile_name


def _package_fingerprint() -> str:
    h = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.rglob("*.py")):
        h.update(path.as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def build(root=None, profile_name: str | None = None, extra_args=(), reexecute: bool = False) -> Path:
    """`tprune book`: sync the Reruns part, then build the book with jupyter-book under -W. Returns the html
    folder, also recorded in _build/last-build.json for the site check. `reexecute` drops the profile's
    execution cache first (jupyter-cache keys notebooks on their code cells, so a change in tprune_core alone
    does not re-run a chapter)."""
    root = _root(root)
    profile_name = profile_name or profile()
    if profile_name not in results.PROFILES:
        raise ConfigError(f"profile {profile_name!r}: expected one of {', '.join(results.PROFILES)}")
    toc, _ = sync_reruns(root)
    out = output_dir(root, profile_name)
    html = out / "_build" / "html"
    marker = root / LAST_BUILD
    marker.unlink(missing_ok=True)  # a failed build must not leave an older one to be checked
    # Sphinx rewrites only changed pages, so after a toc change the sidebars of the other pages would be
    # stale: re-read everything then (executed notebooks come from the cache, nothing is re-executed).
    stamp = out / "_build" / ".tprune-toc.sha256"
    toc_hash = hashlib.sha256(toc.read_bytes()).hexdigest()
    reread = reexecute or not stamp.is_file() or stamp.read_text().strip() != toc_hash
    code_stamp = out / "_build" / ".tprune-code.sha256"
    code = _package_fingerprint()
    if code_stamp.is_file() and code_stamp.read_text().strip() != code and not reexecute:
        # jupyter-cache keys notebooks on their code cells only: a cached page made by older package code
        # would be stale, so a package change re-executes every chapter (stored result tables still apply).
        print("tprune book: tprune_core changed since the last build: re-executing every chapter", flush=True)
        reexecute = True
    if reexecute:
        shutil.rmtree(out / "_build" / ".jupyter_cache", ignore_errors=True)
        reread = True
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(root), "--path-output", str(out),
           "--toc", str(toc.relative_to(root)), "-W", "--keep-going", *(["--all"] if reread else []),
           *extra_args]
    with _environ(TPRUNE_PROFILE=profile_name):  # chapters and the findings table use the same store
        env = dict(os.environ, TPRUNE_RESULTS=str(results.default_root(base=root)))
    print(f"tprune book: profile {profile_name} -> {html}", flush=True)
    start = time.monotonic()
    done = subprocess.run(cmd, cwd=root, env=env)
    if done.returncode != 0:
        raise TpruneError(f"jupyter-book build failed (exit {done.returncode}); see the messages above")
    stamp.write_text(toc_hash + "\n")
    code_stamp.write_text(code + "\n")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"html": str(html), "profile": profile_name, "seconds": round(
        time.monotonic() - start, 1), "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat()}, indent=2) + "\n")
    print(f"tprune book: built in {time.monotonic() - start:.0f} s: {html / 'index.html'}", flush=True)
    return html


# --------------------------------------------------------------------------------------------- Sphinx extension

try:  # docutils comes with the `book` extra; without it this module still serves the chapters' helpers
    from docutils import nodes as _nodes

    class findings_placeholder(_nodes.General, _nodes.Element):
        """Where the findings table goes; replaced at write time (pickled with the doctree, so module level)."""
except ImportError:  # pragma: no cover
    findings_placeholder = None


def setup(app):
    """Sphinx extension: the `{tprune-findings}` directive for the landing page."""
    from docutils import nodes
    from sphinx.util import logging as sphinx_logging
    from sphinx.util.docutils import SphinxDirective

    log = sphinx_logging.getLogger(__name__)

    class FindingsDirective(SphinxDirective):
        has_content = False

        def run(self):
            docs = getattr(self.env, "tprune_findings_docs", set())
            docs.add(self.env.docname)
            self.env.tprune_findings_docs = docs
            return [findings_placeholder()]

    def purge(app, env, docname):
        getattr(env, "tprune_findings_docs", set()).discard(docname)

    def merge(app, env, docnames, other):
        env.tprune_findings_docs = getattr(env, "tprune_findings_docs", set()) | (
            getattr(other, "tprune_findings_docs", set()) & set(docnames))

    def updated(app, env):
        # Chapters write results/ while they execute during reading, so the table is filled at write time;
        # here the pages showing it are marked for rewriting whenever the stored findings changed.
        digest = findings_digest()
        if getattr(env, "tprune_findings_digest", None) == digest:
            return []
        env.tprune_findings_digest = digest
        return sorted(getattr(env, "tprune_findings_docs", set()))

    def resolve(app, doctree, docname):
        for node in list(doctree.findall(findings_placeholder)):
            try:
                rows = collect_findings()
            except TpruneError as exc:
                log.warning(f"findings table: {exc}", location=docname)
                node.replace_self(nodes.paragraph(text=f"Findings could not be read: {exc}"))
                continue
            node.replace_self(_findings_nodes(app, docname, rows))

    app.add_node(findings_placeholder)
    app.connect("html-page-context", _dedupe_scripts)
    app.add_directive("tprune-findings", FindingsDirective)
    app.connect("env-purge-doc", purge)
    app.connect("env-merge-info", merge)
    app.connect("env-updated", updated)
    app.connect("doctree-resolved", resolve)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True, "env_version": 1}


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    """Work around Sphinx 7.4 listing an inline script twice when an extension adds it after the builder
    started (once with filename None, once with ''): sphinx-thebe's `const THEBE_JS_URL` then throws a
    SyntaxError on every page, which the site check (rightly) reports."""
    scripts = context.get("script_files")
    if not isinstance(scripts, list):
        return
    seen, unique = set(), []
    for js in scripts:
        attrs = getattr(js, "attributes", {}) or {}
        key = (str(getattr(js, "filename", js) or ""), getattr(js, "priority", 0), tuple(sorted(attrs.items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    scripts[:] = unique


def _findings_nodes(app, docname: str, rows: list[dict]):
    from docutils import nodes

    if not rows:
        box = nodes.admonition(classes=["note", "tprune-no-findings"])
        box += nodes.title(text="No findings yet")
        box += nodes.paragraph(text=NO_FINDINGS)
        return box
    env = app.env
    headers = ["Chapter", "Claim", "Verdict", "Evidence", "Run"]
    table = nodes.table(classes=["tprune-findings"])
    group = nodes.tgroup(cols=len(headers))
    table += group
    for width in (14, 30, 10, 34, 12):
        group += nodes.colspec(colwidth=width)

    def row_of(cells):
        row = nodes.row()
        for cell in cells:
            entry = nodes.entry()
            entry += cell if isinstance(cell, nodes.Element) else nodes.paragraph(text=str(cell))
            row += entry
        return row

    head = nodes.thead()
    head += row_of(headers)
    group += head
    body = nodes.tbody()
    for r in rows:
        target = f"{BOOK_DIR}/{r['chapter']}"
        if target in env.all_docs:
            title = env.titles[target].astext() if target in env.titles else r["chapter"]
            para = nodes.paragraph()
            para += nodes.reference("", title, internal=True, refuri=app.builder.get_relative_uri(docname, target))
            chapter = para
        else:
            chapter = r["chapter"]
        verdict = nodes.paragraph()
        verdict += nodes.strong(text=r["verdict"])
        evidence = r["evidence"] + (f" ({r['where']})" if r["where"] else "")
        body += row_of([chapter, r["claim"], verdict, evidence, _run_label(r)])
    group += body
    return table
