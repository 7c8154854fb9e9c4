"""``sage llm engine list | start | stop``: add an engine instance to the running stack, or
drain one out of it, while the gateway keeps serving.

``start`` starts one more engine process like the stack's own (the engine and model
``sage llm serve`` was given, by default), waits until it is ready, registers it on the
gateway (``POST /v1/management/instances``) and records it in the state file as
``llm-2``, ``embedding-2``... (``pids``, ``started`` and an ``engines`` entry), so that
``sage llm stop`` stops it and ``sage llm logs llm-2`` shows its log. ``stop`` drains it
on the gateway (``DELETE /v1/management/instances/<id>?drain=true``: it gets no new
request and the call returns once those in flight are done), then ends its process and
forgets it. The gateway refuses to drain its model's last healthy instance unless
``--force``. Calls carry ``SAGE_API_KEY`` (environment or ``.env``) as the bearer key.

Example::

    sage llm engine start            # llm-2: the stack's model on a free port
    sage llm engine list
    sage llm engine stop llm-2       # drained first: no request is lost
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.markup import escape
from rich.table import Table

from sage.cli.errors import fail, usage
from sage.cli.llm.app import console
from sage.cli.llm.gateway import INSTANCES, StackGateway, error_code, error_message
from sage.cli.llm.launch import check_port, engine_options
from sage.cli.llm.serve_args import Engine, embedding_engine
from sage.cli.llm.state import alive, load_state, state_dir, write_state
from sage.common.processes import started_at
from sage.inference.deploy.processes import SpawnError, spawn_engine, terminate

__all__ = ["Kind", "engine_app", "list_engines", "start", "stop"]

engine_app = typer.Typer(
    help="List, add or drain the engine instances behind the running gateway.",
    no_args_is_help=True,
)


class Kind(StrEnum):
    """What an engine serves."""

    LLM = "llm"
    EMBEDDING = "embedding"


def _running() -> dict[str, Any]:
    """The running stack's state (exit 1 if there is none)."""
    state = load_state()
    if not state or "gateway" not in state.get("pids", {}) or not alive(state, "gateway"):
        raise fail("nothing is running; start it with sage llm serve")
    return state


def _engines(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The stack's engine processes by name: kind, port, model, instance id, pid."""
    found: dict[str, dict[str, Any]] = {}
    ports, models = state.get("ports") or {}, state.get("models") or {}
    for kind in Kind:  # the engines serve started, registered as host:port
        if kind in state["pids"] and ports.get(kind):
            found[kind] = {
                "kind": str(kind),
                "port": ports[kind],
                "model": models.get(kind),
                "instance_id": f"{state['host']}:{ports[kind]}",
            }
    for name, entry in (state.get("engines") or {}).items():
        found[name] = dict(entry)
    for name, entry in found.items():
        entry["pid"] = state["pids"].get(name)
    return found


def _log(name: str) -> Path | None:
    path = state_dir() / "logs" / f"{name}.log"
    return path if path.exists() else None


@engine_app.command("list")
def list_engines(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the rows as JSON (for scripts).")
    ] = False,
) -> None:
    """Show the gateway's instances and the processes the stack started for them."""
    state = _running()
    by_id = {e["instance_id"]: (name, e) for name, e in _engines(state).items()}
    rows: list[dict[str, Any]] = []
    for i in StackGateway(state).instances():
        name, entry = by_id.pop(i["instance_id"], (None, {}))
        rows.append({"name": name, **i, "pid": entry.get("pid"), "log": _log(name or "")})
    for started_name, started in by_id.values():  # started, not (or no longer) registered
        rows.append(
            {**started, "name": started_name, "instance_id": None, "log": _log(started_name)}
        )
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    table = Table(
        title=f"engine instances behind the gateway (port {state['ports']['gateway']})",
        caption=f"logs in {state_dir()}",
    )
    for column in ("name", "instance", "kind", "model", "address", "healthy", "draining"):
        table.add_column(column, overflow="fold")
    for column in ("in flight", "requests", "pid"):
        table.add_column(column, justify="right")
    table.add_column("log", overflow="fold")
    for row in rows:
        registered = row["instance_id"] is not None
        healthy = row.get("healthy")
        table.add_row(
            escape(row["name"] or "-"),
            escape(row["instance_id"] or "(not registered)"),
            row.get("instance_type") or row.get("kind") or "-",
            escape(str(row.get("model_name") or row.get("model") or "-")),
            f"{row.get('host', state['host'])}:{row['port']}",
            "-" if not registered else "[green]yes[/green]" if healthy else "[red]no[/red]",
            "-" if not registered else "[yellow]yes[/yellow]" if row["draining"] else "no",
            str(row.get("in_flight", "-")),
            str(row.get("requests", "-")),
            str(row["pid"] or "-"),
            escape(str(row["log"].relative_to(state_dir())) if row["log"] else "-"),
        )
    console.print(table)


