"""``sage``: the SAGE command line."""

from __future__ import annotations

import logging
import sys
from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console

import sage
from sage.cli.llm import llm_app

app = typer.Typer(
    name="sage",
    help="SAGE: LLM applications as streaming dataflows.",
    no_args_is_help=True,
    add_completion=False,
)
# Piped output (make, CI logs) gets a width that fits the metrics tables instead of 80.
console = Console(width=None if sys.stdout.isatty() else 120)
app.add_typer(llm_app, name="llm")


class Demo(StrEnum):
    """The demos ``sage demo`` can run."""

    WORDCOUNT = "wordcount"


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False,
) -> None:
    """SAGE command line."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@app.command()
def version() -> None:
    """Print the SAGE version."""
    console.print(f"sage {sage.__version__}")


@app.command()
def demo(
    name: Annotated[Demo, typer.Argument(help="Which demo to run.")] = Demo.WORDCOUNT,
    parallelism: Annotated[
        int, typer.Option(min=1, help="Parallelism of the keyed counting operator.")
    ] = 4,
    top: Annotated[int, typer.Option(min=1, help="How many top words to show.")] = 15,
) -> None:
    """Run a demo pipeline and show its results and per-operator metrics."""
    from sage.demos.wordcount import run_wordcount_demo

    run_wordcount_demo(console, parallelism=parallelism, top=top)


if __name__ == "__main__":  # pragma: no cover
    app()
