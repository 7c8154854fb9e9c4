"""``sage jobmanager`` and ``sage job``: run the JobManager, and inspect and control its jobs.

``sage jobmanager start`` runs the JobManager as a background process (``--foreground`` in
this one) listening on 127.0.0.1:19001 unless told otherwise; its pid and port are kept in
``$SAGE_HOME/jobmanager/server.json`` and its output in ``jobmanager.log`` beside it. The
``sage job`` commands talk to it with the token of this account (or
``$SAGE_JOBMANAGER_TOKEN``); without ``--host``/``--port`` they use the JobManager started
from this ``$SAGE_HOME``, else 127.0.0.1:19001.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sage.cli.errors import fail
from sage.common.config.ports import SagePorts
from sage.common.errors import ConfigError, SageError
from sage.common.processes import SpawnError, is_running, spawn_module, terminate
from sage.kernel.jobmanager.client import JobManagerClient
from sage.kernel.jobmanager.daemon import log_file, read_state, state_file
from sage.kernel.jobmanager.protocol import ENDED, MAX_WAIT_S, JobInfo, metrics_from_dict
from sage.kernel.jobmanager.token import TOKEN_ENV, token_file

__all__ = ["job_app", "jobmanager_app"]

jobmanager_app = typer.Typer(help="Run the JobManager, which runs RemoteEnvironment jobs on Ray.")
job_app = typer.Typer(help="List, inspect, stop and read the logs of the JobManager's jobs.")
console = Console(width=None if sys.stdout.isatty() else 120)

SERVER_MODULE = "sage.kernel.jobmanager"
_STATUS_STYLE = {
    "running": "cyan",
    "stopping": "yellow",
    "finished": "green",
    "failed": "red",
    "cancelled": "magenta",
}

HostOption = Annotated[
    str | None,
    typer.Option(help="JobManager address (default: the one started here, else 127.0.0.1)."),
]
PortOption = Annotated[
    int | None,
    typer.Option(help="JobManager port (default: the one started here, else 19001)."),
]


class Runtime(StrEnum):
    """Where the JobManager runs jobs."""

    RAY = "ray"
    LOCAL = "local"


def _running_state() -> dict[str, Any] | None:
    """The state file of a JobManager started from this ``$SAGE_HOME`` that still runs."""
    state = read_state()
    return state if state and is_running(int(state["pid"]), state.get("started")) else None


def _address(host: str | None, port: int | None) -> tuple[str, int]:
    state = _running_state() if host is None or port is None else None
    default_host = state["host"] if state else "127.0.0.1"
    default_port = int(state["port"]) if state else SagePorts.JOBMANAGER_DEFAULT
    return host or default_host, port or default_port


@contextmanager
def _client(host: str | None, port: int | None) -> Iterator[JobManagerClient]:
    """A client for the addressed JobManager; SAGE's errors become a one-line message."""
    try:
        with JobManagerClient(*_address(host, port)) as client:
            yield client
    except SageError as exc:
        raise fail(str(exc)) from None


def _status(status: str) -> str:
    return f"[{_STATUS_STYLE.get(status, 'white')}]{status}[/]"


def _when(unix: float | None) -> str:
    return "-" if unix is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix))


def _error_text(info: JobInfo, limit: int | None = None) -> str:
    if info.error is None:
        return ""
    text = f"{info.error.type}: {info.error.message}"
    return escape(text if limit is None or len(text) <= limit else text[: limit - 3] + "...")


# -- sage jobmanager ------------------------------------------------------------------------


