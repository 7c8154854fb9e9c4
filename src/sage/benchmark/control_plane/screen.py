"""What ``sage-cp-bench`` shows in the terminal: the progress bar, the tables, the summary.

Quiet (``-q``) shows the result table and nothing else: no progress bar, no step lines, no
summary, no paths; log warnings go to stderr.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from sage.benchmark.control_plane.driver import RequestRecord
from sage.benchmark.control_plane.report import TableData, rich_table
from sage.benchmark.control_plane.runner import Observer, PolicyRun

__all__ = ["console", "observer", "setup_logging", "show"]

# Piped output (make, CI logs) gets a width that fits the tables.
console = Console(width=None if sys.stdout.isatty() else 160)


class _ProgressBar:
    """The runner's observer: a Rich progress bar per policy, steps as dim lines."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None
        self.failed = 0

    def status(self, message: str) -> None:
        self.progress.console.print(f"[dim]{message}[/dim]")

    def policy_started(self, policy: str, total: int) -> None:
        self.failed = 0
        self.task = self.progress.add_task(policy, total=total, failed=0)

    def request_done(self, record: RequestRecord) -> None:
        assert self.task is not None
        self.failed += not record.ok
        self.progress.update(self.task, advance=1, failed=self.failed)

    def policy_finished(self, run: PolicyRun) -> None:
        pass


def setup_logging(verbose: bool, quiet: bool) -> None:
    """INFO with ``verbose``, else WARNING; on stdout beside the tables, or on stderr when
    ``quiet`` (so stdout holds the table alone)."""
    target = Console(stderr=True) if quiet else console
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=target, show_path=False)],
        force=True,
    )


@contextlib.contextmanager
def observer(quiet: bool) -> Iterator[Observer | None]:
    """A progress bar for the runner while the block runs (``None`` when ``quiet``)."""
    if quiet:
        yield None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        yield _ProgressBar(progress)


def show(
    tables: list[TableData], summary: list[str], paths: Mapping[str, Path], quiet: bool
) -> None:
    """Print the tables, the summary lines and the reports written (``quiet``: the first
    table only)."""
    for table in tables[:1] if quiet else tables:
        console.print(rich_table(table))
    if quiet:
        return
    for line in summary:
        console.print(f"• {line}", highlight=False)
    console.print("reports: " + ", ".join(str(p) for p in paths.values()), highlight=False)
