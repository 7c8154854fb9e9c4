"""The SAGE reference's ``sage llm`` command lines: serve's short flags, embedding on by
default, ``-tp``/``--max-model-len``, ``restart`` and ``gpu``. Real processes on loopback
(stub and simulated engines; one real llama.cpp start for ``--max-model-len``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from llm_stack import SAGE, LlmHome, alive
from rich.console import Console

from sage.cli.llm.gpu import gpu_table, no_gpu_line, stack_processes
from sage.common.errors import ConfigError
from sage.common.observability.gpu import GpuDevice, GpuMonitor, GpuProcess, GpuReading
from sage.inference.engines.vllm import vllm_command


class Home(LlmHome):
    """The stack is stopped whatever happens."""

    def ports(self) -> tuple[str, ...]:
        """The reference's short flags for the three ports."""
        return (
            "-p",
            str(self.llm),
            "--embedding-port",
            str(self.embedding),
            "-g",
            str(self.gateway),
        )

    def client(self, key: str = "none") -> openai.OpenAI:
        base = f"http://127.0.0.1:{self.gateway}/v1"
        return openai.OpenAI(base_url=base, api_key=key, max_retries=0)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    h = Home(tmp_path)
    yield h
    h.sage("stop", "--force", timeout=120)


def test_short_flags_reach_the_processes_and_the_state_records_the_arguments(
    home: Home,
) -> None:
    served = home.sage(
        "serve",
        *("--engine", "simulated", "-m", "sim-7b", "-e", "sim-embed", *home.ports()),
        *("--max-model-len", "64", "--sim-profile", '{"max_batch": 4}'),
    )
    assert served.returncode == 0, served.stdout + served.stderr
    state = home.state()
    assert state["ports"] == {"llm": home.llm, "embedding": home.embedding, "gateway": home.gateway}
    args = state["args"]
    assert (args["model"], args["engine"], args["embedding"]) == ("sim-7b", "simulated", True)
    assert (args["embedding_model"], args["max_model_len"], args["tensor_parallel"]) == (
        "sim-embed",
        64,
        1,
    )
    assert (args["llm_port"], args["gateway_port"], args["host"]) == (
        home.llm,
        home.gateway,
        "127.0.0.1",
    )
    assert json.loads(args["sim_profile"]) == {"max_batch": 4} and args["max_batch"] == 8
    # each engine answers on the port its short flag named
    assert httpx.get(f"http://127.0.0.1:{home.llm}/v1/models").json()["data"][0]["id"] == "sim-7b"
    embedder = httpx.get(f"http://127.0.0.1:{home.embedding}/v1/models").json()
    assert embedder["data"][0]["id"] == "sim-embed"
    status = home.sage("status", timeout=60)
    assert status.returncode == 0 and status.stdout.count("│ healthy") == 2, status.stdout
    # --max-model-len is the simulated engine's context, as it is vLLM's
    with pytest.raises(openai.BadRequestError, match="context of 64 tokens"):
        home.client().chat.completions.create(
            model="sim-7b", messages=[{"role": "user", "content": "hi"}], max_tokens=100
        )


def test_the_embedding_model_is_served_by_default_and_no_embedding_turns_it_off(
    home: Home,
) -> None:
    served = home.sage("serve", "--engine", "stub", *home.ports())
    assert served.returncode == 0, served.stdout + served.stderr
    assert set(home.state()["pids"]) == {"llm", "embedding", "gateway"}
    reply = home.client().embeddings.create(model="all-minilm-l6-v2", input=["hello"])
    assert reply.data[0].embedding
    assert home.sage("stop", timeout=120).returncode == 0

    served = home.sage("serve", "--engine", "stub", "--no-embedding", *home.ports())
    assert served.returncode == 0, served.stdout + served.stderr
    state = home.state()
    assert set(state["pids"]) == {"llm", "gateway"} and state["ports"]["embedding"] is None
    assert state["args"]["embedding"] is False
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{home.embedding}/health", timeout=2)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("-tp", "2"), "-tp/--tensor-parallel 2: tensor parallelism needs --engine vllm"),
        (("--tensor-parallel", "4", "--engine", "simulated"), "needs --engine vllm"),
        (("-tp", "2", "--engine", "stub"), "needs --engine vllm"),
        (("-tp", "0", "--engine", "vllm"), "-tp/--tensor-parallel 0 is invalid"),
        (("--max-model-len", "0"), "--max-model-len 0 is invalid"),
        (("-e", "sim-embed", "--no-embedding"), "drop one of them"),
    ],
)
def test_a_wrong_reference_flag_is_a_usage_error_naming_it(
    home: Home, args: tuple[str, ...], expected: str
) -> None:
    served = home.sage("serve", *home.ports(), *args)
    assert served.returncode == 2, served.stdout + served.stderr
    assert expected in " ".join(served.stderr.split())
    assert not (home.home / "llm" / "state.json").exists()


