"""Small helpers the book modules share: where the book lives, Markdown output, temporary environment values."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from ..analyses import results

BOOK_DIR = "book"


def book_root(root) -> Path:
    """`root` resolved, or the checkout this package lives in, or the current folder."""
    if root is not None:
        return Path(root).resolve()
    found = results.repo_root()
    return found if found is not None else Path.cwd().resolve()


class Markdown(str):
    """Text that Jupyter displays as Markdown (myst-nb parses it as MyST: admonitions work)."""

    def _repr_markdown_(self):
        return str(self)


def cell_text(value) -> str:
    """A value as inline code that is safe inside a Markdown table cell."""
    text = value if isinstance(value, str) else repr(value)
    return "`" + text.replace("|", "\\|").replace("`", "'").replace("\n", " ") + "`"


def two_column_table(header: tuple[str, str], rows) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


@contextmanager
def environ(**values):
    """Set environment variables for the duration of the block, then restore (or remove) them."""
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
