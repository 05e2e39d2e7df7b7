"""The book's machinery. Chapters, the command line and the tests use the names re-exported here
(`from tprune_core import book; book.profile()`); each concern lives in its own module:

- `params`: `profile()`, `chapter_params(chapter, globals())` and `show_setup(...)`, what a chapter shows at its
  top (a visible admonition when the data is synthetic or the profile is `smoke`).
- `findings`: `save_findings(...)`, a chapter's verdict rows stored in results/, and the table built from them.
- `reruns`: `run_chapter(...)`, `tprune run`: a chapter executed by papermill with changed parameters into
  `book/reruns/`, without touching the default chapter.
- `listing`: `sync_reruns()`, the generated "Reruns" part (`book/reruns/index.md`, `book/reruns/_toc.yml`).
- `builder`: `build(...)`, `tprune book`: syncs the Reruns part and runs `jupyter-book build -W` with one output
  folder (and so one execution cache) per profile, because jupyter-cache keys notebooks on their code only.
- `sphinx_ext`: the `{tprune-findings}` directive of the landing page. `_config.yml` lists this package,
  `tprune_core.book`, as the Sphinx extension; `setup(app)` below hands over to `sphinx_ext.setup`.

Importing this package must stay cheap (chapters and Sphinx import it): no torch, no pandas, no Sphinx at module
level; `sphinx_ext` is imported only when Sphinx calls `setup` (or one of its names is asked for).
"""
from __future__ import annotations

from ._shared import BOOK_DIR
from .builder import LAST_BUILD, build, output_dir
from .findings import (FINDING_COLUMNS, FINDINGS, NO_FINDINGS, VERDICTS, collect_findings, findings_digest,
                       findings_markdown, save_findings)
from .listing import GENERATED_TOC, RERUNS_DIR, TOC_NAME, list_reruns, reruns_listing, sync_reruns
from .params import (chapter_params, chapter_source, parameter_names, profile, protocol_notes, read_chapter,
                     show_setup)
from .reruns import CELL_TIMEOUT, parse_value, rerun_label, run_chapter

_SPHINX_NAMES = ("findings_placeholder", "FindingsDirective", "models_placeholder", "ModelsDirective")

__all__ = [
    "BOOK_DIR", "CELL_TIMEOUT", "FINDINGS", "FINDING_COLUMNS", "GENERATED_TOC", "LAST_BUILD", "NO_FINDINGS",
    "RERUNS_DIR", "TOC_NAME", "VERDICTS", "build", "chapter_params", "chapter_source", "collect_findings",
    "findings_digest", "findings_markdown", "list_reruns", "output_dir", "parameter_names", "parse_value",
    "profile", "protocol_notes", "read_chapter", "rerun_label", "reruns_listing", "run_chapter", "save_findings", "setup",
    "show_setup", "sync_reruns",
]


def setup(app):
    """Sphinx extension entry point (`tprune_core.book` in `_config.yml`): see `sphinx_ext.setup`."""
    from . import sphinx_ext

    return sphinx_ext.setup(app)


def __getattr__(name):
    # The placeholder node used to live at `tprune_core.book.findings_placeholder`: pickled doctrees of older
    # builds name it there. Resolved lazily so that importing the package does not import Sphinx.
    if name in _SPHINX_NAMES:
        from . import sphinx_ext

        return getattr(sphinx_ext, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