def _next_name(state: dict[str, Any], kind: Kind) -> str:
    taken = set(state["pids"]) | set(state.get("engines") or {})
    n = 2
    while f"{kind}-{n}" in taken:
        n += 1
    return f"{kind}-{n}"


def _choose_engine(kind: Kind, engine: Engine | None, recorded: str) -> Engine:
    """The engine to start: the one given, else the stack's (an embedding model is served
    by ``cpu`` unless the stack runs stand-ins, as ``serve`` does)."""
    if engine is None:
        try:
            engine = Engine(recorded)
        except ValueError:
            engine = Engine.CPU
    elif kind is Kind.EMBEDDING and engine is Engine.VLLM:
        raise usage(
            "--engine vllm serves chat models here; start an embedding engine with "
            "--engine cpu, stub or simulated"
        )
    return embedding_engine(engine) if kind is Kind.EMBEDDING else engine


def _spawn(
    name: str,
    kind: Kind,
    model: str,
    engine: Engine,
    host: str,
    port: int | None,
    args: dict[str, Any],
    extra: list[str],
    timeout: float,
) -> tuple[int, int, str]:
    """Start the engine process; ``(pid, port, served model name)`` once it is ready."""
    logs = state_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with console.status(f"starting {name} ({engine} serving {model})..."):
        if engine is Engine.VLLM:
            from sage.common.config.ports import SagePorts
            from sage.common.errors import ConfigError
            from sage.inference.engines.vllm import launch_vllm

            port = port or SagePorts.any_free_port(host)
            try:
                pid = launch_vllm(
                    model,
                    host,
                    port,
                    logs / f"{name}.log",
                    args.get("gpu_memory"),
                    args.get("dtype"),
                    timeout,
                    tensor_parallel=int(args.get("tensor_parallel") or 1),
                    max_model_len=args.get("max_model_len"),
                )
            except ConfigError as exc:
                raise fail(f"{name}: {exc}") from None
            return pid, port, model
        max_model_len = args.get("max_model_len") if kind is Kind.LLM else None
        try:
            return spawn_engine(
                str(kind),
                model,
                str(engine),
                logs / f"{name}.log",
                host=host,
                port=port or 0,
                timeout_s=timeout,
                extra=extra,
                max_model_len=max_model_len,
            )
        except SpawnError as exc:
            raise fail(f"{name} {exc} (see sage llm logs {name})") from None


