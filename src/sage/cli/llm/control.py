"""``sage llm status``, ``stop`` and ``logs``: inspect and stop what ``serve`` started
(:func:`stop_stack` is ``stop``'s work, which ``restart`` reuses)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from sage.cli.errors import fail
from sage.cli.llm.app import console, llm_app
from sage.cli.llm.gateway import StackGateway
from sage.cli.llm.state import alive, load_state, state_dir, state_file
from sage.inference.deploy.processes import terminate

__all__ = ["ForceOption", "logs", "status", "stop", "stop_stack"]

ForceOption = Annotated[
    bool,
    typer.Option(
        "--force", "-f", help="Kill at once instead of letting requests in flight finish."
    ),
]
"""``-f/--force`` of ``stop`` and ``restart``: stop the processes without a grace period."""


@llm_app.command()
def status() -> None:
    """Show the instances behind the gateway and whether they are healthy."""
    state = load_state()
    if not state:
        raise fail("nothing is running; start it with sage llm serve")
    table = Table(title="SAGE inference stack")
    for column in ("process", "pid", "alive"):
        table.add_column(column)
    for name, pid in state["pids"].items():
        running = alive(state, name)
        table.add_row(name, str(pid), "[green]yes[/green]" if running else "[red]no[/red]")
    console.print(table)
    instances = StackGateway(state).instances()  # with SAGE_API_KEY: the routes check it
    view = Table(title="instances")
    for column in (
        "instance",
        "model",
        "type",
        "healthy",
        "in flight",
        "requests",
        "errors",
        "p95",
    ):
        view.add_column(column)
    for i in instances:
        view.add_row(
            i["instance_id"],
            i["model_name"],
            i["instance_type"],
            (
                "[green]healthy[/green]"
                if i["healthy"]
                else f"[red]unhealthy[/red] {i['last_error']}"
            )
            + (" [yellow]draining[/yellow]" if i.get("draining") else ""),
            str(i["in_flight"]),
            str(i["requests"]),
            str(i["errors"]),
            f"{i['p95_ms']:.1f} ms",
        )
    console.print(view)
    if not all(i["healthy"] for i in instances):
        raise typer.Exit(1)


@llm_app.command()
def stop(force: ForceOption = False) -> None:
    """Stop every process of the stack (engines and gateway); none is left behind."""
    state = load_state()
    if not state:
        console.print("nothing is running")
        return
    stop_stack(state, force)


def stop_stack(state: dict[str, Any], force: bool = False) -> None:
    """Stop the processes of ``state`` (saying which) and forget them: what ``stop`` and
    ``restart`` do.

    Raises:
        typer.Exit: 1 if one is still running afterwards (naming it).
    """
    started = state.get("started") or {}
    for name, pid in state["pids"].items():
        if not alive(state, name):
            console.print(f"{name} (pid {pid}) had already exited")
            continue
        terminate(pid, 0.0 if force else 20.0, started=started.get(name))
        console.print(f"{'killed' if force else 'stopped'} {name} (pid {pid})")
    left = [f"{n} ({p})" for n, p in state["pids"].items() if alive(state, n)]
    state_file().unlink(missing_ok=True)
    if left:
        raise fail(f"still running: {', '.join(left)}")


@llm_app.command()
def logs(
    name: Annotated[
        str | None, typer.Argument(help="llm, embedding or gateway (default: all).")
    ] = None,
    lines: Annotated[
        int, typer.Option("--lines", "-n", help="Lines from the end of each log.")
    ] = 40,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Then print new lines as they come, until Ctrl-C."),
    ] = False,
) -> None:
    """Print the end of the processes' logs (and follow them with -f)."""
    folder = state_dir() / "logs"
    files = [folder / f"{name}.log"] if name else sorted(folder.glob("*.log"))
    if not files or not all(f.exists() for f in files):
        raise fail(f"no logs in {folder}" + (f" for {name!r}" if name else ""))
    try:  # Ctrl-C ends a follow cleanly, even while the tails are still printing
        positions = _tail(files, lines)
        if follow:
            _follow(positions)
    except KeyboardInterrupt:
        if not follow:
            raise


def _tail(files: list[Path], lines: int) -> dict[Path, dict[str, int]]:
    """Print the last ``lines`` of each file after its name; where each was read up to."""
    positions = {}
    for path in files:
        with path.open("rb") as fh:  # the tail and the follow's start: the same bytes
            data = fh.read()
            positions[path] = {"inode": os.fstat(fh.fileno()).st_ino, "offset": len(data)}
        console.rule(path.name)
        console.print(
            "\n".join(data.decode(errors="replace").splitlines()[-lines:]),
            highlight=False,
            markup=False,
        )
    return positions


def _follow(positions: dict[Path, dict[str, int]]) -> None:
    """Print lines appended to the files after ``positions`` as they come (each after its
    file's name), woken by the folder's watcher, across rotations, until Ctrl-C (which
    ``logs`` catches)."""
    from sage.kernel.connectors import DirectoryWatcher, LineReader

    readers = {}
    for path, position in positions.items():
        readers[path] = reader = LineReader(path, parse="text")
        reader.open(position)
    watcher = DirectoryWatcher(next(iter(positions)).parent, recursive=False)
    watcher.start()
    try:
        while True:
            for path, reader in readers.items():
                while got := reader.read(1000):
                    for line in got:
                        console.print(f"{path.stem}: {line}", highlight=False, markup=False)
            console.file.flush()  # a pipe is block-buffered: show each line as it comes
            watcher.changes(1.0)
    finally:
        watcher.stop()
        for reader in readers.values():
            reader.close()
