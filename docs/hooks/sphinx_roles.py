"""MkDocs hook: Sphinx cross-reference roles in docstrings, shown as Sphinx shows them.

SAGE's docstrings name other objects the Sphinx way (``:class:`~sage.x.Y```,
``:meth:`create```), which also reads well in ``help()``; mkdocstrings renders the role
literally (``:meth:<code>create</code>``). This hook drops the role on the rendered API
pages: ``~a.b.C`` shows as ``C``, methods and functions get ``()``.
"""

from __future__ import annotations

import re
from typing import Any

ROLE = re.compile(r":(class|meth|func|mod|attr|data|exc|obj):<code>(~?)\.?([^<]*)</code>")


def _shown(match: re.Match[str]) -> str:
    role, short, target = match.groups()
    name = target.rsplit(".", 1)[-1] if short else target
    return f"<code>{name}{'()' if role in ('meth', 'func') else ''}</code>"


def on_page_content(html: str, page: Any, **kwargs: Any) -> str:
    """Replace each rendered role by the name it refers to."""
    return ROLE.sub(_shown, html)
