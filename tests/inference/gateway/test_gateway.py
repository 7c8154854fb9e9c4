"""The gateway and engine servers with the official OpenAI SDK; bad input; management."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from sage.inference.deploy.stack import LocalStack
from sage.inference.engines.stub import (
    ANSWER,
)


class Stack(LocalStack):
    """Stub engine servers (LLM x2, embedding) behind a gateway."""

    def __init__(self, api_key: str | None = None, health_check_interval_s: float = 5.0) -> None:
        super().__init__(
            "stub-llm",
            "stub-emb",
            engine="stub",
            llm_ports=(0, 0),
            max_concurrent_requests=2,
            gateway_options={
                "api_key": api_key,
                "max_body_bytes": 1024 * 1024,
                "health_check_interval_s": health_check_interval_s,
            },
        )
        self.start()
        assert self.embedding_server is not None and self.embedding_port is not None
        self.engines = [*self.llm_servers, self.embedding_server]
        self.engine_ports = [*self.llm_ports, self.embedding_port]
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.stop()


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack()
    yield s
    s.close()


def sdk(port: int, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)


def test_openai_sdk_against_the_gateway_and_each_engine_server(stack: Stack) -> None:
    llm_ports = [stack.port, *stack.engine_ports[:2]]
    for port in llm_ports:
        client = sdk(port)
        chat = client.chat.completions.create(
            model="stub-llm", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert chat.choices[0].message.content == "This is the"
        assert chat.choices[0].finish_reason == "length" and chat.usage is not None
        assert chat.usage.completion_tokens == 3
        stream = client.chat.completions.create(
            model="stub-llm",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
        text = client.completions.create(model="stub-llm", prompt="x", max_tokens=2)
        assert text.choices[0].text == "This is"
        streamed = client.completions.create(model="stub-llm", prompt="x", stream=True)
        assert "".join(c.choices[0].text for c in streamed) == ANSWER
        assert "stub-llm" in [m.id for m in client.models.list()]
    for port in (stack.port, stack.engine_ports[2]):
        vectors = sdk(port).embeddings.create(model="stub-emb", input=["a", "b", "c"])
        assert [d.index for d in vectors.data] == [0, 1, 2] and len(vectors.data[0].embedding) == 16
    assert sorted(m.id for m in sdk(stack.port).models.list()) == ["stub-emb", "stub-llm"]


def test_bad_input_gets_openai_style_4xx_and_the_servers_keep_serving(stack: Stack) -> None:
    chat_url = stack.url + "/v1/chat/completions"
    cases: list[tuple[Any, int, str | None]] = [
        (b"{not json", 400, None),
        ({"model": "stub-llm"}, 400, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
        ({"model": 7, "messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
        ({"model": "stub-llm", "messages": "hi"}, 400, "messages"),
        (
            {"model": "stub-llm", "messages": [{"role": "robot", "content": "x"}]},
            400,
            "messages.0.role",
        ),
        (
            {
                "model": "stub-llm",
                "messages": [{"role": "user", "content": "x"}],
                "temperature": "hot",
            },
            400,
            "temperature",
        ),
        ({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        (
            {
                "model": "stub-llm",
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 10**6,
            },
            400,
            "max_tokens",
        ),
    ]
    with httpx.Client() as client:
        for body, status, param in cases:
            if isinstance(body, bytes):
                response = client.post(chat_url, content=body)
            else:
                response = client.post(chat_url, json=body)
            assert response.status_code == status, (body, response.text)
            error = response.json()["error"]
            assert error["message"] and error["type"] == "invalid_request_error"
            if param is not None:
                assert error["param"] == param, (body, error)
        empty = client.post(stack.url + "/v1/embeddings", json={"model": "stub-emb", "input": []})
        assert empty.status_code == 400 and "empty" in empty.json()["error"]["message"]
        huge = client.post(
            chat_url, content=b'{"model": "stub-llm", "messages": [' + b" " * 10_000_000 + b"]}"
        )
        assert huge.status_code == 413 and "larger than" in huge.json()["error"]["message"]
        ok = client.post(
            chat_url, json={"model": "stub-llm", "messages": [{"role": "user", "content": "x"}]}
        )
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == ANSWER


def test_requests_spread_over_instances_within_their_limits(stack: Stack) -> None:
    import concurrent.futures

    client = sdk(stack.port)

    def ask(_: int) -> str | None:
        r = client.chat.completions.create(
            model="stub-llm", messages=[{"role": "user", "content": "hi"}]
        )
        return r.choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(40)))
    assert answers == [ANSWER] * 40
    states = httpx.get(stack.url + "/v1/management/instances").json()["instances"]
    per_instance = {s["instance_id"]: s["requests"] for s in states if s["instance_type"] == "llm"}
    assert sum(per_instance.values()) == 40 and min(per_instance.values()) > 0
    assert all(s["in_flight"] == 0 for s in states)


def test_management_routes_policy_and_failover(stack: Stack) -> None:
    with httpx.Client(base_url=stack.url) as client:
        assert client.get("/v1/management/policy").json() == {
            "policy": "fifo",
            "active_policy": "fifo",
            "routing": "least_loaded",
        }
        assert client.put("/v1/management/policy", json={"policy": "hybrid_slo"}).json() == {
            "policy": "hybrid",
            "active_policy": "hybrid",
            "routing": "least_loaded",
        }
        assert client.put("/v1/management/policy", json={"routing": "cache_aware"}).json() == {
            "policy": "hybrid",
            "active_policy": "hybrid",
            "routing": "prefix_aware",
        }
        bad = client.put("/v1/management/policy", json={"policy": "fastest"})
        assert (
            bad.status_code == 400 and "fifo, priority, slo_aware" in bad.json()["error"]["message"]
        )
        for body, param in (({"routing": "nearest"}, "routing"), ({"polcy": "fifo"}, "polcy")):
            bad = client.put("/v1/management/policy", json=body)
            assert bad.status_code == 400 and bad.json()["error"]["param"] == param, bad.json()
        first = stack.engine_ports[0]
        assert client.delete(f"/v1/management/instances/127.0.0.1:{first}").json() == {
            "removed": f"127.0.0.1:{first}"
        }
        assert client.delete("/v1/management/instances/nope").status_code == 404
        added = client.post(
            "/v1/management/instances",
            json={"port": first, "model_name": "stub-llm", "instance_id": "again"},
        )
        assert added.status_code == 201 and added.json()["instance"]["healthy"]
        # an instance that cannot be reached leaves the rotation; requests still succeed
        client.post(
            "/v1/management/instances",
            json={"port": 1, "model_name": "stub-llm", "instance_id": "dead"},
        )
        for _ in range(6):
            ok = client.post(
                "/v1/chat/completions",
                json={"model": "stub-llm", "messages": [{"role": "user", "content": "x"}]},
            )
            assert ok.status_code == 200
        dead = next(
            s
            for s in client.get("/v1/management/instances").json()["instances"]
            if s["instance_id"] == "dead"
        )
        assert dead["healthy"] is False and "cannot connect" in dead["last_error"]
        metrics = client.get("/metrics").text
        assert 'sage_instance_healthy{instance="dead",model="stub-llm",type="llm"} 0.0' in metrics
        assert client.get("/health").json()["status"] == "ok"


def test_api_key_is_required_when_configured() -> None:
    s = Stack(api_key="s3cret")
    try:
        with pytest.raises(openai.AuthenticationError):
            sdk(s.port, "wrong").models.list()
        no_key = httpx.post(s.url + "/v1/chat/completions", json={})
        assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
        assert [m.id for m in sdk(s.port, "s3cret").models.list()] == ["stub-emb", "stub-llm"]
        assert httpx.get(s.url + "/health").status_code == 200  # health needs no key
    finally:
        s.close()


def test_a_request_to_an_instance_that_died_is_retried_on_another() -> None:
    stack = Stack(health_check_interval_s=3600)  # only requests can find out it died
    try:
        _died_and_retried(stack)
    finally:
        stack.close()


def _died_and_retried(stack: Stack) -> None:
    stack.call(stack.engines[0].stop())  # still marked healthy until a request fails
    with httpx.Client(base_url=stack.url) as client:
        for _ in range(4):
            ok = client.post(
                "/v1/chat/completions",
                json={"model": "stub-llm", "messages": [{"role": "user", "content": "x"}]},
            )
            assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == ANSWER
        states = {
            s["instance_id"]: s for s in client.get("/v1/management/instances").json()["instances"]
        }
    died = states[f"127.0.0.1:{stack.engine_ports[0]}"]
    assert died["healthy"] is False and died["errors"] >= 1


def test_keys_come_from_a_key_file_and_sage_api_key_and_are_never_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nalpha-key-123\n\nbeta-key-456  # batch jobs\n")
    monkeypatch.setenv("SAGE_API_KEY", "env-key-789")
    caplog.set_level(logging.DEBUG)
    with LocalStack(
        "stub-llm", engine="stub", gateway_options={"api_key_file": str(keys)}
    ) as stack:
        url = stack.gateway_url + "/chat/completions"
        body = {"model": "stub-llm", "messages": [{"role": "user", "content": "x"}]}
        for key in ("alpha-key-123", "beta-key-456", "env-key-789"):
            ok = httpx.post(url, json=body, headers={"authorization": f"Bearer {key}"})
            assert ok.status_code == 200, key
        for headers in ({}, {"authorization": "Bearer alpha-key-12"}, {"authorization": "x"}):
            refused = httpx.post(url, json=body, headers=headers)
            assert refused.status_code == 401
            assert refused.json()["error"]["type"] == "authentication_error"
    logged = "\n".join(record.getMessage() for record in caplog.records)
    for secret in ("alpha-key-123", "beta-key-456", "env-key-789"):
        assert secret not in logged


def test_an_unreadable_or_empty_key_file_is_refused_at_start(tmp_path: Path) -> None:
    from sage.common.errors import ConfigError
    from sage.inference.config import UnifiedServerConfig
    from sage.inference.gateway.server import UnifiedAPIServer

    with pytest.raises(ConfigError, match="cannot be read"):
        UnifiedAPIServer(UnifiedServerConfig(api_key_file=str(tmp_path / "missing")))
    (tmp_path / "empty").write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="holds no key; put one key per line"):
        UnifiedAPIServer(UnifiedServerConfig(api_key_file=str(tmp_path / "empty")))
