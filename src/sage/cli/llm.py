"""``sage llm``: start, inspect and stop the local inference stack.

``sage llm serve`` starts one process per engine (the LLM on ``SagePorts.LLM_DEFAULT`` or
8901 on WSL2, the embedding model on ``SagePorts.EMBEDDING_DEFAULT``) and the gateway on
``SagePorts.GATEWAY_DEFAULT`` with the engines registered as its instances. State and logs
live in ``$SAGE_HOME/llm`` (default ``~/.sage/llm``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sage.common.config.paths import sage_home
from sage.common.config.ports import SagePorts
from sage.common.errors import ConfigError
from sage.common.processes import is_running
from sage.inference.deploy.processes import (
    SpawnError,
    spawn_engine,
    spawn_gateway,
    terminate,
)

llm_app = typer.Typer(help="Run and inspect the local inference stack (engines + gateway).")
console = Console(width=None if sys.stdout.isatty() else 120)


def state_dir() -> Path:
    """``$SAGE_HOME/llm`` (default ``~/.sage/llm``)."""
    return sage_home() / "llm"


def _state_file() -> Path:
    return state_dir() / "state.json"


def load_state() -> dict[str, Any] | None:
    """What the running stack is (or None)."""
    try:
        return dict(json.loads(_state_file().read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


def _check_port(port: int, what: str, option: str, host: str) -> None:
    if not SagePorts.is_port_free(port, host):
        free = SagePorts.find_free_port(port + 1, host)
        raise _fail(f"port {port} ({what}) is in use; pick a free one, e.g. {option} {free}")


def _start_engine(
    kind: str,
    model: str,
    engine: str,
    host: str,
    port: int,
    logs: Path,
    timeout_s: float,
    *extra: str,
) -> tuple[int, str]:
    """Start one SAGE engine server process; return its pid and the name it serves."""
    try:
        pid, _, name = spawn_engine(
            kind,
            model,
            engine,
            logs / f"{kind}.log",
            host=host,
            port=port,
            timeout_s=timeout_s,
            extra=extra,
        )
    except SpawnError as exc:
        raise _fail(f"{kind} {exc}") from None
    return pid, name


@llm_app.command()
def serve(
    model: Annotated[
        str,
        typer.Option(help="Chat model: a bundled name (smollm2), a path, or a cached hub name."),
    ] = "smollm2",
    embedding_model: Annotated[
        str | None, typer.Option(help="Embedding model (implies --with-embedding).")
    ] = None,
    with_embedding: Annotated[bool, typer.Option(help="Also serve the embedding model.")] = False,
    port: Annotated[
        int | None, typer.Option(help="LLM engine port (default 8001, 8901 on WSL2).")
    ] = None,
    embedding_port: Annotated[
        int, typer.Option(help="Embedding engine port.")
    ] = SagePorts.EMBEDDING_DEFAULT,
    gateway_port: Annotated[int, typer.Option(help="Gateway port.")] = SagePorts.GATEWAY_DEFAULT,
    engine: Annotated[
        str,
        typer.Option(
            help="cpu (transformers), vllm (GPU), stub (answers at once; for testing), or "
            "simulated (a simulator of a batched GPU engine's timing; any model name)."
        ),
    ] = "cpu",
    gpu_memory: Annotated[
        float | None, typer.Option(help="vLLM --gpu-memory-utilization (0-1).")
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            help="vLLM --dtype (auto, half, bfloat16...); CPU engine: float32 or bfloat16."
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    max_batch: Annotated[int, typer.Option(help="CPU engine: sequences decoded together.")] = 8,
    sim_profile: Annotated[
        str | None,
        typer.Option(
            help="Simulated engine: a JSON object of SimulatorProfile fields, "
            """e.g. '{"max_batch": 8, "decode_base_ms": 20}'."""
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds each process may take to start.")] = 600.0,
) -> None:
    """Start the engines and the gateway in the background; return when all are ready."""
    state = load_state()
    if state and any(is_running(p) for p in state["pids"].values()):
        raise _fail("the stack is already running (see sage llm status); run sage llm stop first")
    if engine not in ("cpu", "vllm", "stub", "simulated"):
        raise _fail(f"--engine {engine!r} is unknown; use cpu, vllm, stub or simulated")
    sim_args: list[str] = []
    if sim_profile is not None:
        if engine != "simulated":
            raise _fail("--sim-profile is for --engine simulated")
        from sage.inference.engines.simulated import SimulatorProfile

        try:
            sim_args = ["--sim-profile", SimulatorProfile.from_json(sim_profile).to_json()]
        except ConfigError as exc:
            raise _fail(f"--sim-profile: {exc}") from None
    llm_port = port or SagePorts.get_recommended_llm_port()
    serve_embedding = with_embedding or embedding_model is not None
    embedding_model = embedding_model or "all-minilm-l6-v2"
    if engine not in ("stub", "simulated"):  # these serve any name; nothing is loaded
        from sage.inference.engines.models import resolve_model

        try:
            if engine == "cpu":
                resolve_model(model, "llm")
            else:
                from sage.inference.engines.vllm import (
                    check_vllm_available,
                    vllm_command,
                )

                vllm_command(model, host, llm_port, gpu_memory, dtype)  # validates the options
                check_vllm_available()
            if serve_embedding:
                resolve_model(embedding_model, "embedding")
        except ConfigError as exc:
            raise _fail(str(exc)) from None
    _check_port(llm_port, "LLM engine", "--port", host)
    if serve_embedding:
        _check_port(embedding_port, "embedding engine", "--embedding-port", host)
    _check_port(gateway_port, "gateway", "--gateway-port", host)

    logs = state_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pids: dict[str, int] = {}
    llm_name = model  # vLLM serves the model under the name it was given
    try:
        with console.status("starting the LLM engine (loading the model)..."):
            if engine == "vllm":
                from sage.inference.engines.vllm import launch_vllm

                try:
                    pids["llm"] = launch_vllm(
                        model, host, llm_port, logs / "llm.log", gpu_memory, dtype, timeout
                    )
                except ConfigError as exc:
                    raise _fail(str(exc)) from None
            else:
                cpu_args = ["--max-batch", str(max_batch), *sim_args]
                if dtype and engine == "cpu":
                    cpu_args += ["--dtype", dtype]
                pids["llm"], llm_name = _start_engine(
                    "llm", model, engine, host, llm_port, logs, timeout, *cpu_args
                )
        backends: dict[str, list[dict[str, Any]]] = {
            "llm_backends": [{"host": host, "port": llm_port, "model_name": llm_name}],
            "embedding_backends": [],
        }
        if serve_embedding:
            with console.status("starting the embedding engine..."):
                emb_engine = engine if engine in ("stub", "simulated") else "cpu"
                pids["embedding"], emb_name = _start_engine(
                    "embedding",
                    embedding_model,
                    emb_engine,
                    host,
                    embedding_port,
                    logs,
                    timeout,
                    *sim_args,
                )
            backends["embedding_backends"] = [
                {
                    "host": host,
                    "port": embedding_port,
                    "model_name": emb_name,
                    "instance_type": "embedding",
                }
            ]
        with console.status("starting the gateway..."):
            try:
                pids["gateway"], _ = spawn_gateway(
                    {"host": host, "port": gateway_port, **backends},
                    state_dir() / "gateway.json",
                    logs / "gateway.log",
                )
            except SpawnError as exc:
                raise _fail(f"gateway {exc}") from None
    except BaseException:
        for pid in pids.values():
            terminate(pid)
        raise
    _state_file().write_text(
        json.dumps(
            {
                "pids": pids,
                "host": host,
                "ports": {
                    "llm": llm_port,
                    "embedding": embedding_port if serve_embedding else None,
                    "gateway": gateway_port,
                },
                "models": {"llm": llm_name, "embedding": emb_name if serve_embedding else None},
                "started_at": time.time(),
            }
        ),
        encoding="utf-8",
    )
    console.print(
        f"[green]ready[/green]: gateway http://{host}:{gateway_port}/v1 "
        f"(LLM {llm_name} on {llm_port}"
        + (f", embeddings {emb_name} on {embedding_port})" if serve_embedding else ")")
    )


@llm_app.command()
def status() -> None:
    """Show the instances behind the gateway and whether they are healthy."""
    import httpx

    state = load_state()
    if not state:
        raise _fail("nothing is running; start it with sage llm serve")
    table = Table(title="SAGE inference stack")
    for column in ("process", "pid", "alive"):
        table.add_column(column)
    for name, pid in state["pids"].items():
        table.add_row(name, str(pid), "[green]yes[/green]" if is_running(pid) else "[red]no[/red]")
    console.print(table)
    url = f"http://{state['host']}:{state['ports']['gateway']}/v1/management/instances"
    try:
        instances = httpx.get(url, timeout=5).json()["instances"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise _fail(f"the gateway did not answer at {url}: {exc}") from None
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
            "[green]healthy[/green]" if i["healthy"] else f"[red]unhealthy[/red] {i['last_error']}",
            str(i["in_flight"]),
            str(i["requests"]),
            str(i["errors"]),
            f"{i['p95_ms']:.1f} ms",
        )
    console.print(view)
    if not all(i["healthy"] for i in instances):
        raise typer.Exit(1)


@llm_app.command()
def stop() -> None:
    """Stop every process of the stack (engines and gateway); none is left behind."""
    state = load_state()
    if not state:
        console.print("nothing is running")
        return
    for name, pid in state["pids"].items():
        terminate(pid)
        console.print(f"stopped {name} (pid {pid})")
    left = [f"{n} ({p})" for n, p in state["pids"].items() if is_running(p)]
    _state_file().unlink(missing_ok=True)
    if left:
        raise _fail(f"still running: {', '.join(left)}")


@llm_app.command()
def logs(
    name: Annotated[
        str | None, typer.Argument(help="llm, embedding or gateway (default: all).")
    ] = None,
    lines: Annotated[
        int, typer.Option("--lines", "-n", help="Lines from the end of each log.")
    ] = 40,
) -> None:
    """Print the end of the processes' logs."""
    folder = state_dir() / "logs"
    files = [folder / f"{name}.log"] if name else sorted(folder.glob("*.log"))
    if not files or not all(f.exists() for f in files):
        raise _fail(f"no logs in {folder}" + (f" for {name!r}" if name else ""))
    for path in files:
        console.rule(path.name)
        console.print(
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:]),
            highlight=False,
            markup=False,
        )
