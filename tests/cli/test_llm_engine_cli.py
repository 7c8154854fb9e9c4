"""``sage llm engine list | start | stop`` as a user runs them: a simulated stack of real
processes on loopback, engines added and drained while requests keep coming."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from llm_stack import LlmHome, alive

from sage.common.processes import started_at

MODEL = "sim-llm"
TOKENS = 16  # every answer: exactly this many tokens (the simulator's rule)


class Stack(LlmHome):
    """A simulated stack on loopback; ``sage llm stop`` is run whatever happens."""

    def __init__(self, home: Path) -> None:
        super().__init__(home)
        self.url = f"http://127.0.0.1:{self.gateway}"

    def serve(self) -> None:
        served = self.sage(
            "serve",
            *("--engine", "simulated", "--model", MODEL, "--no-embedding"),
            *("--sim-profile", '{"decode_base_ms": 5.0, "max_batch": 16}'),
            *("--port", str(self.llm), "--embedding-port", str(self.embedding)),
            *("--gateway-port", str(self.gateway)),
        )
        assert served.returncode == 0, served.stdout + served.stderr

    def engines(self) -> dict[str, dict[str, Any]]:
        """``sage llm engine list --json`` by name."""
        listed = self.sage("engine", "list", "--json", timeout=60)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        return {row["name"]: row for row in json.loads(listed.stdout)}

    def instances(self) -> dict[str, dict[str, Any]]:
        key = self.env.get("SAGE_API_KEY")
        headers = {"authorization": f"Bearer {key}"} if key else {}
        answer = httpx.get(f"{self.url}/v1/management/instances", headers=headers, timeout=10)
        return {i["instance_id"]: i for i in answer.json()["instances"]}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    yield s
    s.sage("stop", timeout=120)


def ask(client: httpx.Client, stream: bool) -> str | None:
    """One chat request through the gateway; ``None`` if it got a whole answer, else why not."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": TOKENS,
        "stream": stream,
    }
    if not stream:
        answer = client.post("/v1/chat/completions", json=body)
        if answer.status_code != 200:
            return f"{answer.status_code} {answer.text}"
        reply = answer.json()
        choice = reply["choices"][0]
        whole = reply["usage"]["completion_tokens"] == TOKENS and choice["message"]["content"]
        return None if whole and choice["finish_reason"] == "length" else f"cut: {reply}"
    chunks, finish = 0, None
    with client.stream("POST", "/v1/chat/completions", json=body) as answer:
        if answer.status_code != 200:
            return f"{answer.status_code} {answer.read().decode()}"
        for line in answer.iter_lines():
            if line == "data: [DONE]":
                return None if (chunks, finish) == (TOKENS, "length") else f"cut: {chunks}"
            if line.startswith("data: "):
                choice = json.loads(line[6:])["choices"][0]
                chunks += bool(choice["delta"].get("content"))
                finish = choice.get("finish_reason") or finish
    return f"the stream ended without [DONE] after {chunks} chunks"


def test_nothing_running_and_bad_options_are_clear_errors(stack: Stack) -> None:
    for command in (("list",), ("start",), ("stop", "llm-2")):
        refused = stack.sage("engine", *command, timeout=60)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "nothing is running; start it with sage llm serve" in refused.stderr
    bad = stack.sage("engine", "start", "--kind", "vision", timeout=60)
    assert bad.returncode == 2 and "--kind" in bad.stderr


def test_a_started_engine_serves_beside_the_first_and_sage_llm_stop_stops_it(
    stack: Stack,
) -> None:
    stack.serve()
    started = stack.sage("engine", "start")
    assert started.returncode == 0, started.stdout + started.stderr
    assert "llm-2" in started.stdout
    engines = stack.engines()
    assert set(engines) == {"llm", "llm-2"}
    assert all(e["instance_type"] == "llm" and e["healthy"] for e in engines.values())
    assert all(e["model_name"] == MODEL and not e["draining"] for e in engines.values())
    assert engines["llm-2"]["log"].endswith("logs/llm-2.log") and alive(engines["llm-2"]["pid"])
    state = stack.state()
    assert state["pids"]["llm-2"] == engines["llm-2"]["pid"] and "llm-2" in state["started"]
    assert state["engines"]["llm-2"]["instance_id"] == engines["llm-2"]["instance_id"]
    table = stack.sage("engine", "list", timeout=60)
    assert table.returncode == 0 and "llm-2" in table.stdout and "draining" in table.stdout

    before = {e["instance_id"]: e["requests"] for e in engines.values()}
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "stream": True}
        with client.stream("POST", "/v1/chat/completions", json={**body, "max_tokens": 400}):
            # one request in flight: the least loaded instance, the other one, gets the next
            assert ask(client, stream=False) is None
        assert ask(client, stream=False) is None
    after = {i: state["requests"] for i, state in stack.instances().items()}
    assert all(after[i] > before[i] for i in before), (before, after)

    logs = stack.sage("logs", "llm-2", timeout=60)
    assert logs.returncode == 0 and "llm-2.log" in logs.stdout
    stopped = stack.sage("stop", timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "llm-2" in stopped.stdout
    assert not [name for name, e in engines.items() if alive(e["pid"])]


def test_engines_added_and_drained_under_load_lose_no_request(stack: Stack) -> None:
    stack.serve()
    first = stack.engines()["llm"]
    results: list[str | None] = []
    changed = threading.Condition()
    done = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(base_url=stack.url, timeout=60) as client:
            n = worker
            while not done.is_set():
                outcome = ask(client, stream=n % 2 == 1)  # streamed and not, in turn
                n += 1
                with changed:
                    results.append(outcome)
                    changed.notify_all()

    def served_more(count: int) -> None:
        with changed:
            assert changed.wait_for(lambda: len(results) >= count, timeout=120)

    with ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(load, w) for w in range(4)]
        try:
            served_more(20)
            started = stack.sage("engine", "start")
            assert started.returncode == 0, started.stdout + started.stderr
            added = stack.engines()["llm-2"]
            served_more(len(results) + 40)
            assert stack.instances()[added["instance_id"]]["requests"] > 0  # it took load

            stopped = stack.sage("engine", "stop", "llm", "--timeout", "60")
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr
            assert "drained and stopped llm" in stopped.stdout
            served_more(len(results) + 40)  # and the rest keep being served
        finally:
            done.set()
            for worker in workers:
                worker.result(timeout=120)

    failures = [r for r in results if r is not None]
    assert not failures, f"{len(failures)} of {len(results)} requests lost: {failures[:3]}"
    assert len(results) >= 100
    assert set(stack.instances()) == {added["instance_id"]}
    assert not alive(first["pid"])
    state = stack.state()
    assert "llm" not in state["pids"] and "llm-2" in state["pids"]
    assert set(stack.engines()) == {"llm-2"}


