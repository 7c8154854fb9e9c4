"""``sage llm``: start, inspect and stop the local inference stack.

``sage llm serve`` starts one process per engine (the LLM on ``SagePorts.LLM_DEFAULT`` or
8901 on WSL2, the embedding model on ``SagePorts.EMBEDDING_DEFAULT``) and the gateway on
``SagePorts.GATEWAY_DEFAULT`` with the engines registered as its instances. State and logs
live in ``$SAGE_HOME/llm`` (default ``~/.sage/llm``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sage.cli.errors import fail, stderr, usage
from sage.common.config.paths import sage_home
from sage.common.config.ports import SagePorts
from sage.common.errors import ConfigError
from sage.common.processes import is_running, started_at
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


class Engine(StrEnum):
    """What serves the chat model."""

    CPU = "cpu"
    LLAMA_CPP = "llama.cpp"
    TRANSFORMERS = "transformers"
    VLLM = "vllm"
    STUB = "stub"
    SIMULATED = "simulated"


class Dtype(StrEnum):
    """Weights' precision (the transformers engine takes float32 or bfloat16; a GGUF model's
    is its quantisation)."""

    AUTO = "auto"
    HALF = "half"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    FLOAT32 = "float32"


_CPU_DTYPES = (Dtype.FLOAT32, Dtype.BFLOAT16)
_CPU_ENGINES = (Engine.CPU, Engine.LLAMA_CPP, Engine.TRANSFORMERS)


def _check_port(port: int, what: str, option: str, host: str) -> None:
    if not SagePorts.is_port_free(port, host):
        free = SagePorts.find_free_port(port + 1, host)
        raise fail(f"port {port} ({what}) is in use; pick a free one, e.g. {option} {free}")


def _start_engine(
    kind: str,
    model: str,
    engine: str,
    host: str,
    port: int,
    logs: Path | None,
    timeout_s: float,
    *extra: str,
) -> tuple[int, str]:
    """Start one SAGE engine server process; return its pid and the name it serves."""
    try:
        pid, _, name = spawn_engine(
            kind,
            model,
            engine,
            None if logs is None else logs / f"{kind}.log",
            host=host,
            port=port,
            timeout_s=timeout_s,
            extra=extra,
        )
    except SpawnError as exc:
        raise fail(f"{kind} {exc}") from None
    return pid, name


def _check_models(
    engine: Engine,
    model: str,
    embedding_model: str | None,
    host: str,
    port: int,
    gpu_memory: float | None,
    dtype: Dtype | None,
) -> None:
    """Refuse (exit 2) a model or an option the engine cannot take, before starting anything;
    exit 1 if vLLM is asked for where it cannot run."""
    from sage.inference.engines.factory import cpu_llm_engine
    from sage.inference.engines.models import resolve_model

    if dtype is not None and engine in _CPU_ENGINES and dtype not in _CPU_DTYPES:
        raise usage(
            f"--dtype {dtype} is for vLLM; the transformers engine takes float32 or bfloat16"
        )
    try:
        if engine in _CPU_ENGINES:
            chosen = cpu_llm_engine(resolve_model(model, "llm"), engine)
            if dtype is not None and chosen == "llama.cpp":
                raise usage(
                    f"--dtype is for the transformers engine; {model} is served by llama.cpp, "
                    "whose precision is the GGUF file's quantisation (leave --dtype out)"
                )
        elif engine is Engine.VLLM:
            from sage.inference.engines.vllm import vllm_command

            vllm_command(model, host, port, gpu_memory, None if dtype is None else str(dtype))
        if embedding_model is not None:
            resolve_model(embedding_model, "embedding")
    except ConfigError as exc:
        raise usage(str(exc)) from None
    if engine is Engine.VLLM:
        from sage.inference.engines.vllm import check_vllm_available

        try:
            check_vllm_available()
        except ConfigError as exc:
            raise fail(str(exc)) from None


def _write_state(state: dict[str, Any]) -> None:
    _state_file().parent.mkdir(parents=True, exist_ok=True)
    _state_file().write_text(json.dumps(state), encoding="utf-8")


def _wait_for_a_signal(pids: dict[str, int]) -> None:
    """Block until Ctrl-C or SIGTERM, or until one of ``pids`` exits (``--foreground``)."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # as Ctrl-C
    try:
        while True:
            pid, _ = os.wait()  # wakes on a child's exit, or with the signal's exception
            ended = [name for name, p in pids.items() if p == pid]
            if ended:
                raise fail(f"the {ended[0]} process exited; stopping the others")
    except KeyboardInterrupt:
        stderr.print("stopping...")
    finally:
        signal.signal(signal.SIGTERM, previous)


