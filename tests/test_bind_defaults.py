"""Every server SAGE starts listens on loopback unless told otherwise.

Cheap checks of the defaults (function signatures, config dataclasses, command-line options),
no server started: another machine can reach a SAGE server only when someone asked for it.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any, NoReturn

import pytest
import typer

from sage.cli.main import app
from sage.common.config.ports import SagePorts
from sage.common.http.server import HttpServer
from sage.dashboard.server import DashboardServer
from sage.inference.config import SchedulingPolicyType, UnifiedServerConfig
from sage.inference.deploy import processes, serving
from sage.inference.deploy.stack import LocalStack
from sage.inference.engines.server import EngineServer
from sage.kernel.jobmanager import daemon as jobmanager_daemon
from sage.kernel.jobmanager import server as jobmanager
from sage.middleware.services.control_plane import ControlPlaneServiceConfig

LOOPBACK = "127.0.0.1"


@pytest.mark.parametrize(
    "function",
    [
        HttpServer.start,  # every SAGE HTTP server listens through it
        jobmanager.JobManagerServer.__init__,
        jobmanager_daemon.serve,
        DashboardServer.__init__,  # `sage dashboard`
        EngineServer.__init__,
        LocalStack.__init__,  # its engine servers and gateway
        processes.spawn_engine,  # `sage llm serve` and the benchmarks' engine processes
        SagePorts.is_port_free,  # probes bind where the server will
        SagePorts.find_free_port,
        SagePorts.any_free_port,
    ],
    ids=lambda f: f.__qualname__,
)
def test_functions_that_start_servers_default_to_loopback(function: Callable[..., Any]) -> None:
    assert inspect.signature(function).parameters["host"].default == LOOPBACK


def test_the_gateway_configs_listen_on_loopback() -> None:
    assert UnifiedServerConfig().host == LOOPBACK  # the gateway, and `sage llm` gateways
    policy = SchedulingPolicyType.FIFO
    service = ControlPlaneServiceConfig(scheduling_policy=policy, instances=())
    assert service.server_config().host == LOOPBACK  # the control-plane service's gateway


def commands(command: Any, path: str = "sage") -> Iterator[tuple[str, Any]]:
    """Every command under ``command`` (typer's click objects), by its command line."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from commands(sub, f"{path} {name}")


def test_every_host_option_of_the_cli_defaults_to_loopback_or_to_what_runs() -> None:
    found = {}
    for path, command in commands(typer.main.get_command(app)):
        for param in command.params:
            if param.name == "host":
                found[path] = param.default
    # servers: loopback; clients (None): the running JobManager's address, else loopback
    assert found["sage llm serve"] == LOOPBACK
    assert found["sage jobmanager start"] == LOOPBACK
    assert set(found.values()) <= {LOOPBACK, None}, found


class _Parsed(Exception):
    """Carries the parser a ``main`` built, instead of running it."""


def parser_of(main: Callable[[list[str]], None]) -> argparse.ArgumentParser:
    """The command-line parser ``main`` builds (it stops there: nothing runs)."""

    def capture(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> NoReturn:
        raise _Parsed(self)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(_Parsed) as parsed:
        patch.setattr(argparse.ArgumentParser, "parse_args", capture)
        main([])
    parser: argparse.ArgumentParser = parsed.value.args[0]
    return parser


def test_the_server_processes_default_to_loopback() -> None:
    jobmanager_args = parser_of(jobmanager_daemon.main).parse_args([])
    assert jobmanager_args.host == LOOPBACK  # python -m sage.kernel.jobmanager
    engine_args = parser_of(serving.main).parse_args(
        ["engine", "--kind", "llm", "--model", "m", "--port", "0"]
    )
    assert engine_args.host == LOOPBACK  # an engine process of `sage llm serve`


def test_a_local_ray_cluster_starts_no_dashboard(monkeypatch: pytest.MonkeyPatch) -> None:
    """The local cluster the JobManager starts when given no address: no dashboard (a web
    server). Ray's own processes bind the machine's address (see the audit report)."""
    calls: list[dict[str, Any]] = []
    fake = SimpleNamespace(
        is_initialized=lambda: False,
        init=lambda **kwargs: calls.append(kwargs),
        nodes=lambda: [],
        get_runtime_context=lambda: SimpleNamespace(gcs_address=None),
    )
    monkeypatch.setitem(sys.modules, "ray", fake)
    from sage.kernel.runtime.ray.cluster import connect

    connect()
    assert calls and calls[0]["address"] == "local"
    assert calls[0]["include_dashboard"] is False
