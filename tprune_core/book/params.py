"""What a chapter shows at its top: the build profile, the chapter's parameters and the setup box.

- `profile()`: `full` or `smoke` (env TPRUNE_PROFILE); chapters pick their sizes from it.
- `chapter_params(chapter, globals())`: the values of the names the chapter's `parameters` cell assigns.
- `show_setup(...)`: parameters, data, splits and seeds rendered as a box, with a visible admonition when the
  data is synthetic or the profile is `smoke`.
"""
from __future__ import annotations

import ast
from pathlib import Path

from ..analyses import results
from ..errors import ConfigError
from ._shared import BOOK_DIR, Markdown, book_root, cell_text, two_column_table


def profile() -> str:
    """The build profile: `full` (default) or `smoke` (tiny settings), from env TPRUNE_PROFILE."""
    return results.current_profile()


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
    root = book_root(root)
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


def show_setup(params: dict, *, data=None, splits=None, seeds=None, synthetic=None, hardware=None) -> Markdown:
    """What a chapter shows at its top: parameters, data, splits, seeds, profile and code version.

    `data`: a description (str, dict, or an object with `.describe()`); `splits`: {split: description};
    `synthetic`: a reason string (or True) when the chapter runs on synthetic data, shown as a danger
    admonition; `hardware`: {what: description}, e.g. ``zoo.hardware_summary(...)`` (numbers depend on it). Returns Markdown the notebook displays; the box carries the class `tprune-chapter`, which is
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
    body = [two_column_table(("Parameter", "Value"), [(f"`{k}`", cell_text(v)) for k, v in params.items()])]
    if data is not None:
        if hasattr(data, "describe") and callable(data.describe):
            data = data.describe()
        body.append("**Data**\n\n" + _describe(data))
    if splits is not None:
        body.append("**Splits**\n\n" + _describe(splits))
    if hardware is not None:
        body.append("**Hardware**\n\n" + _describe(hardware))
    if seeds is not None:
        seeds = list(seeds) if isinstance(seeds, (list, tuple, range)) else [seeds]
        body.append("**Seeds**: " + ", ".join(str(s) for s in seeds))
    body.append(f"**Profile** `{profile()}` · **code** `{results.code_version()}`")
    parts.append("::::{admonition} Setup of this run\n:class: note tprune-setup tprune-chapter\n"
                 + "\n\n".join(body) + "\n::::")
    return Markdown("\n\n".join(parts))


def protocol_notes(entries) -> dict:
    """{dataset: how its splits are made} for the datasets of some zoo entries (first entry of each)."""
    from ..data.datasets import describe_protocol
    notes = {}
    for e in entries:
        if e.get("role") != "mae" and e["dataset"] not in notes:
            notes[e["dataset"]] = describe_protocol(e["dataset"], e.get("protocol"))
    return notes


def _describe(value) -> str:
    if isinstance(value, dict):
        return "\n".join(f"- **{k}**: {_describe_inline(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "\n".join(f"- {_describe_inline(v)}" for v in value)
    return str(value)


def _describe_inline(value) -> str:
    if isinstance(value, (dict, list, tuple)):
        return cell_text(value)
    return str(value).replace("\n", " ")
