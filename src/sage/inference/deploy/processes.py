"""Server processes of the inference stack: start one and wait until it listens; stop one.

``sage llm serve``, ``sage-cp-bench`` and the benchmarks start engines and gateways as
separate processes with :func:`spawn_engine` and :func:`spawn_gateway` (both on
:func:`spawn`, which runs ``python -m sage.inference.deploy.serving`` through
:func:`sage.common.processes.spawn_module`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sage.common.processes import SpawnError, spawn_module, terminate
from sage.inference.engines.factory import CPU_ENGINES

__all__ = [
    "SERVING_MODULE",
    "SpawnError",
    "served_name",
    "spawn",
    "spawn_engine",
    "spawn_gateway",
    "terminate",
]

SERVING_MODULE = "sage.inference.deploy.serving"


def spawn(args: list[str], log_path: Path | None, timeout_s: float) -> tuple[int, int]:
    """Start ``python -m serving <args>`` detached (offline); wait for it to listen.

    Args:
        args: The serving command line (``engine --kind llm ...`` or ``gateway --config ...``).
        log_path: File the child's output is appended to (``None``: this process's).
        timeout_s: How long it may take to listen.

    Returns:
        ``(pid, port)`` of the listening child (the leader of its own process group).

    Raises:
        SpawnError: it exited or was not ready in time (it is stopped first).
    """
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return spawn_module(SERVING_MODULE, args, log_path, timeout_s, env=offline)


def served_name(kind: str, model: str, engine: str) -> str:
    """The model name an engine started with ``model`` answers to (the CPU engine resolves
    bundled aliases and paths; the stub and the simulator serve the name they are given)."""
    if engine not in CPU_ENGINES:
        return model
    from sage.inference.engines.models import resolve_model

    return resolve_model(model, kind).name  # type: ignore[arg-type]


def spawn_engine(
    kind: str,
    model: str,
    engine: str,
    log_path: Path | None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    timeout_s: float = 180.0,
    extra: Sequence[str] = (),
    max_model_len: int | None = None,
) -> tuple[int, int, str]:
    """Start one engine server process (``--engine cpu|llama.cpp|transformers|stub|simulated``);
    wait until it listens.

    Args:
        extra: More serving options (``--sim-profile JSON``, ``--max-batch N``, ...).
        max_model_len: Most tokens of one request, prompt and answer (the engine's context
            length; ``None``: the engine's default).

    Returns:
        ``(pid, port, the model name it serves)``.

    Raises:
        SpawnError: it exited or was not ready in time.
    """
    args = ["engine", "--kind", kind, "--model", model, "--engine", engine]
    if max_model_len is not None:
        args += ["--max-model-len", str(max_model_len)]
    pid, bound = spawn([*args, "--host", host, "--port", str(port), *extra], log_path, timeout_s)
    return pid, bound, served_name(kind, model, engine)


def spawn_gateway(
    config: Mapping[str, Any], config_path: Path, log_path: Path | None, timeout_s: float = 60.0
) -> tuple[int, int]:
    """Write ``config`` (``UnifiedServerConfig`` fields, backends as dicts) to ``config_path``
    and start a gateway process on it; ``(pid, port)`` once it listens. The file is readable
    by its owner only: it may hold the API key and the tenants' keys.

    Raises:
        SpawnError: it exited or was not ready in time.
    """
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file left by an older run keeps its mode otherwise
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(config, indent=2))
    return spawn(["gateway", "--config", str(config_path)], log_path, timeout_s)
