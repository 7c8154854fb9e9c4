"""Draining an instance: ``DELETE /v1/management/instances/<id>?drain=true`` in the real
gateway, over GPU-instance simulators whose long decodes hold requests in flight."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest

from sage.inference.deploy.stack import LocalStack

# 20 ms a decode step: a 200-token answer stays in flight for about 4 s
PROFILE = {"decode_base_ms": 20.0, "max_batch": 8}
LONG = 200


def start(instances: int, max_concurrent: int = 64) -> LocalStack:
    return LocalStack(
        "sim-llm",
        None,
        engine="simulated",
        llm_ports=(0,) * instances,
        max_concurrent_requests=max_concurrent,
        profile=PROFILE,
    ).start()


@pytest.fixture
def two() -> Iterator[LocalStack]:
    s = start(2)
    yield s
    s.stop()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as executor:
        yield executor


def base(s: LocalStack) -> str:
    return f"http://127.0.0.1:{s.port}"


def instances(s: LocalStack) -> dict[str, dict[str, Any]]:
    listed = httpx.get(f"{base(s)}/v1/management/instances", timeout=10).json()["instances"]
    return {i["instance_id"]: i for i in listed}


def wait_until(check: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Poll ``check`` (the gateway's state has no event to wait on over HTTP)."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while not check():
        assert time.monotonic() < deadline, "the condition never held"
        pause.wait(0.02)


def chat(s: LocalStack, max_tokens: int = 2) -> httpx.Response:
    body = {"model": "sim-llm", "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(
        f"{base(s)}/v1/chat/completions", json={**body, "max_tokens": max_tokens}, timeout=60
    )


def stream(s: LocalStack, max_tokens: int = LONG) -> AbstractContextManager[httpx.Response]:
    body = {"model": "sim-llm", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    return httpx.stream(
        "POST",
        f"{base(s)}/v1/chat/completions",
        json={**body, "max_tokens": max_tokens},
        timeout=60,
    )


def read_to_the_end(lines: Iterator[str]) -> tuple[int, str | None]:
    """(content chunks, finish reason) of the rest of a stream, which must end in [DONE]."""
    chunks, finish = 0, None
    for line in lines:
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            return chunks, finish
        choice = json.loads(line[6:])["choices"][0]
        chunks += bool(choice["delta"].get("content"))
        finish = choice.get("finish_reason") or finish
    raise AssertionError("the stream ended without [DONE]")


def drain(
    s: LocalStack, instance_id: str, query: str = "drain=true&timeout_s=60"
) -> httpx.Response:
    return httpx.delete(f"{base(s)}/v1/management/instances/{instance_id}?{query}", timeout=90)


def busy(s: LocalStack) -> str:
    """The id of the one instance with a request in flight."""
    [instance_id] = [i for i, state in instances(s).items() if state["in_flight"]]
    return instance_id


def test_a_drain_waits_for_the_request_in_flight_while_new_ones_go_elsewhere(
    two: LocalStack, pool: ThreadPoolExecutor
) -> None:
    with stream(two) as held:
        assert held.status_code == 200
        lines = held.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"
        drained = busy(two)
        [other] = set(instances(two)) - {drained}
        before = instances(two)
        answer: Future[httpx.Response] = pool.submit(drain, two, drained)
        wait_until(lambda: instances(two)[drained]["draining"])

        for _ in range(3):  # while it drains, new requests go to the other instance
            reply = chat(two)
            assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
        during = instances(two)
        assert during[other]["requests"] == before[other]["requests"] + 3
        assert during[drained]["requests"] == before[drained]["requests"]
        assert during[drained]["in_flight"] == 1 and during[drained]["draining"]
        assert not during[other]["draining"]
        assert not answer.done()  # its request is still running: it waits

        chunks, finish = read_to_the_end(lines)
    assert (chunks, finish) == (LONG, "length")  # the held answer came whole
    removed = answer.result(timeout=60)
    assert removed.status_code == 200, removed.text
    assert removed.json() == {"removed": drained, "drained": 1}
    assert set(instances(two)) == {other}


def test_requests_waiting_in_the_gateway_go_to_the_other_instance(
    pool: ThreadPoolExecutor,
) -> None:
    s = start(2, max_concurrent=1)  # one request per instance: a third one waits
    try:
        first = pool.submit(lambda: chat(s, LONG))
        wait_until(lambda: sum(i["in_flight"] for i in instances(s).values()) == 1)
        drained = busy(s)
        [other] = set(instances(s)) - {drained}
        second = pool.submit(lambda: chat(s, LONG // 2))
        wait_until(lambda: instances(s)[other]["in_flight"] == 1)
        waiting = pool.submit(chat, s)
        wait_until(lambda: instances(s)[other]["queued"] == 1)

        answer = pool.submit(drain, s, drained)
        for reply in (first.result(60), second.result(60), waiting.result(60)):
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["message"]["content"]
        removed = answer.result(timeout=60)
        assert removed.status_code == 200, removed.text
        # the waiting request went to the other instance, even if the drained one freed first
        assert removed.json()["drained"] == 1
        assert instances(s)[other]["requests"] == 2
    finally:
        s.stop()


def test_a_drain_that_times_out_puts_the_instance_back_in_rotation(two: LocalStack) -> None:
    with stream(two) as held:
        lines = held.iter_lines()  # (kept: a dropped iterator would close the stream)
        next(line for line in lines if line.startswith("data: "))
        held_on = busy(two)
        refused = drain(two, held_on, "drain=true&timeout_s=0.2")
        assert refused.status_code == 409
        error = refused.json()["error"]
        assert error["code"] == "drain_timeout" and error["param"] == "instance_id"
        assert "1 request in flight" in error["message"] and held_on in error["message"]
        assert "back in rotation" in error["message"]
        state = instances(two)[held_on]
        assert not state["draining"] and state["in_flight"] == 1
    wait_until(lambda: instances(two)[held_on]["in_flight"] == 0)  # the client went away
    before = instances(two)[held_on]["requests"]
    # both idle: least loaded ties go to the first registered, which the held stream was on
    assert chat(two).status_code == 200
    assert instances(two)[held_on]["requests"] == before + 1  # it is back in rotation


def test_the_last_healthy_instance_is_refused_unless_forced() -> None:
    s = start(1)
    try:
        [only] = instances(s)
        refused = drain(s, only)
        assert refused.status_code == 409
        error = refused.json()["error"]
        assert error["code"] == "last_instance" and error["param"] == "instance_id"
        assert only in error["message"] and "force=true" in error["message"]
        assert not instances(s)[only]["draining"]
        assert chat(s).status_code == 200  # still serving

        forced = drain(s, only, "drain=true&force=true")
        assert forced.status_code == 200, forced.text
        assert forced.json() == {"removed": only, "drained": 0}
        assert instances(s) == {}
    finally:
        s.stop()


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("drain=maybe", "drain"),
        ("drian=true", "drian"),
        ("drain=true&timeout_s=-1", "timeout_s"),
        ("drain=true&timeout_s=soon", "timeout_s"),
        ("drain=true&drain=false", "drain"),
        ("force=true", "force"),
    ],
)
def test_a_bad_drain_query_gets_400_naming_the_parameter(
    two: LocalStack, query: str, param: str
) -> None:
    [first, _] = instances(two)
    refused = drain(two, first, query)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == param
    assert param in refused.json()["error"]["message"]
    assert set(instances(two)) >= {first}  # nothing was removed


def test_an_unknown_instance_gets_404_and_a_plain_delete_removes_at_once(
    two: LocalStack,
) -> None:
    missing = drain(two, "no-such-instance")
    assert missing.status_code == 404
    assert missing.json()["error"]["param"] == "instance_id"
    assert "no-such-instance" in missing.json()["error"]["message"]
    [first, second] = instances(two)
    plain = httpx.delete(f"{base(two)}/v1/management/instances/{first}", timeout=10)
    assert plain.status_code == 200 and plain.json() == {"removed": first}  # as it always was
    assert set(instances(two)) == {second}
    described = instances(two)[second]
    assert described["draining"] is False
