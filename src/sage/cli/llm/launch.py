"""Starting the stack ``sage llm serve`` describes: check its arguments and what they
name (:func:`prepare`), start the engines and the gateway and record them in the state file
(:func:`launch`). ``serve`` runs both (:func:`start_stack`); ``restart`` runs
:func:`prepare`, stops the running stack, then runs :func:`launch`.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sage.cli.errors import fail, stderr, usage
from sage.cli.llm.app import console
from sage.cli.llm.serve_args import (
    CPU_DTYPES,
    CPU_ENGINES,
    STAND_INS,
    Dtype,
    Engine,
    ServeArgs,
    check_args,
    embedding_engine,
)
from sage.cli.llm.state import alive, load_state, state_dir, stop_all, write_state
from sage.common.config.ports import SagePorts
from sage.common.errors import ConfigError
from sage.common.processes import started_at
from sage.inference.deploy.processes import SpawnError, spawn_engine, spawn_gateway

__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "Plan",
    "check_models",
    "check_port",
    "engine_options",
    "launch",
    "prepare",
    "read_tenants",
    "start_engine",
    "start_stack",
    "wait_for_a_signal",
]

DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"


def check_port(port: int, what: str, option: str, host: str) -> None:
    """Refuse (exit 1) a port in use, naming a free one and the ``option`` that takes it."""
    if not SagePorts.is_port_free(port, host):
        free = SagePorts.find_free_port(port + 1, host)
        raise fail(f"port {port} ({what}) is in use; pick a free one, e.g. {option} {free}")


def engine_options(
    kind: str,
    engine: Engine,
    sim_profile: str | None,
    *,
    max_batch: int = 8,
    dtype: str | None = None,
) -> list[str]:
    """The serving options ``serve`` gives an engine server of ``kind`` (``llm`` or
    ``embedding``) run by ``engine``; ``sage llm engine start`` gives its engines the same.

    Args:
        sim_profile: The simulated engine's profile, as JSON (``None``: its defaults).
        max_batch: Sequences the LLM engine decodes together.
        dtype: The CPU LLM engines' precision (``None``: their default).
    """
    options: list[str] = []
    if kind == "llm":
        options += ["--max-batch", str(max_batch)]
        if dtype and engine in CPU_ENGINES:
            options += ["--dtype", str(dtype)]
    if sim_profile is not None and engine is Engine.SIMULATED:
        options += ["--sim-profile", sim_profile]
    return options


def start_engine(
    kind: str,
    model: str,
    engine: str,
    host: str,
    port: int,
    logs: Path | None,
    timeout_s: float,
    *extra: str,
    max_model_len: int | None = None,
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
            max_model_len=max_model_len,
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
    *,
    tensor_parallel: int = 1,
    max_model_len: int | None = None,
) -> None:
    """Refuse (exit 2) a model or an option the engine cannot take, before starting anything;
    exit 1 if vLLM is asked for where it cannot run."""
    from sage.inference.engines.factory import cpu_llm_engine
    from sage.inference.engines.models import resolve_model

    if dtype is not None and engine in CPU_ENGINES and dtype not in CPU_DTYPES:
        raise usage(
            f"--dtype {dtype} is for vLLM; the transformers engine takes float32 or bfloat16"
        )
    try:
        if engine in CPU_ENGINES:
            chosen = cpu_llm_engine(resolve_model(model, "llm"), engine)
            if dtype is not None and chosen == "llama.cpp":
                raise usage(
                    f"--dtype is for the transformers engine; {model} is served by llama.cpp, "
                    "whose precision is the GGUF file's quantisation (leave --dtype out)"
                )
        elif engine is Engine.VLLM:
            from sage.inference.engines.vllm import vllm_command

            vllm_command(
                model,
                host,
                port,
                gpu_memory,
                None if dtype is None else str(dtype),
                tensor_parallel=tensor_parallel,
                max_model_len=max_model_len,
            )
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


@dataclass(frozen=True)
class Plan:
    """Checked arguments and the tenants they name: a stack ready to start (see
    :func:`prepare`)."""

    args: ServeArgs
    tenants: dict[str, Any] | None


def prepare(args: ServeArgs) -> Plan:
    """Check ``args`` and what they name (options, tenants file, models), starting nothing.

    ``sage llm restart`` runs it before stopping the running stack, so a stack that could
    not start again is left running.

    Raises:
        typer.Exit: 2 for an argument serve cannot take (the message names the option and
            the fix); 1 where vLLM cannot run here.
    """
    try:
        args = check_args(args)
    except ConfigError as exc:
        raise usage(str(exc)) from None
    tenants = read_tenants(Path(args.tenants)) if args.tenants is not None else None
    if args.engine not in STAND_INS:  # these serve any name
        check_models(
            args.engine,
            args.model,
            args.embedding_model if args.embedding else None,
            args.host,
            args.llm_port,
            args.gpu_memory,
            args.dtype,
            tensor_parallel=args.tensor_parallel,
            max_model_len=args.max_model_len,
        )
    return Plan(args, tenants)


def _start_llm(args: ServeArgs, logs: Path | None) -> tuple[int, str]:
    """Start the LLM engine (vLLM's server, or a SAGE engine server): its pid and name."""
    if args.engine is Engine.VLLM:
        from sage.inference.engines.vllm import launch_vllm

        try:
            pid = launch_vllm(
                args.model,
                args.host,
                args.llm_port,
                (logs or state_dir()) / "llm.log",  # where sage llm logs reads it
                args.gpu_memory,
                None if args.dtype is None else str(args.dtype),
                args.timeout,
                tensor_parallel=args.tensor_parallel,
                max_model_len=args.max_model_len,
            )
        except ConfigError as exc:
            raise fail(str(exc)) from None
        return pid, args.model  # vLLM serves the model under the name it was given
    return start_engine(
        "llm",
        args.model,
        args.engine,
        args.host,
        args.llm_port,
        logs,
        args.timeout,
        *engine_options(
            "llm", args.engine, args.sim_profile, max_batch=args.max_batch, dtype=args.dtype
        ),
        max_model_len=args.max_model_len,
    )


def launch(plan: Plan, api_key: str | None) -> None:
    """Start the stack ``plan`` describes; return when all are ready (in the foreground,
    when they are stopped). The state file records the processes and ``plan.args``.

    Raises:
        typer.Exit: 1 if a stack is running, a port is in use or a process did not start
            (what was started is stopped again).
    """
    args = plan.args
    state = load_state()
    if state and any(alive(state, name) for name in state["pids"]):
        raise fail("the stack is already running (see sage llm status); run sage llm stop first")
    check_port(args.llm_port, "LLM engine", "--llm-port", args.host)
    if args.embedding:
        check_port(args.embedding_port, "embedding engine", "--embedding-port", args.host)
    check_port(args.gateway_port, "gateway", "--gateway-port", args.host)

    logs: Path | None = None if args.foreground else state_dir() / "logs"
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
    state_dir().mkdir(parents=True, exist_ok=True)
    pids: dict[str, int] = {}
    try:
        with console.status("starting the LLM engine (loading the model)..."):
            pids["llm"], llm_name = _start_llm(args, logs)
        backends: dict[str, list[dict[str, Any]]] = {
            "llm_backends": [{"host": args.host, "port": args.llm_port, "model_name": llm_name}],
            "embedding_backends": [],
        }
        emb_name = None
        if args.embedding:
            with console.status("starting the embedding engine..."):
                emb_engine = embedding_engine(args.engine)
                options = engine_options("embedding", emb_engine, args.sim_profile)
                pids["embedding"], emb_name = start_engine(
                    "embedding",
                    args.embedding_model,
                    emb_engine,
                    args.host,
                    args.embedding_port,
                    logs,
                    args.timeout,
                    *options,
                )
            backends["embedding_backends"] = [
                {
                    "host": args.host,
                    "port": args.embedding_port,
                    "model_name": emb_name,
                    "instance_type": "embedding",
                }
            ]
        gateway_config: dict[str, Any] = {
            "host": args.host,
            "port": args.gateway_port,
            "scheduling_policy": args.policy,
            "routing_policy": args.routing,
            **backends,
        }
        if api_key:
            gateway_config["api_key"] = api_key
        if plan.tenants is not None:
            gateway_config["tenants"] = plan.tenants
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
                "host": args.host,
                "ports": {
                    "llm": args.llm_port,
                    "embedding": args.embedding_port if args.embedding else None,
                    "gateway": args.gateway_port,
                },
                "models": {"llm": llm_name, "embedding": emb_name},
                "started_at": time.time(),
                "foreground": args.foreground,
                "args": args.to_state(),
                "api_key_required": bool(api_key),  # the key itself is never written here
            }
        )
        console.print(
            f"[green]ready[/green]: gateway http://{args.host}:{args.gateway_port}/v1 "
            f"(LLM {llm_name} on {args.llm_port}"
            + (f", embeddings {emb_name} on {args.embedding_port})" if args.embedding else ")")
            + ("; Ctrl-C stops them" if args.foreground else "")
        )
        if args.foreground:
            wait_for_a_signal(pids)
    except BaseException:
        stop_all(pids)
        raise
    if args.foreground:
        stop_all(pids)


def start_stack(args: ServeArgs, api_key: str | None = None) -> None:
    """``sage llm serve`` as a function: check ``args``, then start the stack.

    Example::

        start_stack(ServeArgs(model="sim-7b", engine=Engine.SIMULATED, ...), api_key=None)

    Raises:
        typer.Exit: as :func:`prepare` and :func:`launch` do.
    """
    launch(prepare(args), api_key)
