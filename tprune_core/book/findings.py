"""The findings table: each chapter's verdict rows, stored in results/ and shown on the landing page.

`save_findings(...)` checks and stores a chapter's rows; `collect_findings()` reads every stored row back (the
Sphinx directive `{tprune-findings}` in `sphinx_ext` renders them); `findings_markdown()` is the same table as
Markdown; `findings_digest()` changes whenever any stored findings change.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..analyses import results
from ..analyses.verdicts import SOURCES, VERDICTS
from ..errors import ConfigError

FINDINGS = "findings"
FINDING_COLUMNS = ("claim", "source", "verdict", "evidence", "where")
NO_FINDINGS = ("No chapter has stored its verdicts in results/ yet. "
               "Rows appear here when a written chapter is built.")


def save_findings(chapter: str, rows, params: dict, root=None, checkpoints=None, machine=None) -> Path:
    """Store a chapter's verdicts for the landing page. `rows`: dicts (or a DataFrame) with `claim`, `source`
    ("paper": a claim of the paper, "ours": one we added), `verdict` (one of VERDICTS), `evidence` (the numbers
    that decide it) and optionally `where` (the figure or table in the chapter that shows it).
    `tprune_core.analyses.verdicts` builds such rows from per-seed numbers."""
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
    bad = sorted(set(table["source"]) - set(SOURCES))
    if bad:
        raise ConfigError(f"findings of {chapter}: source {bad} not in {list(SOURCES)} "
                          "(a claim of the paper, or one of ours)")
    empty = table.index[(table["claim"].str.strip() == "") | (table["evidence"].str.strip() == "")].tolist()
    if empty:
        raise ConfigError(f"findings of {chapter}: rows {empty} have an empty claim or evidence")
    return results.save_table(chapter, FINDINGS, table, params, root=root, checkpoints=checkpoints, machine=machine)


def collect_findings(root=None) -> list[dict]:
    """Every stored findings row (checksums verified), with its chapter and how it was made."""
    rows = []
    for meta in results.list_results(root):
        if meta.get("name") != FINDINGS:
            continue
        table = results.load_table(meta["chapter"], FINDINGS, None, root=root)
        made = table.attrs["meta"]
        for rec in table.to_dict("records"):
            rec.setdefault("source", "")  # rows stored before the source column existed show none
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
    lines = ["| Chapter | Claim | Source | Verdict | Evidence | Run |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        cells = [titles.get(r["chapter"], r["chapter"]), r["claim"], r["source"], f"**{r['verdict']}**",
                 evidence_text(r), run_label(r)]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def evidence_text(row: dict) -> str:
    """The Evidence cell: the evidence, then where the chapter shows it."""
    return row["evidence"] + (f" ({row['where']})" if row["where"] else "")


def run_label(row: dict) -> str:
    """The Run cell: profile, date and code version of the build that saved the row."""
    return f"{row['profile']} · {row['saved_at'][:10]} · {row['code_version']}"


# The zoo table the introduction shows up front: where the trade-offs chapter stores it.
ZOO_TABLE = ("pruning-tradeoffs", "zoo")
NO_MODELS = "No model table in results/ yet: it appears when the Pruning trade-offs chapter is built."


def model_rows(root=None) -> list[dict]:
    """The unpruned models' test accuracy per family and dataset (mean ± std over seeds), as the trade-offs
    chapter stored it; [] before it ran."""
    try:
        table = results.load_table(*ZOO_TABLE, None, root=root)
    except results.MissingResultError:
        return []
    if "role" in table.columns:
        table = table[table.role == "base"]
    else:
        table = table[table.keep_rate == 1.0]
    rows = []
    for r in table.to_dict("records"):
        rows.append({"family": r["family"], "dataset": r["dataset"], "n_seeds": int(r["n_seeds"]),
                     "test accuracy": f"{100 * r['test_acc_mean']:.1f}% ± {100 * r['test_acc_std']:.1f}",
                     "GMACs per clip": f"{r['test_gmacs']:.2f}", "trained on": r.get("trained_on", "")})
    return rows


def zoo_digest(root=None) -> str:
    """Changes whenever the stored zoo table changes."""
    try:
        meta = results.read_meta(*ZOO_TABLE, root)
    except results.ResultsError:
        return ""
    return meta["sha256"]
