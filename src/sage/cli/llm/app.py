"""The ``sage llm`` Typer app and its console (the commands register on it)."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

__all__ = ["console", "llm_app"]

llm_app = typer.Typer(help="Run and inspect the local inference stack (engines + gateway).")
console = Console(width=None if sys.stdout.isatty() else 120)
