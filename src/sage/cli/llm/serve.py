"""``sage llm serve``: start the engines and the gateway (in the background, or in the
foreground with ``--foreground``)."""

from __future__ import annotations

import json
import os
import signal
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from sage.cli.errors import fail, stderr, usage
from sage.cli.llm.app import console, llm_app
from sage.cli.llm.state import alive, load_state, state_dir, stop_all, write_state
from sage.common.config.ports import SagePorts
from sage.common.errors import ConfigError
from sage.common.processes import started_at
from sage.inference.deploy.processes import SpawnError, spawn_engine, spawn_gateway


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


def check_port(port: int, what: str, option: str, host: str) -> None:
    if not SagePorts.is_port_free(port, host):
        free = SagePorts.find_free_port(port + 1, host)
        raise fail(f"port {port} ({what}) is in use; pick a free one, e.g. {option} {free}")


def start_engine(
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


def check_models(
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


def wait_for_a_signal(pids: dict[str, int]) -> None:
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


def read_tenants(path: Path) -> dict[str, Any]:
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
    tenant_config = read_tenants(tenants) if tenants is not None else None
    state = load_state()
    if state and any(alive(state, name) for name in state["pids"]):
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
        check_models(
            engine,
            model,
            embedding_model if serve_embedding else None,
            host,
            llm_port,
            gpu_memory,
            dtype,
        )
    check_port(llm_port, "LLM engine", "--port", host)
    if serve_embedding:
        check_port(embedding_port, "embedding engine", "--embedding-port", host)
    check_port(gateway_port, "gateway", "--gateway-port", host)

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
                pids["llm"], llm_name = start_engine(
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
                pids["embedding"], emb_name = start_engine(
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
        write_state(
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
            wait_for_a_signal(pids)
    except BaseException:
        stop_all(pids)
        raise
    if foreground:
        stop_all(pids)
