"""Malformed requests the fuzzer (and reading around its finds) turned up: each gets an
OpenAI-style 4xx naming the parameter, and the gateway keeps serving."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from urllib.parse import quote

import httpx
import orjson
import pytest

from sage.inference.config import BackendInstanceConfig
from sage.inference.control_plane.instances import Instance
from sage.inference.deploy.stack import LocalStack
from sage.inference.gateway.relay import StreamRelay

CHAT = {"model": "stub-llm", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}


@pytest.fixture
def stack() -> Iterator[LocalStack]:
    s = LocalStack(
        "stub-llm",
        "stub-emb",
        engine="stub",
        gateway_options={"health_check_interval_s": 3600, "shutdown_grace_s": 1.0},
    ).start()
    yield s
    s.stop()


def _error(response: httpx.Response, status: int, param: str | None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param, error
    return str(error["message"])


def test_an_instance_with_a_bad_field_is_refused_before_it_is_registered(
    stack: LocalStack,
) -> None:
    assert stack.gateway is not None
    url = f"http://127.0.0.1:{stack.port}"
    bad: list[tuple[dict[str, object], str | None]] = [
        ({"port": 1, "base_path": {}}, "base_path"),  # the fuzzer's find: 500, health loop died
        ({"port": 1, "base_path": "v1"}, "base_path"),
        ({"port": 70000}, "port"),
        ({"port": "one"}, "port"),
        ({"port": 1, "host": "exa mple"}, "host"),
        ({"port": 1, "host": 5}, "host"),
        ({"port": 1, "api_key": "ключ"}, "api_key"),  # not latin-1: broke every probe
        ({"port": 1, "api_key": "a\r\nx-injected: 1"}, "api_key"),
        ({"port": 1, "model_name": 7}, "model_name"),  # broke GET /v1/models (sorting)
        ({"port": 1, "model_name": ""}, "model_name"),
        ({"port": 1, "max_concurrent_requests": 0}, "max_concurrent_requests"),
        ({"port": 1, "max_concurrent_requests": "x"}, "max_concurrent_requests"),
        ({"port": 1, "instance_id": "a/b"}, "instance_id"),
        ({"port": 1, "instance_id": "."}, "instance_id"),  # fuzzer: DELETE .../. cannot name it
        ({"port": 1, "instance_id": ".."}, "instance_id"),
        ({"port": 1, "instance_type": "gpu"}, "instance_type"),
        ({"port": 1, "colour": "red"}, "colour"),
    ]
    with httpx.Client(base_url=url) as client:
        before = client.get("/v1/management/instances").json()["instances"]
        for body, param in bad:
            message = _error(client.post("/v1/management/instances", json=body), 400, param)
            assert message.startswith("invalid instance"), message
        taken = {"port": stack.llm_ports[0]}  # id host:port is registered already
        _error(client.post("/v1/management/instances", json=taken), 400, "instance_id")
        assert client.get("/v1/management/instances").json()["instances"] == before
        assert sorted(m["id"] for m in client.get("/v1/models").json()["data"]) == [
            "stub-emb",
            "stub-llm",
        ]
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert stack.gateway._health_task is not None and not stack.gateway._health_task.done()


def test_one_broken_instance_does_not_stop_the_health_checks_of_the_others(
    stack: LocalStack,
) -> None:
    gateway = stack.gateway
    assert gateway is not None and gateway.registry is not None and gateway.health is not None
    registry, health = gateway.registry, gateway.health
    # registered behind the API's back, as a config file could: its probe raises TypeError
    config = BackendInstanceConfig(port=1, model_name="stub-llm", instance_id="broken")
    config.base_path = None  # type: ignore[assignment]

    async def add_and_check() -> Instance:
        broken = registry.add(config)
        await health.check_all()  # raised before, and ended the health loop with it
        return broken

    broken = stack.call(add_and_check())
    assert not broken.healthy and "health check failed" in broken.last_error
    assert all(i.healthy for i in registry.all() if i is not broken)


def test_an_instance_id_that_needs_percent_encoding_can_be_removed(stack: LocalStack) -> None:
    url = f"http://127.0.0.1:{stack.port}"
    with httpx.Client(base_url=url) as client:
        for instance_id in ("llm#1", "gpu-é", "50%"):
            added = client.post(
                "/v1/management/instances",
                json={"port": 1, "model_name": "spare", "instance_id": instance_id},
            )
            assert added.status_code == 201, added.text
            removed = client.delete(f"/v1/management/instances/{quote(instance_id, safe='')}")
            assert removed.status_code == 200 and removed.json() == {"removed": instance_id}
        assert all(
            s["model_name"] != "spare"
            for s in client.get("/v1/management/instances").json()["instances"]
        )


def test_scheduling_fields_out_of_range_get_400(stack: LocalStack) -> None:
    url = f"http://127.0.0.1:{stack.port}/v1/chat/completions"
    with httpx.Client() as client:
        # 400 digits: accepted before, then a 500 (float overflow) once it had to queue
        huge = {"x-sage-priority": "9" * 400}
        _error(client.post(url, json=CHAT, headers=huge), 400, "priority")
        _error(client.post(url, json={**CHAT, "priority": 2**63}), 400, "priority")
        _error(client.post(url, json={**CHAT, "priority": 1.5}), 400, "priority")
        for slo in ("inf", "1e999", "nan"):
            _error(client.post(url, json=CHAT, headers={"x-sage-slo-ms": slo}), 400, "slo_ms")
        for ok in ({"priority": 2**63 - 1}, {"priority": -(2**63)}, {"priority": 3.0}):
            assert client.post(url, json={**CHAT, **ok}).status_code == 200, ok


def test_an_empty_embedding_input_names_the_parameter(stack: LocalStack) -> None:
    url = f"http://127.0.0.1:{stack.port}/v1/embeddings"
    for texts in ([], "", ["a", ""]):
        message = _error(httpx.post(url, json={"model": "stub-emb", "input": texts}), 400, "input")
        assert "empty" in message and "validation error for" not in message


def test_request_classes_cannot_break_the_prometheus_text(stack: LocalStack) -> None:
    url = f"http://127.0.0.1:{stack.port}"
    header = {"x-sage-class": 'evil"} 1\\'}
    assert httpx.post(url + "/v1/chat/completions", json=CHAT, headers=header).status_code == 200
    lines = httpx.get(url + "/metrics").text.splitlines()
    assert 'sage_class_requests_total{class="evil\\"} 1\\\\"} 1.0' in lines


async def _answer(closed: list[str]) -> AsyncIterator[bytes]:
    try:
        yield b"data: 1\n\n"
    finally:
        closed.append("upstream")


def test_a_relay_closed_before_its_first_chunk_gives_its_slot_back() -> None:
    settled: list[tuple[bool, float | None]] = []
    closed: list[str] = []

    async def run() -> None:
        relay = StreamRelay(
            _answer(closed), lambda failed, first: settled.append((failed, first)), 5
        )
        await relay.aclose()  # the client left before the answer began
        await relay.aclose()  # idempotent
        assert [chunk async for chunk in relay] == []

    asyncio.run(run())
    assert settled == [(True, None)] and closed == ["upstream"]


def test_a_client_that_leaves_while_its_stream_waits_does_not_keep_the_slot() -> None:
    with LocalStack(
        "sim-llm",
        None,
        engine="simulated",
        max_concurrent_requests=1,
        gateway_options={"shutdown_grace_s": 1.0},
        profile={"decode_base_ms": 20.0},
    ) as stack:
        url = f"http://127.0.0.1:{stack.port}/v1/chat/completions"
        body = {"model": "sim-llm", "messages": [{"role": "user", "content": "x"}]}
        with httpx.Client(timeout=5) as client:
            occupant = {**body, "max_tokens": 50, "stream": True}  # holds the one slot ~1 s
            with client.stream("POST", url, json=occupant) as answer:
                chunks = answer.iter_bytes()
                next(chunks)  # it is running on the instance now
                waiting = orjson.dumps({**body, "max_tokens": 2, "stream": True})
                with socket.create_connection(("127.0.0.1", stack.port or 0)) as raw:
                    raw.sendall(
                        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                        % (len(waiting), waiting)
                    )  # queued behind the occupant; the client leaves at once
                for _ in chunks:
                    pass
            # the slot came back: this one runs (it waited forever when it did not)
            assert client.post(url, json={**body, "max_tokens": 2}).status_code == 200
