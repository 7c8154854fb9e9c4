"""The JobManager as a process: ``sage jobmanager start`` runs ``python -m
sage.kernel.jobmanager`` (:func:`main`), which serves until SIGTERM or SIGINT with a state
file in ``$SAGE_HOME/jobmanager/``."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sage.common.concurrency import run_loop
from sage.common.config.paths import sage_home
from sage.common.config.ports import SagePorts
from sage.common.errors import ConfigError
from sage.common.processes import serve_until_signalled, started_at
from sage.kernel.jobmanager.factories import JobFactory, LocalJobFactory
from sage.kernel.jobmanager.manager import JobManager
from sage.kernel.jobmanager.server import JobManagerServer

if TYPE_CHECKING:
    pass

__all__ = ["log_file", "main", "read_state", "serve", "state_file"]

logger = logging.getLogger(__name__)


def state_file() -> Path:
    """``$SAGE_HOME/jobmanager/server.json``: pid, host and port of the running JobManager."""
    return sage_home() / "jobmanager" / "server.json"


def log_file() -> Path:
    """``$SAGE_HOME/jobmanager/jobmanager.log``: where ``sage jobmanager start`` sends its
    output."""
    return sage_home() / "jobmanager" / "jobmanager.log"


def read_state() -> dict[str, Any] | None:
    """What :func:`serve` wrote (``pid`` and ``started``, its start time, ``host``, ``port``,
    ``runtime``...), or ``None``."""
    try:
        return dict(json.loads(state_file().read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _state(host: str, port: int, runtime: str) -> Iterator[None]:
    path = state_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pid = os.getpid()
    state = {"pid": pid, "started": started_at(pid), "host": host, "port": port, "runtime": runtime}
    path.write_text(json.dumps({**state, "started_at": time.time()}), encoding="utf-8")
    try:
        yield
    finally:
        current = read_state()
        if current is not None and current.get("pid") == os.getpid():
            path.unlink(missing_ok=True)


async def _serve(server: JobManagerServer, ready_fd: int | None) -> None:
    with contextlib.ExitStack() as state:

        async def start() -> int:
            port = await server.start_async()
            state.enter_context(_state(server.host, port, server.manager.runtime))
            return port

        await serve_until_signalled(start, server.stop_async, ready_fd)


def serve(
    host: str = "127.0.0.1",
    port: int = SagePorts.JOBMANAGER_DEFAULT,
    ray_address: str | None = None,
    *,
    job_factory: JobFactory | None = None,
    ready_fd: int | None = None,
) -> None:
    """Run a JobManager until SIGTERM or SIGINT (blocks).

    While it runs, ``$SAGE_HOME/jobmanager/server.json`` names its pid and port (removed on
    exit). On a signal it stops taking jobs, cancels the running ones, and exits.

    Args:
        host: Address to listen on.
        port: Port to listen on.
        ray_address: Ray cluster for the default factory (see :class:`RayJobFactory`).
        job_factory: Another runtime (e.g. :class:`LocalJobFactory`).
        ready_fd: A pipe to write ``ready <port>`` to once listening (for a parent process).

    Raises:
        OSError: the port is taken.
        ConfigError: the token file is unusable.
    """
    manager = JobManager(job_factory, ray_address=ray_address)
    run_loop(_serve(JobManagerServer(manager, host=host, port=port), ready_fd))


def main(argv: list[str] | None = None) -> None:
    """``python -m sage.kernel.jobmanager``: the process ``sage jobmanager start`` runs."""
    parser = argparse.ArgumentParser(prog="sage-jobmanager")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=SagePorts.JOBMANAGER_DEFAULT)
    parser.add_argument("--ray-address")
    parser.add_argument("--runtime", choices=("ray", "local"), default="ray")
    parser.add_argument("--ready-fd", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(  # force: `sage jobmanager start --foreground` configured it already
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    factory = LocalJobFactory() if args.runtime == "local" else None
    try:
        serve(args.host, args.port, args.ray_address, job_factory=factory, ready_fd=args.ready_fd)
    except (OSError, ConfigError) as exc:
        parser.exit(2, f"sage-jobmanager: {exc}\n")
