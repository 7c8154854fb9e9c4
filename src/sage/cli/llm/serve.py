"""``sage llm serve``: start the engines and the gateway (in the background, or in the
foreground with ``--foreground``).

The command only gathers its options into :class:`~sage.cli.llm.serve_args.ServeArgs`;
:func:`~sage.cli.llm.launch.start_stack` does the work, so ``sage llm restart`` starts the
same stack again from the arguments the state file recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sage.cli.errors import usage
from sage.cli.llm.app import llm_app
from sage.cli.llm.launch import DEFAULT_EMBEDDING_MODEL, start_stack
from sage.cli.llm.serve_args import Dtype, Engine, ServeArgs
from sage.common.config.ports import SagePorts

__all__ = ["serve"]


@llm_app.command()
def serve(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="Chat model: a bundled name (smollm2), a path, or a cached hub name.",
        ),
    ] = "smollm2",
    embedding_model: Annotated[
        str | None,
        typer.Option(
            "--embedding-model",
            "-e",
            help=f"Embedding model (default {DEFAULT_EMBEDDING_MODEL}); giving one implies "
            "serving it.",
            show_default=False,
        ),
    ] = None,
    embedding: Annotated[
        bool,
        typer.Option(
            "--with-embedding/--no-embedding",
            help="Serve the embedding model too (the default, as the SAGE reference does); "
            "--no-embedding serves the chat model alone and starts faster.",
        ),
    ] = True,
    llm_port: Annotated[
        int | None,
        typer.Option(
            "--llm-port",
            "--port",
            "-p",
            envvar="SAGE_LLM_PORT",
            help="LLM engine port (default 8001, 8901 on WSL2).",
            show_default=False,
        ),
    ] = None,
    embedding_port: Annotated[
        int, typer.Option(envvar="SAGE_EMBEDDING_PORT", help="Embedding engine port.")
    ] = SagePorts.EMBEDDING_DEFAULT,
    gateway_port: Annotated[
        int,
        typer.Option("--gateway-port", "-g", envvar="SAGE_GATEWAY_PORT", help="Gateway port."),
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
    tensor_parallel: Annotated[
        int,
        typer.Option(
            "--tensor-parallel",
            "-tp",
            help="vLLM: GPUs to split the model over (its --tensor-parallel-size); more than "
            "1 needs --engine vllm.",
        ),
    ] = 1,
    max_model_len: Annotated[
        int | None,
        typer.Option(
            help="Most tokens of one request, prompt and answer: vLLM's --max-model-len, the "
            "CPU engines' context length (default: the model's own; llama.cpp: its share of "
            "the KV cache).",
            show_default=False,
        ),
    ] = None,
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
            help="Key the gateway requires (Authorization: Bearer); none: the API is open. "
            "It is not written to the state file: sage llm restart takes it again from "
            "SAGE_API_KEY or --api-key.",
            show_default=False,
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    policy: Annotated[
        str,
        typer.Option(
            help="Gateway scheduling policy (which waiting request goes first): fifo, "
            "priority, slo_aware, hybrid, adaptive, cost_optimized."
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
    if embedding_model is not None and not embedding:
        raise usage(
            f"--embedding-model {embedding_model} asks for the embedding model and "
            "--no-embedding for none; drop one of them"
        )
    args = ServeArgs(
        model=model,
        engine=engine,
        embedding=embedding,
        embedding_model=embedding_model or DEFAULT_EMBEDDING_MODEL,
        llm_port=llm_port or SagePorts.get_recommended_llm_port(),
        embedding_port=embedding_port,
        gateway_port=gateway_port,
        host=host,
        policy=policy,
        routing=routing,
        tenants=None if tenants is None else str(tenants.resolve()),
        max_batch=max_batch,
        dtype=dtype,
        gpu_memory=gpu_memory,
        tensor_parallel=tensor_parallel,
        max_model_len=max_model_len,
        sim_profile=sim_profile,
        foreground=foreground,
        timeout=timeout,
    )
    start_stack(args, api_key)
