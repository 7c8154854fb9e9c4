"""``sage llm serve`` → ``status`` → ``stop``, as a user runs them: real processes on loopback."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from llm_stack import SAGE, LlmHome, alive


class Stack(LlmHome):
    """``stop`` is run whatever happens."""

    def serve(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.sage(
            "serve",
            "--with-embedding",
            "--port",
            str(self.llm),
            "--embedding-port",
            str(self.embedding),
            "--gateway-port",
            str(self.gateway),
            *extra,
            timeout=600,
        )

    def pids(self) -> dict[str, int]:
        return {name: int(pid) for name, pid in self.state()["pids"].items()}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    yield s
    s.sage("stop", timeout=120)


def _serve_status_stop(stack: Stack, model: str, *extra: str) -> None:
    served = stack.serve(*extra)
    assert served.returncode == 0, served.stdout + served.stderr
    assert f"http://127.0.0.1:{stack.gateway}/v1" in served.stdout
    pids = stack.pids()
    assert set(pids) == {"llm", "embedding", "gateway"} and all(map(alive, pids.values()))

    status = stack.sage("status", timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("│ healthy") == 2 and "unhealthy" not in status.stdout

    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{stack.gateway}/v1", api_key="none", max_retries=0
    )
    assert model in [m.id for m in client.models.list()]
    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
    )
    assert reply.choices[0].message.content

    logs = stack.sage("logs", "gateway", timeout=60)
    assert logs.returncode == 0 and "gateway" in logs.stdout

    stopped = stack.sage("stop", timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not [name for name, pid in pids.items() if alive(pid)]
    for port in (stack.llm, stack.embedding, stack.gateway):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    again = stack.sage("status", timeout=60)
    assert again.returncode == 1 and again.stdout == ""  # a runtime failure, on stderr
    assert again.stderr.startswith("error: nothing is running")


def test_serve_status_stop_with_stub_engines(stack: Stack) -> None:
    _serve_status_stop(
        stack,
        "stub-llm",
        *("--engine", "stub", "--model", "stub-llm"),
        *("--policy", "slo-aware", "--routing", "cache_aware"),
    )
    gateway = json.loads((stack.home / "llm" / "gateway.json").read_text())
    assert gateway["scheduling_policy"] == "slo_aware"
    assert gateway["routing_policy"] == "prefix_aware"


def test_serve_status_stop_with_gpu_instance_simulators(stack: Stack) -> None:
    _serve_status_stop(
        stack,
        "sim-7b",
        "--engine",
        "simulated",
        "--model",
        "sim-7b",
        "--embedding-model",
        "sim-embed",
        "--sim-profile",
        '{"max_batch": 4}',
    )


def test_a_bad_simulator_profile_is_refused_before_starting_anything(stack: Stack) -> None:
    served = stack.serve("--engine", "simulated", "--sim-profile", '{"max_batch": 0}')
    assert served.returncode == 2
    assert "max_batch" in served.stdout + served.stderr
    assert not (stack.home / "llm" / "state.json").exists()


@pytest.mark.slow
# Loading both bundled models from a cold page cache on a slow CI runner took over 100 s
# once; every step below has its own timeout, so the test as a whole may take longer.
@pytest.mark.timeout(600)
def test_serve_status_stop_with_the_bundled_models(stack: Stack) -> None:
    _serve_status_stop(stack, "smollm2")


def test_a_busy_port_is_a_clear_error_naming_a_free_one(stack: Stack) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", stack.gateway))
        busy.listen()
        served = stack.serve("--engine", "stub")
    assert served.returncode == 1  # the command could not run here: not a usage error
    message = " ".join(served.stderr.split())
    assert f"port {stack.gateway} (gateway) is in use" in message
    assert "--gateway-port" in message
    assert not (stack.home / "llm" / "state.json").exists()


def test_a_model_that_is_not_available_offline_fails_before_starting_anything(
    stack: Stack,
) -> None:
    served = stack.serve("--model", "Qwen/Qwen2.5-7B-Instruct")
    assert served.returncode == 2  # a wrong --model: a usage error
    message = " ".join(served.stderr.split())
    assert "not available offline" in message and "smollm2" in message


def test_engine_vllm_without_a_gpu_says_what_to_use_and_starts_nothing(stack: Stack) -> None:
    served = stack.serve("--engine", "vllm", "--gpu-memory", "0.5")
    assert served.returncode == 1  # this machine cannot run it: a runtime failure
    message = " ".join(served.stderr.split())
    assert "--engine vllm needs" in message and "--engine cpu" in message
    assert not (stack.home / "llm" / "state.json").exists()


def test_the_ports_come_from_the_seeds_variables(stack: Stack) -> None:
    env = {**stack.env, "SAGE_LLM_PORT": str(stack.llm), "SAGE_GATEWAY_PORT": str(stack.gateway)}
    served = subprocess.run(
        [*SAGE, "llm", "serve", "--engine", "stub", "--no-embedding"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert served.returncode == 0, served.stdout + served.stderr
    state = json.loads((stack.home / "llm" / "state.json").read_text())
    assert state["ports"]["llm"] == stack.llm and state["ports"]["gateway"] == stack.gateway
    assert httpx.get(f"http://127.0.0.1:{stack.llm}/health", timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--engine", "gpu"), "'gpu' is not one of"),
        (("--dtype", "int4"), "'int4' is not one of"),
        (("--dtype", "half"), "--dtype half is for vLLM"),
        (("--sim-profile", "{}"), "--sim-profile is for --engine simulated"),
        (("--policy", "fastest"), "--policy: unknown scheduling policy 'fastest'"),
        (("--routing", "nearest"), "--routing: unknown routing policy 'nearest'"),
    ],
)
def test_a_wrong_option_is_a_usage_error_on_stderr(
    stack: Stack, args: tuple[str, ...], expected: str
) -> None:
    served = stack.serve(*args)
    assert served.returncode == 2 and expected in " ".join(served.stderr.split())
    assert not (stack.home / "llm" / "state.json").exists()


def test_foreground_serves_until_ctrl_c_and_stops_everything(stack: Stack) -> None:
    process = subprocess.Popen(
        [
            *SAGE,
            *("llm", "serve", "--engine", "stub", "--no-embedding", "--foreground"),
            *("--port", str(stack.llm), "--gateway-port", str(stack.gateway)),
        ],
        env={**stack.env, "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:  # the engines' and the gateway's logs, then "ready"
            if "ready" in line:
                break
        pids = stack.pids()
        assert all(map(alive, pids.values()))
        assert httpx.get(f"http://127.0.0.1:{stack.gateway}/health", timeout=10).status_code == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(120) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert not [name for name, pid in pids.items() if alive(pid)]
    assert not (stack.home / "llm" / "state.json").exists()


def test_stop_never_signals_a_process_that_reused_a_pid(stack: Stack) -> None:
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        state = {
            "pids": {"gateway": bystander.pid},
            "started": {"gateway": 1.0},  # the stack's gateway started long before it
            "host": "127.0.0.1",
            "ports": {"gateway": stack.gateway},
        }
        (stack.home / "llm").mkdir(parents=True)
        (stack.home / "llm" / "state.json").write_text(json.dumps(state))
        stopped = stack.sage("stop", timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        assert "had already exited" in stopped.stdout
        assert bystander.poll() is None  # untouched
    finally:
        bystander.kill()
        bystander.wait()


def test_tenants_come_from_a_json_file_and_a_bad_one_is_refused_before_starting(
    stack: Stack, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"acme": {"api_keys": ["sk-acme"], "rpm": 0}}')
    refused = stack.serve("--engine", "stub", "--model", "stub-llm", "--tenants", str(bad))
    assert refused.returncode == 2 and "tenants.acme.rpm=0" in refused.stdout + refused.stderr
    assert not (stack.home / "llm" / "state.json").exists()
    good = tmp_path / "tenants.json"
    good.write_text('{"acme": {"api_keys": ["sk-acme"], "rpm": 10, "weight": 2}}')
    served = stack.serve("--engine", "stub", "--model", "stub-llm", "--tenants", str(good))
    assert served.returncode == 0, served.stdout + served.stderr
    gateway = json.loads((stack.home / "llm" / "gateway.json").read_text())
    assert gateway["tenants"]["acme"]["weight"] == 2
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{stack.gateway}/v1", api_key="sk-acme", max_retries=0
    )
    reply = client.chat.completions.with_raw_response.create(
        model="stub-llm", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.headers["x-ratelimit-limit-requests"] == "10"
    with pytest.raises(openai.AuthenticationError):  # the tenants' keys are required now
        openai.OpenAI(
            base_url=f"http://127.0.0.1:{stack.gateway}/v1", api_key="other", max_retries=0
        ).models.list()


def test_logs_follow_prints_new_lines_and_stop_force_kills(stack: Stack) -> None:
    served = stack.serve("--engine", "stub")
    assert served.returncode == 0, served.stdout + served.stderr
    pids = stack.pids()
    follower = subprocess.Popen(
        [*SAGE, "llm", "logs", "gateway", "-f", "-n", "1"],
        env={**stack.env, "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        # the tail of the log comes first, after the file's rule
        assert "gateway.log" in follower.stdout.readline()
        follower.stdout.readline()
        with (stack.home / "llm" / "logs" / "gateway.log").open("a") as log:
            log.write("a line written after -f started\n")
        assert follower.stdout.readline().strip() == "gateway: a line written after -f started"
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=30) == 0
    finally:
        follower.kill()
        follower.wait()
    stopped = stack.sage("stop", "--force", timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert stopped.stdout.count("killed ") == 3
    assert not [name for name, pid in pids.items() if alive(pid)]
