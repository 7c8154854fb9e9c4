"""The GPU engine's command line (vLLM itself needs a CUDA machine; see the issue notes)."""

from __future__ import annotations

import sys

import pytest

from sage.common.errors import ConfigError
from sage.inference.engines.vllm import vllm_command


def test_vllm_command_maps_sage_options_to_vllm_flags() -> None:
    command = vllm_command("Qwen/Qwen2.5-0.5B-Instruct", "127.0.0.1", 8001, 0.5, "half")
    assert command[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    flags = dict(zip(command[3::2], command[4::2], strict=True))
    assert flags == {
        "--model": "Qwen/Qwen2.5-0.5B-Instruct",
        "--served-model-name": "Qwen/Qwen2.5-0.5B-Instruct",
        "--host": "127.0.0.1",
        "--port": "8001",
        "--gpu-memory-utilization": "0.5",
        "--dtype": "half",
    }
    assert "--dtype" not in vllm_command("m", "127.0.0.1", 8001)


@pytest.mark.parametrize("fraction", [0.0, 1.5, -0.2])
def test_gpu_memory_outside_0_1_is_a_clear_error(fraction: float) -> None:
    with pytest.raises(ConfigError, match=r"must be a fraction in \(0, 1\], e\.g\. 0\.5"):
        vllm_command("m", "127.0.0.1", 8001, gpu_memory=fraction)