@jobmanager_app.command("start")
def jobmanager_start(
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on. Keep 127.0.0.1 unless other machines must submit: "
            "the token is then the only protection, sent in plain HTTP."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = SagePorts.JOBMANAGER_DEFAULT,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster to run jobs on ('auto', 'HOST:6379', 'ray://HOST:10001'); "
            "default: the first job's ray.address, else a local cluster."
        ),
    ] = None,
    runtime: Annotated[
        Runtime,
        typer.Option(help="ray, or local: jobs run on threads of the JobManager process."),
    ] = Runtime.RAY,
    foreground: Annotated[
        bool, typer.Option("--foreground", help="Run in this process until Ctrl-C.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds the JobManager may take to start.")] = 60,
) -> None:
    """Start the JobManager (in the background unless --foreground)."""
    state = _running_state()
    if state:
        raise fail(
            f"a JobManager is already running at {state['host']}:{state['port']} "
            f"(pid {state['pid']}); stop it with `sage jobmanager stop`"
        )
    if not SagePorts.is_port_free(port, host):
        free = SagePorts.find_free_port(port + 1, host)
        raise fail(f"port {port} on {host} is in use; pick a free one, e.g. --port {free}")
    args = ["--host", host, "--port", str(port), "--runtime", runtime.value]
    if ray_address:
        args += ["--ray-address", ray_address]
    if foreground:
        from sage.kernel.jobmanager.daemon import main

        console.print(f"JobManager on {host}:{port}; Ctrl-C stops it")
        main(args)
        return
    log = log_file()
    log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        with console.status("starting the JobManager..."):
            pid, bound = spawn_module(SERVER_MODULE, args, log, timeout)
    except SpawnError as exc:
        raise fail(f"the JobManager {exc}") from None
    with _client(host, bound) as client:
        health = client.health()
    token = f"${TOKEN_ENV}" if os.environ.get(TOKEN_ENV, "").strip() else str(token_file())
    console.print(
        f"[green]ready[/green]: JobManager at {host}:{bound} (pid {pid})", highlight=False
    )
    console.print(f"  runtime: {health.runtime}", highlight=False)
    console.print(f"  token:   {token}", highlight=False)
    console.print(f"  log:     {log}", highlight=False)
    console.print(
        f'  submit with RemoteEnvironment("my_job", host="{host}", port={bound})', highlight=False
    )


@jobmanager_app.command("stop")
def jobmanager_stop(
    timeout: Annotated[
        float, typer.Option(help="Seconds to let running jobs be cancelled before killing it.")
    ] = 60,
) -> None:
    """Stop the JobManager started from this $SAGE_HOME (its running jobs are cancelled)."""
    state = _running_state()
    if state is None:
        state_file().unlink(missing_ok=True)  # left by a JobManager that was killed
        console.print("no JobManager is running")
        return
    pid = int(state["pid"])
    with console.status(f"stopping the JobManager (pid {pid})..."):
        graceful = terminate(pid, timeout, group=False, started=state.get("started"))
    state_file().unlink(missing_ok=True)
    how = "stopped" if graceful else f"killed (it did not exit within {timeout:g} s)"
    console.print(f"{how} the JobManager at {state['host']}:{state['port']} (pid {pid})")


@jobmanager_app.command("restart")
def jobmanager_restart(
    timeout: Annotated[
        float,
        typer.Option(help="Seconds to let running jobs be cancelled, and to start again."),
    ] = 60,
) -> None:
    """Stop the JobManager started from this $SAGE_HOME and start it again on the same
    address with the same runtime (its running jobs are cancelled)."""
    state = _running_state()
    if state is None:
        raise fail("no JobManager is running here; start one with `sage jobmanager start`")
    # the state file describes the runtime ("local (threads of ...)"): its first word
    runtime = Runtime(str(state.get("runtime") or Runtime.RAY.value).split()[0])
    jobmanager_stop(timeout=timeout)
    jobmanager_start(
        host=str(state["host"]),
        port=int(state["port"]),
        ray_address=None,
        runtime=runtime,
        foreground=False,
        timeout=timeout,
    )


@jobmanager_app.command("status")
def jobmanager_status(host: HostOption = None, port: PortOption = None) -> None:
    """Whether the JobManager answers, its runtime and its jobs (exit code 1 if not running)."""
    address = _address(host, port)
    try:
        with JobManagerClient(*address) as client:
            health = client.health()
            jobs = client.list()
    except ConfigError as exc:  # it runs, but refuses this client's token
        raise fail(str(exc)) from None
    except SageError as exc:
        raise fail(f"not running: {exc}") from None
    state = _running_state()
    pid = f" (pid {state['pid']})" if state and int(state["port"]) == address[1] else ""
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.status] = counts.get(job.status, 0) + 1
    summary = ", ".join(f"{n} {_status(s)}" for s, n in sorted(counts.items())) or "none"
    console.print(
        f"[green]running[/green]: JobManager at {address[0]}:{address[1]}{pid}", highlight=False
    )
    console.print(f"  runtime: {health.runtime}", highlight=False)
    console.print(f"  jobs:    {health.jobs} ({summary})", highlight=False)


# -- sage job ---------------------------------------------------------------------------------