def test_the_last_instance_needs_force_and_an_unknown_name_is_refused(stack: Stack) -> None:
    stack.serve()
    only = stack.engines()["llm"]
    refused = stack.sage("engine", "stop", "llm", timeout=60)
    assert refused.returncode == 1
    assert "last healthy llm instance" in refused.stderr and "--force" in refused.stderr
    assert alive(only["pid"]) and not stack.instances()[only["instance_id"]]["draining"]

    unknown = stack.sage("engine", "stop", "llm-7", timeout=60)
    assert unknown.returncode == 2
    assert "no engine 'llm-7'" in unknown.stderr and "llm" in unknown.stderr
    bad_id = stack.sage("engine", "start", "--id", "a/b", timeout=60)
    assert bad_id.returncode == 2 and "--id" in bad_id.stderr
    assert set(stack.state()["pids"]) == {"llm", "gateway"}  # nothing was started

    forced = stack.sage("engine", "stop", only["instance_id"], "--force", timeout=120)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert not alive(only["pid"]) and stack.instances() == {}
    assert "llm" not in stack.state()["pids"]


def test_the_commands_send_the_stacks_api_key(stack: Stack) -> None:
    stack.env["SAGE_API_KEY"] = "sk-engine-test"
    stack.serve()  # the gateway requires the key
    assert set(stack.engines()) == {"llm"}
    started = stack.sage("engine", "start", "--max-batch", "4")
    assert started.returncode == 0, started.stdout + started.stderr
    del stack.env["SAGE_API_KEY"]
    refused = stack.sage("engine", "list", timeout=60)
    assert refused.returncode == 1 and "SAGE_API_KEY" in refused.stderr
    stack.env["SAGE_API_KEY"] = "sk-engine-test"
    stopped = stack.sage("engine", "stop", "llm-2")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert set(stack.engines()) == {"llm"}


class _Refusing(BaseHTTPRequestHandler):
    """A gateway that lists no instance and refuses every new one."""

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._json(200, {"instances": []})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        error = {"message": "invalid instance: refused for the test", "param": "instance_id"}
        self._json(400, {"error": {**error, "type": "invalid_request_error", "code": None}})

    def log_message(self, *args: object) -> None:
        pass


class _Unreachable(_Refusing):
    """A gateway that registers every new instance but cannot reach it (its first probe
    failed), and records what it was asked to remove."""

    deleted: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["content-length"]))
        instance = {"instance_id": "llm-x", "healthy": False, "last_error": "probe refused"}
        self._json(201, {"instance": instance, "config": {}})

    def do_DELETE(self) -> None:
        self.deleted.append(self.path)
        self._json(200, {"removed": "llm-x"})


@pytest.mark.parametrize(
    ("gateway", "message"),
    [
        (_Refusing, "the gateway refused llm-2: invalid instance: refused for the test"),
        (_Unreachable, "the gateway could not reach llm-2: probe refused"),
    ],
)
def test_an_engine_the_gateway_refuses_is_stopped_again(
    tmp_path: Path, gateway: type[_Refusing], message: str
) -> None:
    stack = Stack(tmp_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), gateway)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        me = os.getpid()  # stands in for the gateway process: it is alive
        (tmp_path / "llm").mkdir()
        state = {
            "pids": {"gateway": me},
            "started": {"gateway": started_at(me)},
            "host": "127.0.0.1",
            "ports": {"llm": None, "embedding": None, "gateway": server.server_address[1]},
            "models": {"llm": MODEL, "embedding": None},
            "args": {"engine": "simulated", "model": MODEL},
        }
        (tmp_path / "llm" / "state.json").write_text(json.dumps(state))
        started = stack.sage("engine", "start", "--port", str(stack.llm), timeout=120)
        assert started.returncode == 1
        assert message in started.stderr
        if gateway is _Unreachable:  # registered, so unregistered again
            assert _Unreachable.deleted == ["/v1/management/instances/llm-x"]
        assert (tmp_path / "llm" / "logs" / "llm-2.log").exists()  # it did start...
        with pytest.raises(httpx.ConnectError):  # ...and is stopped again
            httpx.get(f"http://127.0.0.1:{stack.llm}/v1/models", timeout=5)
        assert json.loads((tmp_path / "llm" / "state.json").read_text()) == state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