def _register(gateway: StackGateway, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """Register the instance; its state once the gateway's first health probe passed.

    The engine answered its readiness check before this is called, and the gateway probes
    a new instance before it answers the registration: a failed probe is a real fault
    (a wrong address, an engine that died), not a start still under way.

    Raises:
        typer.Exit: 1 if the gateway refused it or its probe failed (it is unregistered
            again).
    """
    answer = gateway.call("POST", INSTANCES, json=body, timeout=30.0)
    if answer.status_code != 201:
        raise fail(f"the gateway refused {name}: {error_message(answer)}")
    instance: dict[str, Any] = answer.json()["instance"]
    if not instance["healthy"]:
        gateway.call("DELETE", f"{INSTANCES}/{quote(instance['instance_id'], safe='')}")
        raise fail(f"the gateway could not reach {name}: {instance['last_error']}")
    return instance


@engine_app.command()
def start(
    kind: Annotated[Kind, typer.Option(help="What the engine serves.")] = Kind.LLM,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model (default: the stack's model of that kind)."),
    ] = None,
    engine: Annotated[
        Engine | None, typer.Option(help="Engine (default: the stack's).", show_default=False)
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", "-p", min=1, max=65535, help="Port (default: a free one)."),
    ] = None,
    max_batch: Annotated[
        int | None,
        typer.Option(min=1, help="Sequences decoded together (default: the stack's)."),
    ] = None,
    instance_id: Annotated[
        str | None,
        typer.Option("--id", help="Instance id on the gateway (default: host:port)."),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds the engine may take to start.")
    ] = 600.0,
) -> None:
    """Start one more engine like the stack's and put it behind the gateway."""
    state = _running()
    args: dict[str, Any] = state.get("args") or {}
    if state.get("foreground"):
        raise fail(
            "the stack runs in the foreground (sage llm serve --foreground), which would "
            "not stop an engine added now; serve it in the background to add engines"
        )
    chosen = _choose_engine(kind, engine, str(args.get("engine") or "cpu"))
    recorded = args.get("model") if kind is Kind.LLM else args.get("embedding_model")
    model = model or recorded or (state.get("models") or {}).get(kind)
    if not model:
        raise usage(f"--model: the stack serves no {kind} model; name one with -m/--model")
    if instance_id is not None:
        from pydantic import ValidationError

        from sage.inference.protocol import InstanceSpec

        try:
            InstanceSpec.model_validate({"instance_id": instance_id})
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"]
            raise usage(f"--id {instance_id!r}: {reason}; e.g. --id {kind}-2") from None
    host = str(state["host"])
    gateway = StackGateway(state)
    if instance_id is not None and instance_id in {i["instance_id"] for i in gateway.instances()}:
        raise usage(f"--id {instance_id!r} is already an instance of the gateway; pick another")
    if port is not None:
        check_port(port, f"{kind} engine", "--port", host)
    name = _next_name(state, kind)
    extra = engine_options(
        kind,
        chosen,
        args.get("sim_profile"),
        max_batch=max_batch or args.get("max_batch") or 8,
        dtype=args.get("dtype"),
    )
    pid, bound, served = _spawn(name, kind, model, chosen, host, port, args, extra, timeout)
    try:
        body: dict[str, Any] = {
            "host": host,
            "port": bound,
            "model_name": served,
            "instance_type": str(kind),
        }
        if instance_id is not None:
            body["instance_id"] = instance_id
        instance = _register(gateway, name, body)
        latest = load_state()  # re-read: record ours beside what changed meanwhile
        if latest is None:
            raise fail(f"the stack was stopped meanwhile; {name} is stopped too")
        latest["pids"][name] = pid
        latest.setdefault("started", {})[name] = started_at(pid)
        latest.setdefault("engines", {})[name] = {
            "kind": str(kind),
            "port": bound,
            "model": served,
            "engine": str(chosen),
            "instance_id": instance["instance_id"],
        }
        write_state(latest)
    except BaseException:
        terminate(pid, 5.0)  # nothing left behind
        raise
    console.print(
        f"[green]ready[/green]: {name} (pid {pid}) serves {escape(served)} on {host}:{bound} "
        f"as instance {escape(instance['instance_id'])}; logs: sage llm logs {name}"
    )


def _resolve(state: dict[str, Any], gateway: StackGateway, target: str) -> tuple[str | None, str]:
    """``(name or None, instance id)`` of a name or an instance id (exit 2 if unknown)."""
    if target == "gateway":
        raise usage("the gateway is not an engine; sage llm stop stops the whole stack")
    engines = _engines(state)
    if target in engines:
        return target, str(engines[target]["instance_id"])
    for name, entry in engines.items():
        if entry["instance_id"] == target:
            return name, target
    if target in {i["instance_id"] for i in gateway.instances()}:
        return None, target  # added through the API: no process of ours
    known = ", ".join([*engines, *(e["instance_id"] for e in engines.values())]) or "(none)"
    raise usage(f"no engine {target!r}; give a name or an instance id of: {known}")


@engine_app.command()
def stop(
    target: Annotated[
        str,
        typer.Argument(
            metavar="NAME_OR_INSTANCE_ID",
            help="A name (llm-2) or an instance id, as sage llm engine list shows them.",
        ),
    ],
    timeout: Annotated[
        float,
        typer.Option(
            min=0.1, max=86_400, help="Seconds its requests in flight may take to finish."
        ),
    ] = 60.0,
    force: Annotated[
        bool,
        typer.Option(help="Drain it even if it is its model's last healthy instance."),
    ] = False,
) -> None:
    """Drain an engine on the gateway (no request lost), then stop its process."""
    state = _running()
    gateway = StackGateway(state)
    name, instance_id = _resolve(state, gateway, target)
    if name in ("llm", "embedding") and state.get("foreground"):
        raise fail(
            f"{name} was started by sage llm serve --foreground, which stops the whole stack "
            "when it exits; stop the stack with Ctrl-C there"
        )
    params = {"drain": "true", "timeout_s": str(timeout)}
    if force:
        params["force"] = "true"
    path = f"{INSTANCES}/{quote(instance_id, safe='')}"
    with console.status(f"draining {instance_id} (waiting for its requests in flight)..."):
        answer = gateway.call("DELETE", path, params=params, timeout=timeout + 30.0)
    if answer.status_code == 404:
        console.print(f"the gateway has no instance {escape(instance_id)} (already removed)")
    elif answer.status_code == 409 and error_code(answer) == "last_instance":
        raise fail(f"{error_message(answer)} (here: sage llm engine stop {target} --force)")
    elif answer.status_code == 409 and error_code(answer) == "drain_timeout":
        raise fail(f"{error_message(answer)} (--timeout); its process is left running")
    elif answer.status_code != 200:
        raise fail(f"the gateway refused to drain {instance_id}: {error_message(answer)}")
    drained = answer.json().get("drained") if answer.status_code == 200 else None
    if name is None:
        console.print(f"drained {escape(instance_id)}; it was not started by the stack")
        return
    pid = state["pids"].get(name)
    if pid is not None:
        terminate(pid, 20.0, started=(state.get("started") or {}).get(name))
    latest = load_state()
    if latest is not None:  # (None: the stack was stopped meanwhile)
        for key in ("pids", "started", "engines"):
            (latest.get(key) or {}).pop(name, None)
        write_state(latest)
    plural = "s" * (drained != 1)
    waited = f"; {drained} request{plural} in flight finished first" if drained else ""
    console.print(f"drained and stopped {name} (pid {pid}){waited}")
