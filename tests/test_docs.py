"""The README's and the docs' code runs as written and prints what its comments say."""

from __future__ import annotations

import contextlib
import io
import logging
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").glob("*.md")))]


@pytest.mark.parametrize("doc", DOCS)
def test_doc_examples_run_and_print_what_they_claim(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    if doc == "README.md":
        assert blocks, "the README has no Python example"
    for block in blocks:
        claimed = re.findall(r"print\((.*)\)\s+# (.*)", block)
        out = io.StringIO()
        logging.disable(logging.WARNING)  # a handler writing to stdout must not add lines
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(block, doc, "exec"), {"__name__": "doc"})
        finally:
            logging.disable(logging.NOTSET)
        printed = out.getvalue().splitlines()
        assert printed == [comment.strip() for _, comment in claimed]