def test_max_model_len_is_the_llama_cpp_engines_context(home: Home) -> None:
    served = home.sage(
        "serve",
        *("-m", "smollm2", "--no-embedding", "--max-model-len", "200", "--max-batch", "1"),
        *home.ports(),
    )
    assert served.returncode == 0, served.stdout + served.stderr
    assert home.state()["args"]["max_model_len"] == 200
    chat = home.client().chat.completions
    with pytest.raises(openai.BadRequestError, match="context of 200 tokens"):
        chat.create(model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=300)
    reply = chat.create(model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert reply.choices[0].message.content


def test_restart_starts_the_same_stack_again_and_asks_for_the_key_again(home: Home) -> None:
    key = {"SAGE_API_KEY": "sk-restart-test"}
    served = home.sage("serve", "--engine", "stub", "-m", "stub-llm", *home.ports(), env=key)
    assert served.returncode == 0, served.stdout + served.stderr
    before = home.state()
    assert "sk-restart-test" not in (home.home / "llm" / "state.json").read_text()
    assert before["api_key_required"] is True

    refused = home.sage("restart", timeout=60)  # no key given: the gateway would be open
    assert refused.returncode == 2 and "--api-key or SAGE_API_KEY" in refused.stderr
    assert all(map(alive, before["pids"].values()))  # nothing was stopped

    restarted = home.sage("restart", env=key)
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert restarted.stdout.count("stopped ") == 3 and "ready" in restarted.stdout
    after = home.state()
    assert set(after["pids"]) == set(before["pids"]) == {"llm", "embedding", "gateway"}
    assert all(after["pids"][n] != before["pids"][n] for n in before["pids"])
    assert not [pid for pid in before["pids"].values() if alive(pid)]
    assert after["ports"] == before["ports"] and after["args"] == before["args"]
    reply = home.client("sk-restart-test").chat.completions.create(
        model="stub-llm", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        home.client("other").models.list()
    status = home.sage("status", env=key, timeout=60)  # its management routes want the key
    assert status.returncode == 0, status.stdout + status.stderr
    assert "stub-llm" in status.stdout
    unkeyed = home.sage("status", timeout=60)
    assert unkeyed.returncode == 1 and "set SAGE_API_KEY" in unkeyed.stderr

    assert home.sage("stop", "-f", timeout=120).returncode == 0
    nothing = home.sage("restart", timeout=60)
    assert nothing.returncode == 1
    assert "nothing is running; start it with sage llm serve" in nothing.stderr


def test_restart_refuses_a_stack_in_the_foreground(home: Home) -> None:
    process = subprocess.Popen(
        [
            *SAGE,
            *("llm", "serve", "--engine", "stub", "--no-embedding", "--foreground"),
            *home.ports(),
        ],
        env=home.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:  # the processes' logs, then "ready"
            if "ready" in line:
                break
        pids = home.state()["pids"]
        refused = home.sage("restart", timeout=60)
        assert refused.returncode == 1
        assert "foreground" in refused.stderr and "Ctrl-C" in refused.stderr
        assert home.state()["pids"] == pids and all(map(alive, pids.values()))
        process.send_signal(signal.SIGINT)
        assert process.wait(120) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_gpu_says_in_one_line_when_no_gpu_is_visible(home: Home) -> None:
    with GpuMonitor() as monitor:
        reading = monitor.read()
    shown = home.sage("gpu", timeout=60)
    assert shown.returncode == 0, shown.stderr
    if reading.available and reading.devices:  # a machine with a GPU: the table
        assert "GPUs" in shown.stdout and reading.devices[0].name in shown.stdout
        return
    assert shown.stdout.startswith("no NVIDIA GPU visible (")
    assert shown.stdout.rstrip().endswith("the CPU engines do not use one")
    assert len(shown.stdout.strip().splitlines()) == 1


def test_gpu_table_names_the_stacks_processes_from_a_hand_built_reading() -> None:
    """The GPU cannot exist here: the reading is built by hand; the processes are real."""
    worker = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )  # a child of "llm" (this process)
    gateway = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        device = GpuDevice(
            index=0,
            name="NVIDIA H100 80GB HBM3",
            utilization_percent=37.0,
            memory_used_mb=20480.0,
            memory_total_mb=81920.0,
            temperature_c=None,
            power_w=None,
            power_limit_w=None,
            processes=(
                GpuProcess(os.getpid(), 18000.0),
                GpuProcess(worker.pid, 1024.0),
                GpuProcess(1, None),
            ),
        )
        idle = GpuDevice(1, "NVIDIA H100 80GB HBM3", None, 0.0, 81920.0, None, None, None)
        reading = GpuReading(True, "", (device, idle), time.time())
        assert no_gpu_line(reading) is None
        stack = {os.getpid(): "llm", gateway.pid: "gateway"}
        console = Console(record=True, width=250)
        console.print(gpu_table(reading, stack))
        text = console.export_text()
    finally:
        for p in (worker, gateway):
            p.kill()
            p.wait()
    rows = [line for line in text.splitlines() if "│" in line]
    assert "37%" in text and "20,480 MiB / 81,920 MiB" in text
    assert f"llm (pid {os.getpid()}): 18,000 MiB" in text
    assert f"llm (child pid {worker.pid}): 1,024 MiB" in text
    assert "other pid 1: ?" in text
    assert any("│ 1 " in row and "│ none" in row and "│ ?" in row for row in rows)
    assert f"on no GPU: gateway (pid {gateway.pid})" in text


def test_no_gpu_line_says_why() -> None:
    missing = GpuReading(False, "pynvml is not installed", (), time.time())
    assert no_gpu_line(missing) == (
        "no NVIDIA GPU visible (pynvml is not installed); the CPU engines do not use one"
    )
    assert "NVML sees no device" in str(no_gpu_line(GpuReading(True, "", (), time.time())))


def test_stack_processes_skips_a_pid_another_process_reused() -> None:
    me = os.getpid()
    state = {"pids": {"llm": me, "gateway": me}, "started": {"llm": None, "gateway": 1.0}}
    assert stack_processes(state) == {me: "llm"}
    assert stack_processes(None) == {}


def test_the_gpu_monitor_reads_each_devices_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A FAKE ``pynvml`` (not the real NVML): one GPU with two compute processes, one of
    whose memory is not reported (``None``, as nvidia-ml-py gives it)."""
    fake = types.ModuleType("pynvml")
    memory = types.SimpleNamespace(used=3 * 2**30, total=80 * 2**30)
    found = [
        types.SimpleNamespace(pid=4242, usedGpuMemory=2**30),
        types.SimpleNamespace(pid=4343, usedGpuMemory=None),
    ]
    fake.__dict__.update(
        NVMLError=RuntimeError,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetName=lambda handle: "Fake GPU",
        nvmlDeviceGetMemoryInfo=lambda handle: memory,
        nvmlDeviceGetUtilizationRates=lambda handle: types.SimpleNamespace(gpu=5),
        nvmlDeviceGetTemperature=lambda handle, sensor: 40,
        nvmlDeviceGetPowerUsage=lambda handle: 100_000,
        nvmlDeviceGetEnforcedPowerLimit=lambda handle: 700_000,
        nvmlDeviceGetComputeRunningProcesses=lambda handle: found,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with GpuMonitor() as monitor:
        (device,) = monitor.read().devices
    assert device.processes == (GpuProcess(4242, 1024.0), GpuProcess(4343, None))
    assert monitor.read().to_dict()["devices"][0]["processes"][0] == {
        "pid": 4242,
        "memory_used_mb": 1024.0,
    }


def test_vllm_gets_tensor_parallel_and_max_model_len() -> None:
    command = vllm_command("m", "127.0.0.1", 8001, tensor_parallel=2, max_model_len=4096)
    assert command[command.index("--tensor-parallel-size") + 1] == "2"
    assert command[command.index("--max-model-len") + 1] == "4096"
    plain = vllm_command("m", "127.0.0.1", 8001)
    assert "--tensor-parallel-size" not in plain and "--max-model-len" not in plain
    with pytest.raises(ConfigError, match="-tp/--tensor-parallel 0"):
        vllm_command("m", "127.0.0.1", 8001, tensor_parallel=0)
