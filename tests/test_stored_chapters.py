"""Executed chapters stored in results/: served to a build only while current (book.stored)."""
import json

import nbformat
import pytest

from tprune_core.book import stored

CHAPTER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3 (ipykernel)
  language: python
  name: python3
---

# A chapter

```{code-cell} ipython3
x = 6 * 7
x
```
"""


@pytest.fixture
def book(tmp_path):
    """A one-chapter book whose executed notebook sits in the results store, as `store_executed` leaves it."""
    root = tmp_path / "book-root"
    (root / "book").mkdir(parents=True)
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nparts:\n  - chapters:\n      - file: book/ch\n")
    (root / "book" / "intro.md").write_text("# Intro\n")
    (root / "book" / "ch.md").write_text(CHAPTER)
    # what an executed build leaves in its jupyter-cache: the code cells with their outputs
    from jupyter_cache import get_cache
    nb = stored._source_notebook(root, "ch")
    nb.cells[-1].outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "42"}, execution_count=1)]
    nb.cells[-1].execution_count = 1
    executed = tmp_path / "executed.ipynb"
    nbformat.write(nb, executed)
    build_cache = tmp_path / "build-cache"
    get_cache(str(build_cache)).cache_notebook_file(str(executed), check_validity=False)
    store = tmp_path / "results"
    (store / "ch").mkdir(parents=True)
    (store / "ch" / "t.meta.json").write_text(json.dumps({"chapter": "ch", "name": "t",
                                                          "checkpoints": {"ast/x/base/s0": "a" * 64}}))
    code = stored.package_fingerprint()
    assert stored.store_executed(root, build_cache, store, code) == ["ch"]
    assert stored.store_executed(root, build_cache, store, code) == []     # unchanged: the stamp of the run that made it stays
    return root, store


def test_chapters_are_the_toc_files_with_a_kernel(book):
    root, _ = book
    assert stored.chapter_names(root) == ["ch"]


def test_a_stored_notebook_keeps_outputs_and_prose(book):
    root, store = book
    nb = nbformat.read(store / "ch" / stored.NOTEBOOK, as_version=4)
    assert nb.cells[-1].outputs[0]["data"]["text/plain"] == "42"
    assert nb.cells[0].cell_type == "markdown" and "# A chapter" in nb.cells[0].source
    stamp = json.loads((store / "ch" / stored.STAMP).read_text())
    assert stamp["checkpoints"] == {"ast/x/base/s0": "a" * 64} and stamp["package"] == stored.package_fingerprint()


def test_a_current_notebook_is_preloaded_into_the_execution_cache(book, tmp_path):
    from jupyter_cache import get_cache
    root, store = book
    loaded, stale = stored.preload(root, store, tmp_path / "cache", {"ast/x/base/s0": "a" * 64})
    assert (loaded, stale) == (["ch"], {})
    match = get_cache(str(tmp_path / "cache")).match_cache_notebook(stored._source_notebook(root, "ch"))
    assert match is not None   # what jupyter-book asks before executing: found, so the chapter is not run


def test_prose_may_change_code_may_not(book):
    root, store = book
    (root / "book" / "ch.md").write_text(CHAPTER.replace("# A chapter", "# A chapter, reworded"))
    assert stored.why_stale(root, store, "ch", {}) is None
    (root / "book" / "ch.md").write_text(CHAPTER.replace("6 * 7", "6 * 8"))
    assert stored.why_stale(root, store, "ch", {}) == "its code cells changed"


def test_other_package_code_or_a_new_release_makes_it_stale(book, monkeypatch):
    root, store = book
    assert stored.why_stale(root, store, "ch", {"ast/x/base/s0": "a" * 64, "other": "c" * 64}) is None
    assert "other weights" in stored.why_stale(root, store, "ch", {"ast/x/base/s0": "b" * 64})
    monkeypatch.setattr(stored, "package_fingerprint", lambda: "0" * 64)
    assert stored.why_stale(root, store, "ch", {}) == "tprune_core changed since it was executed"
    (store / "ch" / stored.NOTEBOOK).unlink()
    assert stored.why_stale(root, store, "ch", {}) == "no stored notebook"
