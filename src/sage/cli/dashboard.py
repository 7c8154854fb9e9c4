"""``sage dashboard``: the web dashboard, in the foreground until Ctrl-C."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer
from rich.console import Console

from sage.cli.errors import fail, usage
from sage.common.config.ports import SagePorts
from sage.common.errors import ConfigError
from sage.common.processes import serve_until_signalled

console = Console(width=None if sys.stdout.isatty() else 120)


def dashboard(
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on. Keep 127.0.0.1: the page shows this machine's jobs, "
            "processes and errors to whoever can reach it."
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="Port to listen on (0: any free one).")
    ] = SagePorts.DASHBOARD_DEFAULT,
    gateway: Annotated[
        list[str] | None,
        typer.Option(
            help="Gateway to show (host:port; repeatable). Default: the one `sage llm serve` runs."
        ),
    ] = None,
    jobmanager: Annotated[
        list[str] | None,
        typer.Option(
            help="JobManager to show (host:port; repeatable). Default: the one `sage "
            "jobmanager start` runs."
        ),
    ] = None,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes (1 or more).")] = 1.0,
) -> None:
    """Serve the live web dashboard: jobs and their operator graphs, services, LLM
    instances, CPU, memory and GPUs. Jobs started on this machine appear by themselves."""
    from sage.dashboard.server import DashboardServer

    try:
        server = DashboardServer(
            host,
            port,
            gateways=gateway or (),
            jobmanagers=jobmanager or (),
            interval_s=interval,
        )
    except ConfigError as exc:
        raise usage(str(exc)) from None

    async def start() -> int:
        try:
            bound = await server.start_async()
        except OSError as exc:
            free = SagePorts.find_free_port(port + 1, host)
            raise fail(f"{exc}; try --port {free}") from None
        console.print(f"SAGE dashboard at [bold]http://{host}:{bound}/[/bold] (Ctrl-C to stop)")
        return bound

    asyncio.run(serve_until_signalled(start, server.stop_async, None))
