"""The seed's two tutorial scripts (``examples/tutorials/``): what they print and return.

``vllm_control_plane_tutorial`` runs on free ports here (by default it uses the seed's 8001
and 8002), with LLM simulators it starts itself; ``benchmark_control_plane_demo`` only builds
and validates configurations.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sage.common.concurrency import LoopThread
from sage.common.config.ports import SagePorts
from sage.inference import SchedulingPolicyType
from sage.inference.engines.server import EngineServer
from sage.inference.engines.simulated import SIMULATED_TEXT
from sage.inference.engines.stub import ANSWER, StubLLMEngine

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = SagePorts.any_free_port()
        if port not in ports:
            ports.append(port)
    return ports


# -- vllm_control_plane_tutorial.py --------------------------------------------------------------


def test_control_plane_tutorial_prints_the_seed_lines_over_simulators(
    load_example: Callable[[str], ModuleType],
    capsys: pytest.CaptureFixture[str],
) -> None:
    first, second = free_ports(2)
    tutorial = load_example("tutorials/vllm_control_plane_tutorial")
    result: dict[str, Any] = tutorial.main(llm_port=first, lb_ports=(first, second), n_requests=8)
    out = capsys.readouterr().out

    demo1, demo2 = out.split("Demo 2: Multi-Instance Load Balancing")
    assert "Demo 1: Basic Usage" in demo1
    assert "Registered 1 instances" in demo1
    assert 'Metrics: {"total_requests": 0,' in demo1
    assert 'Metrics: {"total_requests": 1,' in demo1
    assert f"Instance llm-1: localhost:{first}" in demo1 and "simulator started here" in demo1
    basic = result["basic"]
    assert basic["before"]["total_requests"] == 0 and basic["after"]["total_requests"] == 1
    assert SIMULATED_TEXT.startswith(basic["answer"])  # 12 words of the simulator's sentence
    assert len(basic["answer"].split()) == 12

    assert "Registered 2 instances" in demo2
    assert f"llm-1 (port {first}): " in demo2 and f"llm-2 (port {second}): " in demo2
    balanced = result["load_balancing"]
    assert balanced["ports"] == [first, second]
    assert len(balanced["answers"]) == 8 and all(a for a in balanced["answers"])
    counts = balanced["per_instance"]
    assert sum(counts.values()) == 8 and balanced["metrics"]["total_requests"] == 8
    assert counts["llm-1"] > 0 and counts["llm-2"] > 0  # concurrent requests were spread
    assert "Total requests: 8" in demo2
    assert "the instances were simulators" in demo2
    # everything it started is stopped
    assert SagePorts.is_port_free(first) and SagePorts.is_port_free(second)


def test_control_plane_tutorial_uses_a_server_already_listening(
    load_example: Callable[[str], ModuleType],
    capsys: pytest.CaptureFixture[str],
) -> None:
    loop = LoopThread("sage-test-existing-engine")
    server = EngineServer(StubLLMEngine("already-served"))
    try:
        port = loop.call(server.start())
        (other,) = free_ports(1)
        result = load_example("tutorials/vllm_control_plane_tutorial").main(
            llm_port=port, lb_ports=(port, other), n_requests=4
        )
        out = capsys.readouterr().out
        assert f"localhost:{port} serving 'already-served' - existing server" in out
        assert result["basic"]["answer"] == ANSWER  # the stub's sentence: it served Demo 1
        assert server.requests >= 1
        assert f"llm-2: localhost:{other} serving 'already-served' - simulator" in out
        assert SagePorts.is_port_free(other)  # the simulator on the other port was stopped
        assert not SagePorts.is_port_free(port)  # the existing server was left running
    finally:
        loop.call(server.stop())
        loop.stop()


def test_control_plane_tutorial_runs_as_a_program() -> None:
    first, second = free_ports(2)
    proc = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "tutorials" / "vllm_control_plane_tutorial.py"),
            "--port",
            str(first),
            "--ports",
            str(first),
            str(second),
            "--requests",
            "4",
        ],
        capture_output=True,
        encoding="utf-8",
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for line in (
        "Demo 1: Basic Usage",
        "Registered 1 instances",
        'Metrics: {"total_requests": 0,',
        "Demo 2: Multi-Instance Load Balancing",
        "Registered 2 instances",
        f"(port {first})",
        f"(port {second})",
        "Total requests: 4",
    ):
        assert line in proc.stdout


# -- benchmark_control_plane_demo.py -------------------------------------------------------------


def test_benchmark_demo_validates_both_configs_and_lists_the_policies(
    load_example: Callable[[str], ModuleType],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # as on a machine without NVML
    result = load_example("tutorials/benchmark_control_plane_demo").main(tmp_path)
    out = capsys.readouterr().out
    assert "Demo 1: LLM Benchmark Configuration" in out
    assert "Demo 2: Hybrid Benchmark Configuration" in out
    assert out.count("Configuration is valid.") == 2
    assert "An invalid policy is refused: unknown policy 'fastest'" in out
    assert type(result["llm"]).__name__ == "LLMBenchmarkConfig"
    assert type(result["hybrid"]).__name__ == "HybridBenchmarkConfig"
    assert result["hybrid"].kinds == ("llm", "embedding")
    assert result["policies"] == [p.value for p in SchedulingPolicyType]
    for policy in SchedulingPolicyType:
        assert f"  - {policy.value} " in out
    assert "No GPU monitoring: pynvml is not installed" in out
    assert result["gpu"] == {"available": False, "reason": "pynvml is not installed", "gpus": []}
    assert list(tmp_path.iterdir()) == []  # it only configures: no reports written


def fake_nvml(devices: int) -> types.SimpleNamespace:
    """A stand-in for ``pynvml`` reporting ``devices`` 24 GiB GPUs, 6 GiB used, 37% busy."""
    calls: list[str] = []
    return types.SimpleNamespace(
        calls=calls,
        NVMLError=RuntimeError,
        nvmlInit=lambda: calls.append("init"),
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetCount=lambda: devices,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: b"Fake GPU",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=6 * 2**30, total=24 * 2**30),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=37),
    )


def test_benchmark_demo_reads_gpus_through_nvml_when_there_are_some(
    load_example: Callable[[str], ModuleType],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nvml = fake_nvml(devices=2)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    gpu = load_example("tutorials/benchmark_control_plane_demo").demo_gpu_monitoring()
    out = capsys.readouterr().out
    assert "GPU 1: Fake GPU, 6144/24576 MiB, 37% busy" in out
    assert gpu["available"] and len(gpu["gpus"]) == 2
    assert nvml.calls == ["init", "shutdown"]

    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(devices=0))
    gpu = load_example("tutorials/benchmark_control_plane_demo").demo_gpu_monitoring()
    assert "No GPU found: NVML reports 0 devices" in capsys.readouterr().out
    assert gpu["available"] is False


def test_benchmark_demo_runs_as_a_program(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "tutorials" / "benchmark_control_plane_demo.py")],
        capture_output=True,
        encoding="utf-8",
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Demo 1: LLM Benchmark Configuration" in proc.stdout
    assert "Configuration is valid." in proc.stdout
    assert ("No GPU" in proc.stdout) or ("GPU 0:" in proc.stdout)
