"""Sphinx extension: the `{tprune-findings}` directive that puts the findings table on the landing page.

`_config.yml` lists the extension as `tprune_core.book`, whose `setup` calls `setup` here. Chapters write
results/ while they execute during reading, so the directive leaves a placeholder node that is replaced by the
table at write time; the pages showing it are marked for rewriting whenever the stored findings change.
This module imports Sphinx, so `tprune_core.book` imports it only when Sphinx loads the extension.
"""
from __future__ import annotations

from docutils import nodes
from sphinx.util import logging as sphinx_logging
from sphinx.util.docutils import SphinxDirective

from ..errors import TpruneError
from ._shared import BOOK_DIR
from .findings import (NO_FINDINGS, NO_MODELS, collect_findings, evidence_text, findings_digest, model_rows,
                       run_label, zoo_digest)

log = sphinx_logging.getLogger(__name__)

# One short line per claim; the evidence and the run that made it fold under the claim (a <details> element).
HEADERS = ("Chapter", "Claim", "Source", "Verdict")
COLUMN_WIDTHS = (16, 58, 8, 18)
# Verdict colours: green / red / amber / grey, readable as text too (the word is always shown).
VERDICT_COLORS = {"reproduced": "#1b7837", "contradicted": "#b2182b", "inconclusive": "#b35806",
                  "not testable here": "#5a5a5a"}


class findings_placeholder(nodes.General, nodes.Element):
    """Where the findings table goes; replaced at write time (pickled with the doctree, so module level)."""


class models_placeholder(nodes.General, nodes.Element):
    """Where the table of the zoo's unpruned models goes; replaced at write time, like the findings table."""


class FindingsDirective(SphinxDirective):
    """`{tprune-findings}`: records the page as one that shows the table and leaves a placeholder there."""

    has_content = False
    placeholder = findings_placeholder

    def run(self):
        docs = getattr(self.env, "tprune_findings_docs", set())
        docs.add(self.env.docname)
        self.env.tprune_findings_docs = docs
        return [self.placeholder()]


class ModelsDirective(FindingsDirective):
    """`{tprune-models}`: the zoo's unpruned test accuracies as the trade-offs chapter stored them."""

    placeholder = models_placeholder


def purge(app, env, docname):
    getattr(env, "tprune_findings_docs", set()).discard(docname)


def merge(app, env, docnames, other):
    env.tprune_findings_docs = getattr(env, "tprune_findings_docs", set()) | (
        getattr(other, "tprune_findings_docs", set()) & set(docnames))


def updated(app, env):
    """The pages showing the table, when the stored findings changed since the last build."""
    # Chapters write results/ while they execute during reading, so the table is filled at write time;
    # here the pages showing it are marked for rewriting whenever the stored findings changed.
    digest = findings_digest() + zoo_digest()
    if getattr(env, "tprune_findings_digest", None) == digest:
        return []
    env.tprune_findings_digest = digest
    return sorted(getattr(env, "tprune_findings_docs", set()))


def resolve(app, doctree, docname):
    """Replace each placeholder by the findings table (or by a warning paragraph when they cannot be read)."""
    for node in list(doctree.findall(findings_placeholder)):
        try:
            rows = collect_findings()
        except TpruneError as exc:
            log.warning(f"findings table: {exc}", location=docname)
            node.replace_self(nodes.paragraph(text=f"Findings could not be read: {exc}"))
            continue
        node.replace_self(findings_nodes(app, docname, rows))
    for node in list(doctree.findall(models_placeholder)):
        try:
            node.replace_self(models_nodes(model_rows()))
        except TpruneError as exc:
            log.warning(f"models table: {exc}", location=docname)
            node.replace_self(nodes.paragraph(text=f"The model table could not be read: {exc}"))


def dedupe_scripts(app, pagename, templatename, context, doctree):
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


def _row(cells):
    row = nodes.row()
    for cell in cells:
        entry = nodes.entry()
        entry += cell if isinstance(cell, nodes.Element) else nodes.paragraph(text=str(cell))
        row += entry
    return row


def _chapter_cell(app, docname: str, chapter: str):
    """A link to the chapter's page (titled as the page) when it is part of this build, else its name."""
    env = app.env
    target = f"{BOOK_DIR}/{chapter}"
    if target not in env.all_docs:
        return chapter
    title = env.titles[target].astext() if target in env.titles else chapter
    para = nodes.paragraph()
    para += nodes.reference("", title, internal=True, refuri=app.builder.get_relative_uri(docname, target))
    return para


def findings_nodes(app, docname: str, rows: list[dict]):
    """The findings table as docutils nodes (a note when there are no rows yet)."""
    if not rows:
        box = nodes.admonition(classes=["note", "tprune-no-findings"])
        box += nodes.title(text="No findings yet")
        box += nodes.paragraph(text=NO_FINDINGS)
        return box
    table = nodes.table(classes=["tprune-findings"])
    group = nodes.tgroup(cols=len(HEADERS))
    table += group
    for width in COLUMN_WIDTHS:
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    head += _row(HEADERS)
    group += head
    body = nodes.tbody()
    for r in rows:
        body += _row([_chapter_cell(app, docname, r["chapter"]), _claim_cell(r), r["source"], _verdict_cell(r)])
    group += body
    return table


def _claim_cell(row: dict):
    """The claim, with its evidence and the run that made it folded below (HTML builders; plain text elsewhere)."""
    import html
    cell = nodes.container(classes=["tprune-claim"])
    cell += nodes.paragraph(text=row["claim"])
    folded = (f'<details class="tprune-evidence"><summary>evidence</summary><p>{html.escape(evidence_text(row))}'
              f'</p><p><small>{html.escape(run_label(row))}</small></p></details>')
    cell += nodes.raw("", folded, format="html")
    return cell


def _verdict_cell(row: dict):
    import html
    color = VERDICT_COLORS.get(row["verdict"], "#5a5a5a")
    badge = (f'<span class="tprune-verdict" style="background:{color};color:#fff;padding:0.1em 0.5em;'
             f'border-radius:0.6em;white-space:nowrap;font-weight:600">{html.escape(row["verdict"])}</span>')
    cell = nodes.container()
    cell += nodes.raw("", badge, format="html")
    return cell


def models_nodes(rows: list[dict]):
    """The unpruned models' accuracies as a docutils table (a note before the trade-offs chapter ran)."""
    if not rows:
        return nodes.paragraph(text=NO_MODELS)
    headers = list(rows[0])
    table = nodes.table(classes=["tprune-models"])
    group = nodes.tgroup(cols=len(headers))
    table += group
    for _ in headers:
        group += nodes.colspec(colwidth=10)
    head = nodes.thead()
    head += _row(headers)
    group += head
    body = nodes.tbody()
    for r in rows:
        body += _row([r[h] for h in headers])
    group += body
    return table


def setup(app):
    """Register the `{tprune-findings}` directive, its node and the event handlers that fill it."""
    app.add_node(findings_placeholder)
    app.add_node(models_placeholder)
    app.add_directive("tprune-models", ModelsDirective)
    app.connect("html-page-context", dedupe_scripts)
    app.add_directive("tprune-findings", FindingsDirective)
    app.connect("env-purge-doc", purge)
    app.connect("env-merge-info", merge)
    app.connect("env-updated", updated)
    app.connect("doctree-resolved", resolve)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True, "env_version": 1}
