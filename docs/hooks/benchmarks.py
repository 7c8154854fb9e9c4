"""MkDocs hook: the benchmark figures page, made from ``benchmarks/README.md`` at build time.

``make bench`` rewrites that README's sections; a strict build cannot link outside
``docs/``, so the page ``benchmark-figures.md`` is generated from it on every build (no copy
to keep in step), and links to ``../benchmarks/README.md`` in the pages (RELIABILITY.md has
one, which GitHub renders too) are pointed at the generated page.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "benchmarks" / "README.md"
PAGE = "benchmark-figures.md"
OUTSIDE_LINK = re.compile(r"\]\((?:\.\./)+benchmarks/README\.md(?=[)#])")
NOTE = (
    "!!! note\n"
    "    This page is `benchmarks/README.md` of the repository, as `make bench` last wrote "
    "it; [Benchmarks](benchmarks.md) says what each benchmark compares.\n\n"
)


def on_files(files: Files, config: Any, **kwargs: Any) -> Files:
    """Add the generated page to the site's files."""
    text = README.read_text(encoding="utf-8")
    _title, _, rest = text.partition("\n")  # its "# Benchmarks" is benchmarks.md's title
    files.append(File.generated(config, PAGE, content=f"# Benchmark figures\n\n{NOTE}{rest}"))
    return files


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """Point links to the repository's ``benchmarks/README.md`` at the generated page."""
    target = posixpath.relpath(PAGE, posixpath.dirname(page.file.src_uri) or ".")
    return OUTSIDE_LINK.sub(f"]({target}", markdown)
