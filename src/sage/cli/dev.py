"""``sage-dev``: developer commands for working on the SAGE checkout itself.

``sage-dev quality`` runs the static checks CI runs (``ruff check``, ``ruff format``, ``mypy``)
with the tools of the interpreter that runs it (``sys.executable -m ruff``), so the versions are
those ``pip install -e '.[quality]'`` installed, not whatever is first on ``PATH``. Every step
runs even after one fails, so a single run shows every problem; a table at the end says which
steps passed and how long each took.
"""

from __future__ import annotations

import importlib.util
import shlex
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sage.cli.errors import fail, usage

PROJECT_NAME = "sage-flow"
"""``[project] name`` in the pyproject.toml that marks the root of the SAGE checkout."""

DEFAULT_PATHS = ("src", "tests", "examples", "benchmarks")
"""What ruff checks when no paths are given (those of them that exist under the root)."""

app = typer.Typer(
    name="sage-dev",
    help="Developer commands for the SAGE checkout (static checks).",
    no_args_is_help=True,
    add_completion=False,
)
# Piped output (make, CI logs) gets a width that fits the summary table instead of 80.
console = Console(width=None if sys.stdout.isatty() else 120)


@dataclass(frozen=True)
class Step:
    """One tool run of ``sage-dev quality``: a name for the summary and the command line."""

    name: str
    module: str
    """The Python module the command runs (``-m``); checked to be installed before any step."""
    argv: tuple[str, ...]


def quality_steps(paths: Sequence[str], *, fix: bool, python: str = sys.executable) -> list[Step]:
    """The commands ``sage-dev quality`` runs, in order, without running any of them.

    ``fix=False`` (``--check-only``) changes no file: ``ruff check``, ``ruff format --check``.
    ``fix=True`` applies ruff's fixes, then formats, so the files end up as the check expects.
    mypy always takes its files from ``[tool.mypy] files`` in pyproject.toml, as CI runs it.
    """
    ruff = (python, "-m", "ruff")
    if fix:
        lint = Step("ruff check --fix", "ruff", (*ruff, "check", "--fix", *paths))
        fmt = Step("ruff format", "ruff", (*ruff, "format", *paths))
    else:
        lint = Step("ruff check", "ruff", (*ruff, "check", *paths))
        fmt = Step("ruff format --check", "ruff", (*ruff, "format", "--check", *paths))
    return [lint, fmt, Step("mypy", "mypy", (python, "-m", "mypy"))]


