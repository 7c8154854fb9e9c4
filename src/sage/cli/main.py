"""``sage``: the SAGE command line."""

from __future__ import annotations

import logging
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

import sage
from sage.cli.dashboard import dashboard
from sage.cli.jobs import job_app, jobmanager_app
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
app.add_typer(jobmanager_app, name="jobmanager")
app.add_typer(job_app, name="job")
app.command()(dashboard)


class Demo(StrEnum):
    """The demos ``sage demo`` can run."""

    RAG = "rag"
    LIVE = "live"
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
    name: Annotated[Demo, typer.Argument(help="Which demo to run.")] = Demo.RAG,
    parallelism: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Parallel instances of the generating (rag, 8) or counting (wordcount, 4) "
            "operator.",
        ),
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="wordcount: how many top words to show.")] = 15,
    max_tokens: Annotated[int, typer.Option(min=1, help="rag, live: tokens per answer.")] = 64,
    folder: Annotated[
        Path | None,
        typer.Option(
            file_okay=False,
            exists=True,
            help="live: the folder to follow (default: a new one with three seed files).",
        ),
    ] = None,
    script: Annotated[
        bool | None,
        typer.Option(
            "--script/--interactive",
            help="live: drive the demo itself (edit, delete, ask), or read questions from "
            "the terminal (default: scripted unless stdin is a terminal).",
        ),
    ] = None,
    http_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="live: also take questions POSTed to http://127.0.0.1:PORT/v1/ingest "
            "(bearer token: $SAGE_INGEST_TOKEN, else one is generated and logged).",
        ),
    ] = None,
) -> None:
    """Run a demo pipeline and show its results and per-operator metrics.

    rag (default): index the Python reference with all-MiniLM-L6-v2 into the vector DB and
    answer questions with SmolLM2, offline. live: follow a folder as its files change, keep
    the index current and answer from the current files. wordcount: a parallel keyed word
    count.
    """
    if name is Demo.RAG:
        from sage.demos.rag import run_rag_demo

        run_rag_demo(console, parallelism=parallelism or 8, max_tokens=max_tokens)
    elif name is Demo.LIVE:
        from sage.demos.live import run_live_demo

        run_live_demo(
            console, folder=folder, script=script, http_port=http_port, max_tokens=max_tokens
        )
    else:
        from sage.demos.wordcount import run_wordcount_demo

        run_wordcount_demo(console, parallelism=parallelism or 4, top=top)


if __name__ == "__main__":  # pragma: no cover
    app()
