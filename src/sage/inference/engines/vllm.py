"""The GPU engine: vLLM's own OpenAI-compatible server, for ``sage llm serve --engine vllm``.

SAGE does not wrap vLLM's engine: it starts ``vllm.entrypoints.openai.api_server`` (which has
continuous batching and paged attention) and registers it with the gateway like any other
instance. ``--gpu-memory`` becomes ``--gpu-memory-utilization``, ``-tp/--tensor-parallel``
``--tensor-parallel-size``; ``--dtype`` and ``--max-model-len`` are passed on.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

from sage.common.errors import ConfigError

__all__ = ["check_vllm_available", "launch_vllm", "vllm_command"]


def vllm_command(
    model: str,
    host: str,
    port: int,
    gpu_memory: float | None = None,
    dtype: str | None = None,
    *,
    tensor_parallel: int = 1,
    max_model_len: int | None = None,
) -> list[str]:
    """The command line that starts vLLM's server for ``model``.

    Args:
        tensor_parallel: GPUs to split the model over (``--tensor-parallel-size``).
        max_model_len: Most tokens of one request, prompt and answer (``None``: the
            model's own).

    Raises:
        ConfigError: a value out of range, naming the ``sage llm serve`` option.
    """
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--served-model-name",
        model,
        "--host",
        host,
        "--port",
        str(port),
    ]
    if gpu_memory is not None:
        if not 0 < gpu_memory <= 1:
            raise ConfigError(f"--gpu-memory {gpu_memory} must be a fraction in (0, 1], e.g. 0.5")
        command += ["--gpu-memory-utilization", str(gpu_memory)]
    if dtype is not None:
        command += ["--dtype", dtype]
    if tensor_parallel < 1:
        raise ConfigError(
            f"-tp/--tensor-parallel {tensor_parallel} is invalid: give the number of GPUs to "
            "split the model over, an integer >= 1"
        )
    if tensor_parallel > 1:
        command += ["--tensor-parallel-size", str(tensor_parallel)]
    if max_model_len is not None:
        if max_model_len < 1:
            raise ConfigError(
                f"--max-model-len {max_model_len} is invalid: give an integer >= 1, or leave "
                "it out for the model's own"
            )
        command += ["--max-model-len", str(max_model_len)]
    return command


def check_vllm_available() -> None:
    """Raise :class:`ConfigError` (saying what to use instead) unless vLLM and a GPU are here."""
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "--engine vllm needs vLLM on a machine with a CUDA GPU (pip install vllm); "
            "on a CPU machine use --engine cpu"
        )
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("--engine vllm needs a CUDA GPU, and torch sees none; use --engine cpu")


def launch_vllm(
    model: str,
    host: str,
    port: int,
    log_path: Path,
    gpu_memory: float | None,
    dtype: str | None,
    timeout_s: float,
    *,
    tensor_parallel: int = 1,
    max_model_len: int | None = None,
) -> int:
    """Start vLLM's server in the background and wait until it answers; return its pid
    (the leader of its own session: with ``tensor_parallel`` > 1 its workers are in it).

    Raises:
        ConfigError: vLLM or a GPU is missing, or the server did not come up in time.
    """
    import httpx

    check_vllm_available()
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            vllm_command(
                model,
                host,
                port,
                gpu_memory,
                dtype,
                tensor_parallel=tensor_parallel,
                max_model_len=max_model_len,
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ},
        )
    deadline = time.monotonic() + timeout_s
    # vLLM has no readiness pipe: ask its /health until it answers (start-up only)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(f"vLLM exited with code {process.returncode}; see {log_path}")
        try:
            if httpx.get(f"http://{host}:{port}/health", timeout=2).status_code == 200:
                return process.pid
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    process.kill()
    raise ConfigError(f"vLLM did not answer within {timeout_s:.0f} s; see {log_path}")