@job_app.command("list")
def job_list(host: HostOption = None, port: PortOption = None) -> None:
    """List the jobs the JobManager keeps, oldest first."""
    host, port = _address(host, port)
    with _client(host, port) as client:
        jobs = client.list()
    if not jobs:
        console.print("no jobs yet; submit one with RemoteEnvironment(...).submit()")
        return
    table = Table(title=f"jobs on {host}:{port}")
    for column in ("job", "name", "status", "submitted", "elapsed", "error"):
        table.add_column(column, overflow="fold")
    for job in jobs:
        table.add_row(
            job.job_id,
            job.name,
            _status(job.status),
            _when(job.submitted_at),
            f"{job.elapsed_s:.1f} s",
            _error_text(job, limit=80),
        )
    console.print(table)


@job_app.command("show", help="Show one job: status, times, error, operator table (= status).")
@job_app.command("status")
def job_status(
    job_id: Annotated[str, typer.Argument(help="The job's id (see `sage job list`).")],
    host: HostOption = None,
    port: PortOption = None,
) -> None:
    """Show one job: its status, times, error, and per-operator metrics."""
    with _client(host, port) as client:
        info = client.info(job_id)
        metrics = metrics_from_dict(client.metrics(job_id))
    console.print(f"[bold]{info.job_id}[/bold] ({escape(info.name)}): {_status(info.status)}")
    console.print(f"  submitted: {_when(info.submitted_at)}", highlight=False)
    console.print(f"  ended:     {_when(info.ended_at)}", highlight=False)
    console.print(f"  elapsed:   {info.elapsed_s:.2f} s", highlight=False)
    if info.error is not None:
        where = f" in {escape(info.error.operator)}" if info.error.operator else ""
        console.print(f"  [red]error{where}:[/red] {_error_text(info)}", highlight=False)
    if metrics.operators:
        table = Table(title="operators")
        for column in ("operator", "parallelism", "in", "out", "errors", "p95", "records/s"):
            table.add_column(column, justify="left" if column == "operator" else "right")
        for op in metrics.operators:
            table.add_row(
                op.operator,
                str(op.parallelism),
                str(op.records_in),
                str(op.records_out),
                str(op.errors),
                f"{op.p95_ms:.2f} ms",
                f"{op.throughput_rps:,.0f}",
            )
        console.print(table)


@job_app.command("stop")
def job_stop(
    job_id: Annotated[str, typer.Argument(help="The job's id (see `sage job list`).")],
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the job to end (0: do not wait).")
    ] = 60,
    force: Annotated[
        bool,
        typer.Option(
            "--force", "-f", help="Cancel now, dropping records in flight (= sage job cancel)."
        ),
    ] = False,
    host: HostOption = None,
    port: PortOption = None,
) -> None:
    """Stop a job gracefully: sources end and records in flight reach the sinks."""
    if force:
        job_cancel(job_id, host, port)
        return
    with _client(host, port) as client:
        info = client.stop(job_id)
        if timeout > 0 and not info.ended:
            info = client.wait(job_id, timeout)
    if info.ended or timeout <= 0:
        console.print(f"{info.job_id}: {_status(info.status)} {_error_text(info)}")
    else:
        raise fail(
            f"{job_id} is still {info.status} after {timeout:g} s; "
            f"`sage job cancel {job_id}` ends it now",
        )


@job_app.command("cancel")
def job_cancel(
    job_id: Annotated[str, typer.Argument(help="The job's id (see `sage job list`).")],
    host: HostOption = None,
    port: PortOption = None,
) -> None:
    """Cancel a job now, dropping the records in flight."""
    with _client(host, port) as client:
        client.cancel(job_id)
        info = client.wait(job_id, 30)
    console.print(f"{info.job_id}: {_status(info.status)}")


@job_app.command("logs")
def job_logs(
    job_id: Annotated[str, typer.Argument(help="The job's id (see `sage job list`).")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until the job ends.")
    ] = False,
    host: HostOption = None,
    port: PortOption = None,
) -> None:
    """Print a job's log: submission, start, end, errors with their traceback, and what its
    functions printed and logged (each line after its operator instance)."""
    with _client(host, port) as client:
        page = client.logs(job_id)
        while True:
            for line in page.lines:
                console.print(line, highlight=False, markup=False, soft_wrap=True)
            # A job's last lines are written before it is marked ended: a page that says
            # "ended" holds them all.
            if not follow or page.status in ENDED:
                return
            page = client.logs(job_id, page.next, wait=MAX_WAIT_S)