def is_project_root(path: Path) -> bool:
    """Whether ``path`` holds a pyproject.toml whose ``[project] name`` is ``sage-flow``."""
    try:
        with (path / "pyproject.toml").open("rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return False
    project = data.get("project")
    return isinstance(project, dict) and project.get("name") == PROJECT_NAME


def find_project_root(start: Path) -> Path | None:
    """The nearest directory from ``start`` upwards that is the SAGE checkout's root, or None."""
    start = start.resolve()
    return next((d for d in (start, *start.parents) if is_project_root(d)), None)


def missing_modules(modules: Iterable[str]) -> list[str]:
    """Which of ``modules`` this interpreter cannot import (sorted, without duplicates)."""
    return sorted({m for m in modules if importlib.util.find_spec(m) is None})


def _resolve_root(root: Path | None) -> Path:
    """The checkout's root: ``--root`` if it is one, else found from the current directory."""
    if root is None:
        found = find_project_root(Path.cwd())
        if found is None:
            raise usage(
                f"no SAGE checkout found in {Path.cwd()} or above it (a pyproject.toml with "
                f'name = "{PROJECT_NAME}"); run sage-dev inside the SAGE checkout or pass '
                "--root PATH"
            )
        return found
    root = root.expanduser().resolve()
    if is_project_root(root):
        return root
    hint = "pass the directory that holds SAGE's pyproject.toml"
    enclosing = find_project_root(root)
    if enclosing is not None:
        hint = f"did you mean --root {enclosing}?"
    raise usage(
        f"--root {root} is not the SAGE checkout's root (it has no pyproject.toml with "
        f'name = "{PROJECT_NAME}"); {hint}'
    )


def _resolve_paths(root: Path, paths: list[Path] | None) -> list[str]:
    """The paths to give ruff, relative to ``root`` where they are inside it.

    Given paths are taken relative to the current directory, as the shell completes them.
    """
    if not paths:
        found = [p for p in DEFAULT_PATHS if (root / p).exists()]
        if not found:
            raise usage(f"none of {', '.join(DEFAULT_PATHS)} exists in {root}; pass the paths")
        return found
    resolved: list[str] = []
    for path in paths:
        full = path.expanduser().resolve()
        if not full.exists():
            raise usage(f"{path} does not exist (paths are relative to the current directory)")
        resolved.append(str(full.relative_to(root)) if full.is_relative_to(root) else str(full))
    return resolved


def _run_step(step: Step, root: Path) -> tuple[int, float]:
    """Run one step in ``root`` with its output going straight to ours; its exit code, seconds."""
    console.rule(f"[bold]{step.name}[/bold]")
    console.print(
        f"$ {shlex.join(step.argv)}", style="dim", highlight=False, markup=False, soft_wrap=True
    )
    # Our buffered output must be out before the tool writes to the same stream.
    sys.stdout.flush()
    sys.stderr.flush()
    started = time.perf_counter()
    code = subprocess.run(step.argv, cwd=root, stdin=subprocess.DEVNULL, check=False).returncode
    return code, time.perf_counter() - started


@app.callback()
def main() -> None:
    """Developer commands for the SAGE checkout."""


@app.command()
def quality(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Files or folders for ruff (relative to the current directory); default: "
            "src tests examples benchmarks under the root. mypy always checks \\[tool.mypy] files.",
            show_default=False,
        ),
    ] = None,
    check_only: Annotated[
        bool,
        typer.Option(
            "--check-only",
            help="Change no file: ruff check and ruff format --check (as CI runs them). Without "
            "it, ruff's fixes and formatting are written first.",
        ),
    ] = False,
    root: Annotated[
        Path | None,
        typer.Option(
            "--root",
            help="The SAGE checkout (default: found from the current directory upwards).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run ruff (lint, format) and mypy; exit 0 when all pass, 1 when any fails.

    Every step runs even after one fails. Exit 2: a tool, the checkout or a path is missing.
    """
    project = _resolve_root(root)
    targets = _resolve_paths(project, paths)
    steps = quality_steps(targets, fix=not check_only)
    missing = missing_modules(s.module for s in steps)
    if missing:
        one = len(missing) == 1
        raise fail(
            f"{' and '.join(missing)} {'is' if one else 'are'} not installed for "
            f"{sys.executable}; run make quality (or pip install -e '.[quality]') to install "
            f"{'it' if one else 'them'}"
        )

    console.print(f"SAGE checkout: {project}", highlight=False, soft_wrap=True)
    results: list[tuple[Step, int, float]] = []
    for step in steps:
        code, seconds = _run_step(step, project)
        results.append((step, code, seconds))

    table = Table(title=f"sage-dev quality{' --check-only' if check_only else ''}")
    table.add_column("step")
    table.add_column("result")
    table.add_column("seconds", justify="right")
    for step, code, seconds in results:
        if code == 0:
            result = "[green]passed[/green]"
        else:  # ruff and mypy exit 1 for findings; other codes mean the tool itself failed
            result = "[red]failed[/red]" + ("" if code == 1 else f" (exit {code})")
        table.add_row(step.name, result, f"{seconds:.2f}")
    console.print()
    console.print(table)

    failed = [step.name for step, code, _ in results if code != 0]
    if not failed:
        console.print("[green]all checks passed[/green]")
        return
    console.print(f"[red]failed:[/red] {', '.join(failed)}", highlight=False, soft_wrap=True)
    if check_only and any(name.startswith("ruff") for name in failed):
        console.print(
            "sage-dev quality (without --check-only) applies ruff's fixes and formatting; "
            "the rest needs fixing by hand"
        )
    raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    app()
