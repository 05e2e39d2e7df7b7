import argparse
import hashlib
import importlib
import importlib.util
import json
import pickle
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

from tprune_core import book, results, rules
from tprune_core.cli import book as book_cli
from tprune_core.errors import ConfigError, TpruneError

REPO = Path(__file__).resolve().parent.parent


def _load_site_check():
    spec = importlib.util.spec_from_file_location("site_check", REPO / "tools" / "site_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


site_check = _load_site_check()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("TPRUNE_RESULTS", "TPRUNE_PROFILE", "TPRUNE_RESULTS_FALLBACK"):
        monkeypatch.delenv(name, raising=False)


HEADER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---
"""

TINY = HEADER + """
# Tiny chapter

See {ref}`tiny-fig` and {ref}`the table <tiny-fig>` and {ref}`elsewhere`.

(tiny-fig)=
## Squares

```{code-cell} ipython3
:tags: [parameters]

n = 2
label = "two"
```

```{code-cell} ipython3
import os
import pandas as pd
from tprune_core import results

print("n squared:", n * n, label)
print("reads also", os.environ.get("TPRUNE_RESULTS_FALLBACK"))
results.save_table("tiny", "squares", pd.DataFrame({"n": [n], "sq": [n * n]}), {"n": n})
```

```{code-cell} ipython3
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(3, 2))
ax.plot(range(n + 1), [i * i for i in range(n + 1)])
ax.set(xlabel="n", ylabel="n squared")
plt.show()
```
"""


def _make_root(tmp_path: Path, chapter: str = TINY) -> Path:
    (tmp_path / "book").mkdir(parents=True)
    (tmp_path / "book" / "tiny.md").write_text(chapter)
    (tmp_path / "book" / "intro.md").write_text("(elsewhere)=\n# Intro\n\n```{tprune-findings}\n```\n")
    (tmp_path / "_toc.yml").write_text(yaml.safe_dump({
        "format": "jb-book", "root": "book/intro", "parts": [{"caption": "Chapters", "chapters": [
            {"file": "book/tiny"}]}]}))
    return tmp_path


def _cli(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    book_cli.add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def _outputs(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


# ------------------------------------------------------------------------------------ chapter helpers (book/params.py)

def test_parameter_names_and_chapter_params(tmp_path, monkeypatch):
    root = _make_root(tmp_path)
    nb = jupytext.read(root / "book" / "tiny.md")
    assert book.parameter_names(nb) == ["n", "label"]
    params = book.chapter_params("tiny", {"n": 5, "label": "five", "other": 1}, root=root)
    assert params == {"n": 5, "label": "five", "profile": "full"}
    with pytest.raises(ConfigError, match="label"):
        book.chapter_params("tiny", {"n": 5}, root=root)
    with pytest.raises(ConfigError, match="nope"):
        book.chapter_source("nope", root=root)
    nb.cells = [c for c in nb.cells if "parameters" not in c.metadata.get("tags", [])]
    with pytest.raises(ConfigError, match="exactly one"):
        book.parameter_names(nb, "x.md")


def test_show_setup_renders_params_data_seeds_and_warnings(monkeypatch):
    text = book.show_setup({"keep_rates": [1.0, 0.5], "pipe": "a|b"}, data="UrbanSound8K folds 1, 10",
                           splits={"train": "fold 1", "test": "fold 10"}, seeds=[0, 1])
    assert text._repr_markdown_() == str(text)
    assert "tprune-chapter" in text and "`[1.0, 0.5]`" in text and "a\\|b" in text
    assert "- **test**: fold 10" in text and "**Seeds**: 0, 1" in text
    assert "tprune-synthetic" not in text and "tprune-smoke" not in text
    monkeypatch.setenv("TPRUNE_PROFILE", "smoke")
    text = book.show_setup({}, synthetic="no folder under TPRUNE_DATA")
    assert "tprune-synthetic" in text and "no folder under TPRUNE_DATA" in text and "tprune-smoke" in text


def test_stub_chapters_have_a_parameters_cell_and_the_stub_marker():
    from tprune_core.book import stored
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    chapters = stored.chapter_names(REPO)
    assert len(chapters) == 5  # every executable chapter reads the profile and renders its setup
    for docname in files:   # the other pages (the lab notebook) are text only: nothing to execute or store
        assert Path(docname).name in chapters or "{code-cell}" not in (REPO / f"{docname}.md").read_text(), docname
    for docname in [f"book/{c}" for c in chapters]:
        path = REPO / f"{docname}.md"
        nb = jupytext.read(path)
        names = book.parameter_names(nb, path)
        assert names and "profile" not in names, path
        source = path.read_text()
        assert "book.show_setup(" in source and f'chapter_params("{path.stem}"' in source, path
        if "tprune-stub" in source:  # stubs must not claim results
            assert "not written yet" in source, path


# ----------------------------------------------------------------------------------------- findings (book/findings.py)

def test_findings_table_is_built_from_results_files(tmp_path):
    assert book.collect_findings(tmp_path) == []
    assert book.findings_markdown(tmp_path).startswith("No findings yet")
    book.save_findings("pruning-tradeoffs", [
        {"claim": "TopK cuts MACs 30-40% for <1 pt", "source": "paper", "verdict": "inconclusive",
         "evidence": "AST: -38% MACs, -0.6 pt",
         "where": "Table 2"}], {"seeds": [0, 1, 2]}, root=tmp_path)
    book.save_findings("speech-vs-general", [
        {"claim": "quiet patches matter more for general audio", "source": "ours", "verdict": "reproduced",
         "evidence": "drop C1-C2: -4.1 pt vs -0.8 pt"}], {"seeds": [0]}, root=tmp_path)
    rows = book.collect_findings(tmp_path)
    assert [(r["chapter"], r["verdict"]) for r in rows] == [("pruning-tradeoffs", "inconclusive"),
                                                            ("speech-vs-general", "reproduced")]
    assert rows[1]["where"] == "" and rows[0]["profile"] == "full" and rows[1]["source"] == "ours"
    md = book.findings_markdown(tmp_path, titles={"pruning-tradeoffs": "Pruning trade-offs"})
    assert "| Chapter | Claim | Source | Verdict |" in md
    assert "| Pruning trade-offs | TopK cuts MACs 30-40% for <1 pt | paper | **inconclusive** |" in md
    assert "drop C1-C2: -4.1 pt vs -0.8 pt" in md
    digest = book.findings_digest(tmp_path)
    book.save_findings("speech-vs-general", [{"claim": "x", "source": "ours", "verdict": "not testable here",
                                              "evidence": "n=3"}],
                       {"seeds": [0]}, root=tmp_path)
    assert book.findings_digest(tmp_path) != digest
    # a findings file edited by hand is refused, not shown
    csv = tmp_path / "speech-vs-general" / "findings.csv"
    csv.write_text(csv.read_text().replace("not testable here", "reproduced"))
    with pytest.raises(results.ResultsError):
        book.collect_findings(tmp_path)


def test_findings_take_the_rows_the_verdict_rules_build(tmp_path):
    from tprune_core import verdicts

    assert book.VERDICTS is verdicts.VERDICTS and "not testable here" in book.VERDICTS
    assert book.FINDING_COLUMNS == ("claim", "source", "verdict", "evidence", "where")
    weak = verdicts.testable({0: 0.34, 1: 0.40, 2: 0.46}, 0.1)
    row = verdicts.better_claim(weak, [(0.02, 0.01, 0.03)], claim="A beats B", source="paper", where="Fig. 1")
    book.save_findings("ch", [row], {}, root=tmp_path)
    [back] = book.collect_findings(tmp_path)
    assert {k: back[k] for k in book.FINDING_COLUMNS} == row and back["verdict"] == "not testable here"


def test_findings_stored_before_the_source_column_still_read(tmp_path):
    import pandas as pd

    old = pd.DataFrame([{"claim": "c", "verdict": "inconclusive", "evidence": "e", "where": ""}])
    results.save_table("ch", book.FINDINGS, old, {}, root=tmp_path)
    [row] = book.collect_findings(tmp_path)
    assert row["source"] == "" and row["verdict"] == "inconclusive"


def test_sphinx_findings_table_has_a_source_column():
    from docutils import nodes
    from tprune_core.book import sphinx_ext

    app = types.SimpleNamespace(env=types.SimpleNamespace(all_docs={}))
    row = {"chapter": "ch", "claim": "c", "source": "ours", "verdict": "inconclusive", "evidence": "e", "where": "",
           "profile": "full", "saved_at": "2024-01-01T00:00", "code_version": "abc"}
    table = sphinx_ext.findings_nodes(app, "book/intro", [row])
    head, body = list(table.findall(nodes.thead))[0], list(table.findall(nodes.tbody))[0]
    assert [e.astext() for e in head.findall(nodes.entry)] == list(sphinx_ext.HEADERS)
    claim, source, verdict = list(body.findall(nodes.entry))[1:4]
    assert claim.children[0].children[0].astext() == "c" and source.astext() == "ours"
    folded = list(claim.findall(nodes.raw))[0].astext()
    assert folded.startswith("<details") and "<summary>evidence</summary>" in folded and "e" in folded
    badge = list(verdict.findall(nodes.raw))[0].astext()
    assert ">inconclusive</span>" in badge and sphinx_ext.VERDICT_COLORS["inconclusive"] in badge
    assert sphinx_ext.HEADERS[2] == "Source" and len(sphinx_ext.COLUMN_WIDTHS) == len(sphinx_ext.HEADERS)


@pytest.mark.parametrize("rows, match", [
    ([{"claim": "c", "source": "paper", "verdict": "true", "evidence": "e"}], "verdict"),
    ([{"claim": "c", "source": "paper", "verdict": "not reproduced", "evidence": "e"}], "verdict"),  # inconclusive now
    ([{"claim": "c", "source": "paper", "verdict": "mixed", "evidence": "e"}], "verdict"),
    ([{"claim": "c", "source": "paper", "verdict": "inconclusive"}], "missing"),
    ([{"claim": "c", "verdict": "inconclusive", "evidence": "e"}], r"missing \['source'\]"),
    ([{"claim": "c", "source": "authors", "verdict": "inconclusive", "evidence": "e"}], "source"),
    ([{"claim": "c", "source": "paper", "verdict": "inconclusive", "evidence": "e", "extra": 1}], "unexpected"),
    ([{"claim": " ", "source": "paper", "verdict": "inconclusive", "evidence": "e"}], "empty"),
    ([], "no rows"),
])
def test_bad_findings_are_refused(tmp_path, rows, match):
    with pytest.raises(ConfigError, match=match):
        book.save_findings("ch", rows, {}, root=tmp_path)


# ---------------------------------------------------------------------------- reruns (book/reruns.py, book/listing.py)

def test_run_command_executes_a_rerun_and_lists_it(tmp_path, capsys):
    root = _make_root(tmp_path)
    source = root / "book" / "tiny.md"
    before = hashlib.sha256(source.read_bytes()).hexdigest()
    assert _cli(["run", "tiny", "-p", "n", "3", "--tag", "three", "--root", str(root)]) == 0
    out = root / "book" / "reruns" / "tiny-three.ipynb"
    assert str(out) in capsys.readouterr().out
    nb = nbformat.read(out, as_version=4)
    assert "n squared: 9 two" in _outputs(nb)  # the changed parameter was used, the other kept its default
    assert f"reads also {root / 'results'}" in _outputs(nb)  # published tables stay readable
    meta = nb.metadata["tprune_rerun"]
    assert meta["params"] == {"n": 3} and meta["chapter"] == "tiny" and meta["profile"] == "full"
    assert nb.cells[0].source.startswith("# Tiny chapter — rerun: three")
    assert "`n`" in nb.cells[0].source and "tprune-rerun" in nb.cells[0].source
    # the chapter's own labels are renamed in the copy (Sphinx labels are global), foreign refs kept
    text = "".join(c.source for c in nb.cells)
    assert "(rerun-tiny-three-tiny-fig)=" in text and "{ref}`rerun-tiny-three-tiny-fig`" in text
    assert "{ref}`the table <rerun-tiny-three-tiny-fig>`" in text and "{ref}`elsewhere`" in text
    # default chapter untouched; the rerun's results went beside it, not into results/
    assert hashlib.sha256(source.read_bytes()).hexdigest() == before
    assert not (root / "results").exists()
    saved = root / "book" / "reruns" / "tiny-three.results"
    assert results.load_table("tiny", "squares", {"n": 3}, root=saved)["sq"].tolist() == [9]
    # listed in the Reruns page and the generated toc
    index = (root / "book" / "reruns" / "index.md").read_text()
    assert "[three](tiny-three.ipynb)" in index and "`n=3`" in index
    toc = yaml.safe_load((root / book.GENERATED_TOC).read_text())
    assert toc["parts"][0] == {"caption": "Chapters", "chapters": [{"file": "book/tiny"}]}
    assert toc["parts"][-1] == {"caption": "Reruns", "chapters": [{
        "file": "book/reruns/index", "sections": [{"file": "book/reruns/tiny-three"}]}]}


def test_run_command_without_tag_uses_a_param_hash(tmp_path):
    root = _make_root(tmp_path)
    _cli(["run", "tiny", "-p", "label", "'x y'", "--root", str(root), "--profile", "smoke"])
    made = list((root / "book" / "reruns").glob("tiny-*.ipynb"))
    assert len(made) == 1
    label = made[0].stem.removeprefix("tiny-")
    assert label == book.rerun_label({"label": "x y"}, None, "smoke") and len(label) == 8
    nb = nbformat.read(made[0], as_version=4)
    assert "n squared: 4 x y" in _outputs(nb) and nb.metadata["tprune_rerun"]["profile"] == "smoke"
    assert book.rerun_label({"label": "x y"}, None, "full") != label


def test_run_command_refuses_bad_requests(tmp_path):
    root = _make_root(tmp_path)
    with pytest.raises(ConfigError, match="no parameter \\['m'\\]"):
        _cli(["run", "tiny", "-p", "m", "3", "--root", str(root)])
    with pytest.raises(ConfigError, match="--profile"):
        _cli(["run", "tiny", "-p", "profile", "smoke", "--root", str(root)])
    with pytest.raises(ConfigError, match="twice"):
        _cli(["run", "tiny", "-p", "n", "3", "-p", "n", "4", "--root", str(root)])
    with pytest.raises(ConfigError, match="--tag"):
        _cli(["run", "tiny", "--tag", "a/b", "--root", str(root)])
    assert not list((root / "book").glob("reruns/*.ipynb"))


def test_a_failing_rerun_is_kept_aside_and_not_listed(tmp_path):
    root = _make_root(tmp_path, TINY.replace('print("n squared:"', 'assert n < 3, "too big"\nprint("n squared:"'))
    with pytest.raises(TpruneError, match="too big") as err:
        _cli(["run", "tiny", "-p", "n", "3", "--tag", "bad", "--root", str(root)])
    assert "failed/tiny-bad.ipynb" in str(err.value)
    assert (root / "book" / "reruns" / "failed" / "tiny-bad.ipynb").exists()
    assert book.list_reruns(root) == []


def test_sync_without_reruns_copies_the_toc(tmp_path):
    root = _make_root(tmp_path)
    toc, changed = book.sync_reruns(root)
    assert changed and yaml.safe_load(toc.read_text()) == yaml.safe_load((root / "_toc.yml").read_text())
    assert book.sync_reruns(root) == (toc, False)  # unchanged: not rewritten
    (root / "book" / "reruns" / "stray.ipynb").write_text(nbformat.writes(nbformat.v4.new_notebook()))
    with pytest.raises(ConfigError, match="stray.ipynb"):
        book.sync_reruns(root)


def test_parse_value():
    assert book.parse_value("[1.0, 0.5]") == [1.0, 0.5]
    assert book.parse_value("3") == 3 and book.parse_value("True") is True and book.parse_value("None") is None
    assert book.parse_value("topk") == "topk" and book.parse_value("'7'") == "7"


def test_profile_choices_come_from_rules():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    book_cli.add_parser(sub)
    for command in ("run", "book"):
        [action] = [a for a in sub.choices[command]._actions if a.dest == "profile"]
        assert tuple(action.choices) == rules.BOOK_PROFILES, command
    assert results.PROFILES == rules.BOOK_PROFILES


def test_importing_the_book_package_stays_cheap():
    # chapters and Sphinx import tprune_core.book; sphinx_ext (and so Sphinx) only loads when Sphinx calls setup
    code = ("import sys, tprune_core.book; heavy = [m for m in ('torch', 'pandas', 'sphinx') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# ------------------------------------------------------------------------------- Sphinx extension (book/sphinx_ext.py)

class _FakeSphinxApp:
    """Records what an extension registers."""

    def __init__(self):
        self.nodes, self.directives, self.handlers = [], {}, {}

    def add_node(self, node, **kwargs):
        self.nodes.append(node)

    def add_directive(self, name, cls):
        self.directives[name] = cls

    def connect(self, event, handler):
        self.handlers.setdefault(event, []).append(handler)


def test_sphinx_extension_setup_registers_the_module_level_directive():
    from tprune_core.book import sphinx_ext

    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert "tprune_core.book" in config["sphinx"]["extra_extensions"]
    for name in config["sphinx"]["extra_extensions"]:  # what Sphinx does with each listed extension
        assert callable(importlib.import_module(name).setup), name
    for setup in (book.setup, sphinx_ext.setup):
        app = _FakeSphinxApp()
        meta = setup(app)
        assert meta["parallel_read_safe"] and meta["parallel_write_safe"] and meta["env_version"] == 1
        assert app.directives == {"tprune-findings": sphinx_ext.FindingsDirective,
                                  "tprune-models": sphinx_ext.ModelsDirective}
        assert app.nodes == [sphinx_ext.findings_placeholder, sphinx_ext.models_placeholder]
        assert set(app.handlers) == {"html-page-context", "env-purge-doc", "env-merge-info", "env-updated",
                                     "doctree-resolved"}
        for handlers in app.handlers.values():  # every handler is a module-level function
            assert [getattr(sphinx_ext, h.__name__) for h in handlers] == handlers
    assert sphinx_ext.FindingsDirective.__qualname__ == "FindingsDirective"
    assert book.FindingsDirective is sphinx_ext.FindingsDirective
    assert book.findings_placeholder is sphinx_ext.findings_placeholder
    node = pickle.loads(pickle.dumps(sphinx_ext.findings_placeholder()))  # doctrees are pickled
    assert type(node) is sphinx_ext.findings_placeholder


def test_sphinx_handlers_track_the_pages_that_show_findings(tmp_path, monkeypatch):
    from tprune_core.book import sphinx_ext

    monkeypatch.setenv("TPRUNE_RESULTS", str(tmp_path))
    env = types.SimpleNamespace(tprune_findings_docs={"book/intro"})
    assert sphinx_ext.updated(None, env) == ["book/intro"]
    assert sphinx_ext.updated(None, env) == []  # findings unchanged: nothing to rewrite
    book.save_findings("ch", [{"claim": "c", "source": "paper", "verdict": "inconclusive", "evidence": "e"}], {},
                       root=tmp_path)
    assert sphinx_ext.updated(None, env) == ["book/intro"]
    sphinx_ext.merge(None, env, ["a"], types.SimpleNamespace(tprune_findings_docs={"a", "b"}))
    assert env.tprune_findings_docs == {"book/intro", "a"}
    sphinx_ext.purge(None, env, "a")
    assert env.tprune_findings_docs == {"book/intro"}
    scripts = ["a.js", "a.js", "b.js"]
    sphinx_ext.dedupe_scripts(None, "page", "page.html", {"script_files": scripts}, None)
    assert scripts == ["a.js", "b.js"]


# ------------------------------------------------------------------------------------------- site check

PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title>
<link rel="stylesheet" href="{up}style.css"></head>
<body><main><article class="bd-article">{body}</article></main></body></html>"""
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360f8cf000000030101005bf5e1ff0000000049454e44ae426082")


def _site(tmp_path: Path) -> Path:
    site = tmp_path / "html"
    (site / "book").mkdir(parents=True)
    (site / "style.css").write_text("body { font-family: sans-serif; }")
    (site / "fig.png").write_bytes(PNG)
    pages = {
        "good.html": ("Good — Book", "<h1>Good</h1><p>text</p>"),
        "book/chapter.html": ("Chapter — Book", '<h1>Chapter</h1><div class="tprune-chapter">setup</div>'
                                                '<img src="../fig.png" alt="figure">'),
        "book/stub.html": ("Stub — Book", '<h1>Stub</h1><div class="tprune-stub"></div>'
                                          '<div class="tprune-chapter">setup</div>'),
        "missing-image.html": ("Missing — Book", '<h1>Missing</h1><img src="gone.png" alt="x">'),
        "no-title.html": ("", "<p>no heading here</p>"),
        "wrong-title.html": ("Something else", "<h1>Real heading</h1>"),
        "book/nofigure.html": ("Nofigure — Book", '<h1>Nofigure</h1><div class="tprune-chapter">setup</div>'),
        "book/cells.html": ("Cells — Book", '<h1>Cells</h1><div class="cell docutils container">'
                                            '<div class="cell_input">x = 1</div></div>'),
        "book/error.html": ("Error — Book", '<h1>Error</h1><div class="cell_output docutils container">'
                                            '<div class="output traceback highlight-ipythontb notranslate">'
                                            'ValueError: boom</div></div>'),
    }
    for name, (title, body) in pages.items():
        up = "../" * name.count("/")
        (site / name).write_text(PAGE.format(title=title, body=body, up=up))
    (site / "index.html").write_text('<meta http-equiv="Refresh" content="0; url=good.html" />')
    return site


EXPECTED_FAILURES = {
    "missing-image.html": "gone.png",
    "no-title.html": "no title",
    "wrong-title.html": "does not carry the page heading",
    "book/nofigure.html": "without a figure",
    "book/cells.html": "without a figure",  # notebook cells make it a chapter even without the setup box
    "book/error.html": "ValueError: boom",
}


def _assert_report(report):
    assert set(report) == {"good.html", "index.html", "missing-image.html", "no-title.html", "wrong-title.html",
                           "book/chapter.html", "book/stub.html", "book/nofigure.html", "book/error.html",
                           "book/cells.html"}
    failing = {page for page, problems in report.items() if problems}
    assert failing == set(EXPECTED_FAILURES), report
    for page, needle in EXPECTED_FAILURES.items():
        assert any(needle in p for p in report[page]), (page, report[page])


def test_site_check_static_mode_catches_missing_image_and_title(tmp_path):
    report = site_check.check_site(_site(tmp_path), browser=False, log=lambda *_: None)
    _assert_report(report)
    assert "no heading" in " ".join(report["no-title.html"])


def test_site_check_in_chromium_catches_missing_image_and_title_and_screenshots(tmp_path):
    chromium = site_check.ensure_chromium()  # installs Debian's chromium when missing, as `make site-check`
    site = _site(tmp_path)
    shots = tmp_path / "shots"
    report = site_check.check_site(site, shots, browser=True, chromium=chromium, log=lambda *_: None)
    _assert_report(report)
    # the browser itself saw the failed load (not only the static reference check)
    assert any("failed to load gone.png" in p for p in report["missing-image.html"]), report["missing-image.html"]
    assert (shots / "good.png").read_bytes().startswith(b"\x89PNG")
    assert (shots / "book" / "chapter.png").exists()
    assert site_check.main([str(site), "--screenshots", str(shots)]) == 1
    for page in EXPECTED_FAILURES:
        (site / page).unlink()
    assert site_check.main([str(site), "--screenshots", str(shots)]) == 0


# ---------------------------------------------------------------------------------------- whole book (book/builder.py)

def test_build_fingerprints_every_module_of_the_package(tmp_path, monkeypatch):
    from tprune_core.book import stored

    assert stored.PACKAGE_DIR == REPO / "tprune_core"  # a change anywhere in tprune_core re-executes chapters
    assert (stored.PACKAGE_DIR / "cli" / "book.py").is_file() and (stored.PACKAGE_DIR / "book").is_dir()
    # the same code in another checkout has the same fingerprint: a clone can use the stored notebooks
    copy = tmp_path / "tprune_core"
    shutil.copytree(stored.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = stored.package_fingerprint()
    monkeypatch.setattr(stored, "PACKAGE_DIR", copy)
    assert stored.package_fingerprint() == before
    (copy / "rules.py").write_text((copy / "rules.py").read_text() + "\n# changed\n")
    assert stored.package_fingerprint() != before


@pytest.mark.slow
def test_stub_book_builds_reruns_and_findings_end_to_end(tmp_path, monkeypatch, capfd):
    """jupyter-book -W on a tiny copy of the book: a rerun appears after the next build, findings saved after a
    build appear on the landing page on the next one, and an unchanged rebuild executes nothing."""
    root = _make_root(tmp_path / "bk")
    shutil.copy(REPO / "_config.yml", root / "_config.yml")
    monkeypatch.setenv("TPRUNE_RESULTS", str(tmp_path / "results"))
    html = book.build(root=root, profile_name="full", train=False)
    assert capfd.readouterr().out.count("Executed notebook") == 1
    intro = (html / "book" / "intro.html").read_text()
    assert "No findings yet" in intro and "tprune-no-findings" in intro
    assert json.loads((root / book.LAST_BUILD).read_text())["html"] == str(html)

    book.save_findings("tiny", [{"claim": "squares grow", "source": "ours", "verdict": "reproduced",
                                 "evidence": "2 -> 4"}],
                       {"n": 2}, root=tmp_path / "results")
    _cli(["run", "tiny", "-p", "n", "4", "--tag", "four", "--root", str(root)])
    capfd.readouterr()
    book.build(root=root, profile_name="full", train=False)
    log = capfd.readouterr().out
    assert "Executed notebook" not in log  # chapter from the cache, rerun published as executed
    intro = (html / "book" / "intro.html").read_text()
    assert "squares grow" in intro and "reproduced" in intro and 'href="tiny.html"' in intro
    rerun = (html / "book" / "reruns" / "tiny-four.html").read_text()
    assert "n squared: 16 two" in rerun and "Tiny chapter — rerun: four" in rerun
    assert "tiny-four.html" in (html / "book" / "tiny.html").read_text()  # sidebars list the rerun too

    start = time.monotonic()
    book.build(root=root, profile_name="full", train=False)
    log = capfd.readouterr().out
    assert "Executed notebook" not in log and "0 added, 0 changed, 0 removed" in log
    assert time.monotonic() - start < 60

    # A reader's clone: no execution cache, only what results/ stores: the chapter is not executed again.
    assert (tmp_path / "results" / "tiny" / "notebook.ipynb").is_file()
    shutil.rmtree(book.output_dir(root, "full") / "_build")
    book.build(root=root, profile_name="full", train=False)
    log = capfd.readouterr().out
    assert "1 chapter(s) from the notebooks stored" in log and "Executed notebook" not in log
    assert "n squared: 4" in (html / "book" / "tiny.html").read_text()

    report = site_check.check_site(html, tmp_path / "shots", browser=True, chromium=site_check.ensure_chromium(),
                                   log=lambda *_: None)
    assert not any(report.values()), report


def test_a_dataset_the_zoo_has_no_models_of_is_refused_before_running(capsys):
    """`tprune run pruning-tradeoffs -p datasets '["/data/digits"]'`: a one-line error naming the dataset, what
    the profile has and what to do, before anything executes (no papermill traceback)."""
    from tprune_core.cli import main
    before = set((REPO / "book" / "reruns").glob("*.ipynb"))   # a checkout may hold reruns of its own
    code = main(["run", "pruning-tradeoffs", "-p", "datasets", '["/data/digits"]'])
    err = capsys.readouterr().err
    assert code == 2 and "dataset '/data/digits': zoo profile 'full' has no models of it" in err
    assert "speechcommands, urbansound8k" in err and "Traceback" not in err
    assert set((REPO / "book" / "reruns").glob("*.ipynb")) == before     # nothing was executed
    code = main(["run", "pruning-tradeoffs", "-p", "families", '["deit"]', "--profile", "smoke"])
    assert code == 2 and "family 'deit': zoo profile 'smoke' has no models of it" in capsys.readouterr().err


def test_the_committed_findings_state_every_paper_claim_once_in_the_four_outcome_vocabulary():
    """results/ as committed: one row per paper claim (a claim tested over many models is one verdict with its
    correction, not a row per model), and only reproduced / contradicted / inconclusive / not testable here."""
    from collections import Counter
    from pathlib import Path
    from tprune_core.analyses.verdicts import VERDICTS
    rows = book.collect_findings(Path(__file__).resolve().parents[1] / "results")
    assert rows, "no findings committed"
    paper = Counter(r["claim"] for r in rows if r["source"] == "paper")
    assert paper and max(paper.values()) == 1, [c for c, n in paper.items() if n > 1]
    assert not [c for c in paper if c.endswith(("speechcommands)", "urbansound8k)"))]   # no per-model copies
    assert {r["verdict"] for r in rows} <= set(VERDICTS)
