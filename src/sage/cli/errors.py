"""How every ``sage`` command reports a failure: one line on stderr, and an exit code by
kind, as Click does: 1 when the command could not do its job (nothing running, a port in
use, a server that did not start), 2 when it was called wrong (a bad option value)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["RUNTIME", "USAGE", "fail", "stderr", "usage"]

RUNTIME = 1
USAGE = 2

stderr = Console(stderr=True)


def fail(message: str, code: int = RUNTIME) -> typer.Exit:
    """Print ``error: <message>`` on stderr; the ``typer.Exit`` to raise (code 1).

    The message is printed as it is (no markup), on one line for copying (soft wrap).
    """
    stderr.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def usage(message: str) -> typer.Exit:
    """:func:`fail` for a command called wrong (exit code 2, as Click's usage errors)."""
    return fail(message, USAGE)
