"""Griffe extension: a docstring's ``Example:`` section read as ``Examples:``.

SAGE's docstrings title their doctests ``Example:``, as the Google style guide does. Griffe
parses only ``Examples:`` as an examples section and renders ``Example:`` as an admonition
of Markdown text, where each ``>>>`` line becomes a nested quote. Renaming the title before
the docstring is parsed makes mkdocstrings show the doctests as code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

EXAMPLE = re.compile(r"^([ \t]*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` section titles to ``Examples:`` in every docstring."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Run on each object once the tree is complete, before any docstring is parsed."""
        docstring = obj.docstring
        if docstring is not None and EXAMPLE.search(docstring.value):
            docstring.value = EXAMPLE.sub(r"\1Examples:", docstring.value)
