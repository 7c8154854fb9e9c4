"""Server processes: start one detached and wait until it listens; stop one.

The child writes ``ready <port>`` to a pipe (``--ready-fd``) once it listens, so the parent
waits on that pipe (no polling) and learns at once if the child died instead. Used for the
inference stack's engines and gateways and for the JobManager.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

__all__ = [
    "SpawnError",
    "is_running",
    "serve_until_signalled",
    "spawn_module",
    "started_at",
    "terminate",
]


class SpawnError(RuntimeError):
    """A server process exited, or did not listen in time; the message ends with its log."""


def spawn_module(
    module: str,
    args: list[str],
    log_path: Path | None,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
) -> tuple[int, int]:
    """Start ``python -m <module> <args> --ready-fd N`` detached; wait for it to listen.

    Args:
        module: The server's module.
        args: Its command line.
        log_path: File the child's output is appended to (``None``: this process's
            stdout and stderr, for a command in the foreground).
        timeout_s: How long it may take to listen.
        env: Variables added to this process's environment for the child.

    Returns:
        ``(pid, port)`` of the listening child (the leader of its own process group).

    Raises:
        SpawnError: it exited or was not ready in time (it is stopped first).
    """
    read_fd, write_fd = os.pipe()
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with contextlib.ExitStack() as files:
        log = None if log_path is None else files.enter_context(open(log_path, "ab"))
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args, "--ready-fd", str(write_fd)],
            stdout=log,
            stderr=None if log is None else subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            pass_fds=(write_fd,),
            start_new_session=True,
            env=child_env,
        )
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        ready, _, _ = select.select([pipe], [], [], timeout_s)
        line = pipe.readline() if ready else ""
    if not line.startswith("ready "):
        terminate(process.pid)
        reason = "exited" if line == "" and ready else f"was not ready within {timeout_s:.0f} s"
        if log_path is None:
            raise SpawnError(f"{reason}; its output is above")
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        detail = "\n".join(tail) if tail else "(no output)"
        raise SpawnError(f"{reason}; the end of {log_path}:\n{detail}")
    return process.pid, int(line.split()[1])


async def serve_until_signalled(
    start: Callable[[], Awaitable[int]],
    stop: Callable[[], Awaitable[None]],
    ready_fd: int | None,
) -> None:
    """The child's side of :func:`spawn_module`: start, write ``ready <port>`` to
    ``ready_fd`` (if given), serve until SIGTERM or SIGINT, then ``stop()``."""
    port = await start()
    if ready_fd is not None:
        with os.fdopen(ready_fd, "w") as pipe:
            pipe.write(f"ready {port}\n")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        await stop()  # finish requests in progress, release what the server holds


def started_at(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or ``None`` if there is none.

    A state file keeps it beside the pid: a pid can be reused by another process once the
    first has exited, and the start time tells them apart.
    """
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def is_running(pid: object, started: float | None = None) -> bool:
    """Whether ``pid`` is a running process (an exited one not yet reaped is not; anything but
    a positive int, as read from a state file, is not) and, with ``started``, the process
    that started then (not another that reused the pid)."""
    import psutil

    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        process = psutil.Process(pid)
        if started is not None and abs(process.create_time() - started) > 0.05:
            return False  # the pid was reused by another process
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # someone else's: it exists
        return started is None


def terminate(
    pid: int, grace_s: float = 20.0, *, group: bool = True, started: float | None = None
) -> bool:
    """SIGTERM the process group of ``pid`` (only ``pid`` itself with ``group=False``, for a
    server that stops its own children); SIGKILL the group if it outlives ``grace_s``.

    With ``started`` (as a state file recorded it), a process that reused the pid is left
    alone: nothing is signalled unless ``pid`` is still the process that started then.

    Returns:
        Whether it exited within ``grace_s`` (or was already gone).
    """
    import psutil

    if started is not None and not is_running(pid, started):
        return True
    try:
        if group:
            os.killpg(pid, signal.SIGTERM)
        else:
            os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    try:
        psutil.Process(pid).wait(grace_s)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
            psutil.Process(pid).wait(10)  # a kill is delivered asynchronously: see it land
        return False
    return True
