"""Server processes of the inference stack: start one and wait until it listens; stop one.

``sage llm serve``, ``sage-cp-bench`` and the benchmarks start engines and gateways as
separate processes with :func:`spawn_engine` and :func:`spawn_gateway` (both on
:func:`spawn`). The child (``python -m sage.common.components.sage_llm.serving``) writes
``ready <port>`` to a pipe once it listens, so the parent waits on that pipe (no polling) and
learns at once if the child died instead.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "SERVING_MODULE",
    "SpawnError",
    "served_name",
    "spawn",
    "spawn_engine",
    "spawn_gateway",
    "terminate",
]

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


def served_name(kind: str, model: str, engine: str) -> str:
    """The model name an engine started with ``model`` answers to (the CPU engine resolves
    bundled aliases and paths; the stub and the simulator serve the name they are given)."""
    if engine != "cpu":
        return model
    from sage.common.components.sage_llm.models import resolve_model

    return resolve_model(model, kind).name  # type: ignore[arg-type]


def spawn_engine(
    kind: str,
    model: str,
    engine: str,
    log_path: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    timeout_s: float = 180.0,
    extra: Sequence[str] = (),
) -> tuple[int, int, str]:
    """Start one engine server process (``--engine cpu|stub|simulated``); wait until it listens.

    Args:
        extra: More serving options (``--sim-profile JSON``, ``--max-batch N``, ...).

    Returns:
        ``(pid, port, the model name it serves)``.

    Raises:
        SpawnError: it exited or was not ready in time.
    """
    args = ["engine", "--kind", kind, "--model", model, "--engine", engine]
    pid, bound = spawn([*args, "--host", host, "--port", str(port), *extra], log_path, timeout_s)
    return pid, bound, served_name(kind, model, engine)


def spawn_gateway(
    config: Mapping[str, Any], config_path: Path, log_path: Path, timeout_s: float = 60.0
) -> tuple[int, int]:
    """Write ``config`` (``UnifiedServerConfig`` fields, backends as dicts) to ``config_path``
    and start a gateway process on it; ``(pid, port)`` once it listens.

    Raises:
        SpawnError: it exited or was not ready in time.
    """
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return spawn(["gateway", "--config", str(config_path)], log_path, timeout_s)


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
