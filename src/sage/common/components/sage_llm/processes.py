"""Server processes of the inference stack: start one and wait until it listens; stop one.

``sage llm serve`` and ``benchmarks/inference.py`` start engines and gateways as separate
processes with :func:`spawn`. The child (``python -m sage.common.components.sage_llm.serving``)
writes ``ready <port>`` to a pipe once it listens, so the parent waits on that pipe (no
polling) and learns at once if the child died instead.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["SERVING_MODULE", "SpawnError", "spawn", "terminate"]

SERVING_MODULE = "sage.common.components.sage_llm.serving"


class SpawnError(RuntimeError):
    """A server process exited, or did not listen in time; the message ends with its log."""


def spawn(args: list[str], log_path: Path, timeout_s: float) -> tuple[int, int]:
    """Start ``python -m serving <args>`` detached; wait for it to listen.

    Args:
        args: The serving command line (``engine --kind llm ...`` or ``gateway --config ...``).
        log_path: File the child's output is appended to.
        timeout_s: How long it may take to listen.

    Returns:
        ``(pid, port)`` of the listening child (the leader of its own process group).

    Raises:
        SpawnError: it exited or was not ready in time (it is stopped first).
    """
    read_fd, write_fd = os.pipe()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", SERVING_MODULE, *args, "--ready-fd", str(write_fd)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            pass_fds=(write_fd,),
            start_new_session=True,
            env=env,
        )
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        ready, _, _ = select.select([pipe], [], [], timeout_s)
        line = pipe.readline() if ready else ""
    if not line.startswith("ready "):
        terminate(process.pid)
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        detail = "\n".join(tail) if tail else "(no output)"
        reason = "exited" if line == "" and ready else f"was not ready within {timeout_s:.0f} s"
        raise SpawnError(f"{reason}; the end of {log_path}:\n{detail}")
    return process.pid, int(line.split()[1])


def terminate(pid: int, grace_s: float = 20.0) -> None:
    """SIGTERM the process group of ``pid``; SIGKILL it if it outlives ``grace_s``."""
    import psutil

    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        psutil.Process(pid).wait(grace_s)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        os.killpg(pid, signal.SIGKILL)