def _read_tenants(path: Path) -> dict[str, Any]:
    """The tenants of ``--tenants``, checked as the gateway will check them.

    Raises:
        typer.Exit: (a usage error) the file cannot be read, is not JSON, or holds a bad
            tenant; the message names the file and the fix.
    """
    from sage.inference.config import UnifiedServerConfig

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise usage(f"--tenants {path}: cannot be read ({exc.strerror})") from None
    except ValueError as exc:
        raise usage(
            f"--tenants {path} is not JSON ({exc}); write an object such as "
            '{"acme": {"api_keys": ["sk-acme"], "weight": 2, "rpm": 600}}'
        ) from None
    try:
        UnifiedServerConfig(tenants=raw)
    except ConfigError as exc:
        raise usage(f"--tenants {path}: {exc}") from None
    return dict(raw)


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
        int | None,
        typer.Option(envvar="SAGE_LLM_PORT", help="LLM engine port (default 8001, 8901 on WSL2)."),
    ] = None,
    embedding_port: Annotated[
        int, typer.Option(envvar="SAGE_EMBEDDING_PORT", help="Embedding engine port.")
    ] = SagePorts.EMBEDDING_DEFAULT,
    gateway_port: Annotated[
        int, typer.Option(envvar="SAGE_GATEWAY_PORT", help="Gateway port.")
    ] = SagePorts.GATEWAY_DEFAULT,
    engine: Annotated[
        Engine,
        typer.Option(
            help="cpu (llama.cpp for a GGUF model, transformers for a Hugging Face "
            "checkpoint), llama.cpp, transformers, vllm (GPU), stub (answers at once; for "
            "testing), or simulated (a simulator of a batched GPU engine's timing; any model "
            "name)."
        ),
    ] = Engine.CPU,
    gpu_memory: Annotated[
        float | None, typer.Option(help="vLLM --gpu-memory-utilization (0-1).")
    ] = None,
    dtype: Annotated[
        Dtype | None,
        typer.Option(help="vLLM --dtype; the transformers engine takes float32 or bfloat16."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="SAGE_API_KEY",
            help="Key the gateway requires (Authorization: Bearer); none: the API is open.",
            show_default=False,
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    policy: Annotated[
        str,
        typer.Option(
            help="Gateway scheduling policy (which waiting request goes first): fifo, "
            "priority, slo_aware, hybrid, adaptive."
        ),
    ] = "fifo",
    routing: Annotated[
        str,
        typer.Option(
            help="Gateway routing policy (which instance a request goes to): least_loaded, "
            "round_robin, prefix_aware (cache_aware), session."
        ),
    ] = "least_loaded",
    tenants: Annotated[
        Path | None,
        typer.Option(
            help="A JSON file of gateway tenants: {name: {api_keys: [...], weight, rpm, tpm, "
            "priority, slo_ms}}. Their keys are accepted keys; rpm/tpm limits answer 429; "
            "tenants waiting for a model are served by weighted fair share.",
            show_default=False,
        ),
    ] = None,
    max_batch: Annotated[
        int, typer.Option(help="CPU engines: sequences decoded together (llama.cpp's slots).")
    ] = 8,
    sim_profile: Annotated[
        str | None,
        typer.Option(
            help="Simulated engine: a JSON object of SimulatorProfile fields, "
            """e.g. '{"max_batch": 8, "decode_base_ms": 20}'."""
        ),
    ] = None,
    foreground: Annotated[
        bool,
        typer.Option(
            "--foreground",
            help="Stay in the foreground: the processes log to this terminal, Ctrl-C (or "
            "SIGTERM) stops them all.",
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds each process may take to start.")] = 600.0,
) -> None:
    """Start the engines and the gateway; return when all are ready (with --foreground,
    when they are stopped)."""
    from sage.inference.config import RoutingPolicyType, SchedulingPolicyType

    try:
        policy = str(SchedulingPolicyType.parse(policy))
    except ConfigError as exc:
        raise usage(f"--policy: {exc}") from None
    try:
        routing = str(RoutingPolicyType.parse(routing))
    except ConfigError as exc:
        raise usage(f"--routing: {exc}") from None
    tenant_config = _read_tenants(tenants) if tenants is not None else None
    state = load_state()
    if state and any(_alive(state, name) for name in state["pids"]):
        raise fail("the stack is already running (see sage llm status); run sage llm stop first")
    sim_args: list[str] = []
    if sim_profile is not None:
        if engine is not Engine.SIMULATED:
            raise usage("--sim-profile is for --engine simulated")
        from sage.inference.engines.simulated import SimulatorProfile

        try:
            sim_args = ["--sim-profile", SimulatorProfile.from_json(sim_profile).to_json()]
        except ConfigError as exc:
            raise usage(f"--sim-profile: {exc}") from None
    llm_port = port or SagePorts.get_recommended_llm_port()
    serve_embedding = with_embedding or embedding_model is not None
    embedding_model = embedding_model or "all-minilm-l6-v2"
    if engine not in (Engine.STUB, Engine.SIMULATED):  # these serve any name; nothing is loaded
        _check_models(
            engine,
            model,
            embedding_model if serve_embedding else None,
            host,
            llm_port,
            gpu_memory,
            dtype,
        )
    _check_port(llm_port, "LLM engine", "--port", host)
    if serve_embedding:
        _check_port(embedding_port, "embedding engine", "--embedding-port", host)
    _check_port(gateway_port, "gateway", "--gateway-port", host)

    logs: Path | None = None if foreground else state_dir() / "logs"
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
    state_dir().mkdir(parents=True, exist_ok=True)
    pids: dict[str, int] = {}
    llm_name = model  # vLLM serves the model under the name it was given
    try:
        with console.status("starting the LLM engine (loading the model)..."):
            if engine is Engine.VLLM:
                from sage.inference.engines.vllm import launch_vllm

                try:
                    pids["llm"] = launch_vllm(
                        model,
                        host,
                        llm_port,
                        state_dir() / "llm.log",
                        gpu_memory,
                        None if dtype is None else str(dtype),
                        timeout,
                    )
                except ConfigError as exc:
                    raise fail(str(exc)) from None
            else:
                cpu_args = ["--max-batch", str(max_batch), *sim_args]
                if dtype and engine in _CPU_ENGINES:
                    cpu_args += ["--dtype", str(dtype)]
                pids["llm"], llm_name = _start_engine(
                    "llm", model, engine, host, llm_port, logs, timeout, *cpu_args
                )
        backends: dict[str, list[dict[str, Any]]] = {
            "llm_backends": [{"host": host, "port": llm_port, "model_name": llm_name}],
            "embedding_backends": [],
        }
        emb_name = None
        if serve_embedding:
            with console.status("starting the embedding engine..."):
                emb_engine = engine if engine in (Engine.STUB, Engine.SIMULATED) else "cpu"
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
        gateway_config: dict[str, Any] = {
            "host": host,
            "port": gateway_port,
            "scheduling_policy": policy,
            "routing_policy": routing,
            **backends,
        }
        if api_key:
            gateway_config["api_key"] = api_key
        if tenant_config is not None:
            gateway_config["tenants"] = tenant_config
        with console.status("starting the gateway..."):
            try:
                pids["gateway"], _ = spawn_gateway(
                    gateway_config,
                    state_dir() / "gateway.json",
                    None if logs is None else logs / "gateway.log",
                )
            except SpawnError as exc:
                raise fail(f"gateway {exc}") from None
        _write_state(
            {
                "pids": pids,
                "started": {name: started_at(pid) for name, pid in pids.items()},
                "host": host,
                "ports": {
                    "llm": llm_port,
                    "embedding": embedding_port if serve_embedding else None,
                    "gateway": gateway_port,
                },
                "models": {"llm": llm_name, "embedding": emb_name},
                "started_at": time.time(),
                "foreground": foreground,
            }
        )
        console.print(
            f"[green]ready[/green]: gateway http://{host}:{gateway_port}/v1 "
            f"(LLM {llm_name} on {llm_port}"
            + (f", embeddings {emb_name} on {embedding_port})" if serve_embedding else ")")
            + ("; Ctrl-C stops them" if foreground else "")
        )
        if foreground:
            _wait_for_a_signal(pids)
    except BaseException:
        _stop_all(pids)
        raise
    if foreground:
        _stop_all(pids)


def _stop_all(pids: dict[str, int]) -> None:
    """Stop the processes just started (in reverse order), and forget them."""
    for pid in reversed(pids.values()):
        terminate(pid)
    _state_file().unlink(missing_ok=True)


def _alive(state: dict[str, Any], name: str) -> bool:
    """Whether the process ``name`` of ``state`` still runs (the same one: a pid reused by
    another process does not count)."""
    started = (state.get("started") or {}).get(name)
    return is_running(state["pids"][name], started)


@llm_app.command()
def status() -> None:
    """Show the instances behind the gateway and whether they are healthy."""
    import httpx

    state = load_state()
    if not state:
        raise fail("nothing is running; start it with sage llm serve")
    table = Table(title="SAGE inference stack")
    for column in ("process", "pid", "alive"):
        table.add_column(column)
    for name, pid in state["pids"].items():
        alive = _alive(state, name)
        table.add_row(name, str(pid), "[green]yes[/green]" if alive else "[red]no[/red]")
    console.print(table)
    url = f"http://{state['host']}:{state['ports']['gateway']}/v1/management/instances"
    try:
        instances = httpx.get(url, timeout=5).json()["instances"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise fail(f"the gateway did not answer at {url}: {exc}") from None
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
def stop(
    force: Annotated[
        bool,
        typer.Option(
            "--force", "-f", help="Kill at once instead of letting requests in flight finish."
        ),
    ] = False,
) -> None:
    """Stop every process of the stack (engines and gateway); none is left behind."""
    state = load_state()
    if not state:
        console.print("nothing is running")
        return
    started = state.get("started") or {}
    for name, pid in state["pids"].items():
        if not _alive(state, name):
            console.print(f"{name} (pid {pid}) had already exited")
            continue
        terminate(pid, 0.0 if force else 20.0, started=started.get(name))
        console.print(f"{'killed' if force else 'stopped'} {name} (pid {pid})")
    left = [f"{n} ({p})" for n, p in state["pids"].items() if _alive(state, n)]
    _state_file().unlink(missing_ok=True)
    if left:
        raise fail(f"still running: {', '.join(left)}")


@llm_app.command()
def logs(
    name: Annotated[
        str | None, typer.Argument(help="llm, embedding or gateway (default: all).")
    ] = None,
    lines: Annotated[
        int, typer.Option("--lines", "-n", help="Lines from the end of each log.")
    ] = 40,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Then print new lines as they come, until Ctrl-C."),
    ] = False,
) -> None:
    """Print the end of the processes' logs (and follow them with -f)."""
    folder = state_dir() / "logs"
    files = [folder / f"{name}.log"] if name else sorted(folder.glob("*.log"))
    if not files or not all(f.exists() for f in files):
        raise fail(f"no logs in {folder}" + (f" for {name!r}" if name else ""))
    positions = {}
    for path in files:
        with path.open("rb") as fh:  # the tail and the follow's start: the same bytes
            data = fh.read()
            positions[path] = {"inode": os.fstat(fh.fileno()).st_ino, "offset": len(data)}
        console.rule(path.name)
        console.print(
            "\n".join(data.decode(errors="replace").splitlines()[-lines:]),
            highlight=False,
            markup=False,
        )
    if follow:
        _follow(positions)


def _follow(positions: dict[Path, dict[str, int]]) -> None:
    """Print lines appended to the files after ``positions`` as they come (each after its
    file's name), woken by the folder's watcher, across rotations, until Ctrl-C."""
    from sage.kernel.connectors import DirectoryWatcher, LineReader

    readers = {}
    for path, position in positions.items():
        readers[path] = reader = LineReader(path, parse="text")
        reader.open(position)
    watcher = DirectoryWatcher(next(iter(positions)).parent, recursive=False)
    watcher.start()
    try:
        while True:
            for path, reader in readers.items():
                while got := reader.read(1000):
                    for line in got:
                        console.print(f"{path.stem}: {line}", highlight=False, markup=False)
            console.file.flush()  # a pipe is block-buffered: show each line as it comes
            watcher.changes(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        watcher.stop()
        for reader in readers.values():
            reader.close()
