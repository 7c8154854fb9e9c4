"""The control plane inside the real gateway: scheduling fields, batching, failover.

Instances are the GPU-instance simulator (timing of a batched engine, no model), in this
process where only the gateway's behaviour matters and as processes where one is killed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from sage.common.concurrency import LoopThread
from sage.common.http import HttpPool
from sage.inference.config import BackendInstanceConfig, UnifiedServerConfig
from sage.inference.deploy.processes import spawn, terminate
from sage.inference.deploy.stack import LocalStack
from sage.inference.engines.stub import StubEmbeddingEngine
from sage.inference.gateway.server import UnifiedAPIServer

PROFILE = {"decode_base_ms": 5.0, "max_batch": 4, "embed_call_ms": 40.0}


@pytest.fixture
def stack() -> Iterator[LocalStack]:
    s = LocalStack(
        "sim-llm",
        "sim-emb",
        engine="simulated",
        max_concurrent_requests=1,
        gateway_options={
            "api_key_defaults": {"gold-key": {"priority": 0, "slo_ms": 1000}},
            "model_defaults": {"sim-llm": {"priority": 2}},
            "scheduling_policy": "hybrid",
            "embedding_batch_wait_ms": 0,
        },
        profile=PROFILE,
    ).start()
    yield s
    s.stop()


def chat(priority: object = None, **extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "model": "sim-llm",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        **extra,
    }
    if priority is not None:
        body["priority"] = priority
    return body


def test_priority_and_slo_come_from_body_headers_key_and_model_defaults(
    stack: LocalStack,
) -> None:
    url = f"http://127.0.0.1:{stack.port}"
    with httpx.Client(base_url=url) as client:
        assert client.post("/v1/chat/completions", json=chat(1, slo_ms=500)).status_code == 200
        header = {"x-sage-priority": "4", "x-sage-class": "nightly"}
        assert client.post("/v1/chat/completions", json=chat(), headers=header).status_code == 200
        assert client.post("/v1/chat/completions", json=chat()).status_code == 200  # model: 2
        gold = {"authorization": "Bearer gold-key"}
        assert client.post("/v1/chat/completions", json=chat(), headers=gold).status_code == 200
        for bad, param in [
            (chat("high"), "priority"),
            (chat(True), "priority"),
            (chat(slo_ms=-5), "slo_ms"),
            (chat(slo_ms="soon"), "slo_ms"),
        ]:
            answer = client.post("/v1/chat/completions", json=bad)
            assert answer.status_code == 400, bad
            assert answer.json()["error"]["param"] == param
        answer = client.post("/v1/chat/completions", json=chat(), headers={"x-sage-slo-ms": "0"})
        assert answer.status_code == 400 and "x-sage-slo-ms" in answer.json()["error"]["message"]
        state = client.get("/v1/management/metrics").json()
    classes = state["classes"]
    assert classes["llm:p1"]["requests"] == 1 and classes["llm:p1"]["slo_requests"] == 1
    assert classes["nightly"]["requests"] == 1 and classes["nightly"]["slo_requests"] == 0
    assert classes["llm:p2"]["requests"] == 1  # the model's default
    gold_class = classes["llm:p0"]  # the API key's default beats the model's
    assert gold_class["requests"] == 1 and gold_class["slo_attainment"] == 1.0
    assert state["policy"] == "hybrid" and state["total_requests"] == 4
    prometheus = httpx.get(url + "/metrics").text
    assert 'sage_class_slo_attainment{class="llm:p0"} 1.0' in prometheus
    assert 'sage_gateway_policy_active{policy="hybrid"} 1' in prometheus


def test_hybrid_batches_concurrent_embeddings_and_each_gets_its_own_vectors(
    stack: LocalStack,
) -> None:
    texts = [[f"text {i}"] if i % 3 else [f"text {i}", f"more {i}"] for i in range(24)]

    async def send_all() -> list[tuple[int, bytes]]:
        pool = HttpPool("127.0.0.1", stack.port or 0, limit=64)
        try:

            async def one(inputs: list[str]) -> tuple[int, bytes]:
                body = orjson.dumps({"model": "sim-emb", "input": inputs})
                result = await pool.request("POST", "/v1/embeddings", body)
                return result.status, result.body

            return await asyncio.gather(*(one(t) for t in texts))
        finally:
            await pool.close()

    answers = asyncio.run(send_all())
    reference = StubEmbeddingEngine(dimension=384)
    for inputs, (status, body) in zip(texts, answers, strict=True):
        assert status == 200
        parsed = orjson.loads(body)
        assert [item["index"] for item in parsed["data"]] == list(range(len(inputs)))
        expected, _ = asyncio.run(reference.embed(inputs))
        got = [item["embedding"] for item in parsed["data"]]
        assert len(got) == len(expected)
        for vector, want in zip(got, expected, strict=True):
            assert vector == pytest.approx(want)
        assert parsed["usage"]["prompt_tokens"] >= 1
    state = httpx.get(f"http://127.0.0.1:{stack.port}/v1/management/metrics").json()
    # one slot on the instance and 24 requests at once: all but the first waited and left
    # in batched calls
    assert state["embedding_batches"] >= 1 and state["batched_requests"] >= 2
    embedding = next(i for i in state["instances"] if i["instance_type"] == "embedding")
    assert embedding["requests"] < len(texts)


def _spawn_simulator(tmp: Path, name: str) -> tuple[int, int]:
    args = [
        "engine",
        "--kind",
        "llm",
        "--model",
        "sim-llm",
        "--engine",
        "simulated",
        "--port",
        "0",
        "--sim-profile",
        orjson.dumps({"decode_base_ms": 10.0, "max_batch": 4}).decode(),
    ]
    return spawn(args, tmp / f"{name}.log", timeout_s=60)


@pytest.mark.slow
def test_killing_one_of_three_instances_mid_run_fails_no_idempotent_request(
    tmp_path: Path,
) -> None:
    instances = [_spawn_simulator(tmp_path, f"sim{i}") for i in range(3)]
    loop = LoopThread("test-gateway")
    gateway = UnifiedAPIServer(
        UnifiedServerConfig(
            port=0,
            scheduling_policy="slo_aware",
            llm_backends=[
                BackendInstanceConfig(port=port, model_name="sim-llm", max_concurrent_requests=4)
                for _, port in instances
            ],
        )
    )
    try:
        port = loop.call(gateway.start_async(), 30)

        async def run() -> list[int]:
            pool = HttpPool("127.0.0.1", port, limit=128)
            done = 0
            killed = asyncio.Event()

            async def one(i: int) -> int:
                nonlocal done
                body = orjson.dumps(chat(i % 3, max_tokens=8 + i % 5))
                result = await pool.request("POST", "/v1/chat/completions", body)
                done += 1
                if done == 20 and not killed.is_set():
                    os.kill(instances[0][0], signal.SIGKILL)  # in flight on it: retried
                    killed.set()
                return result.status

            try:
                return await asyncio.gather(*(one(i) for i in range(90)))
            finally:
                await pool.close()

        statuses = asyncio.run(run())
        state = httpx.get(f"http://127.0.0.1:{port}/v1/management/metrics").json()
    finally:
        loop.call(gateway.stop_async(), 30)
        loop.stop()
        for pid, _ in instances[1:]:
            terminate(pid)
    assert statuses == [200] * 90
    dead = next(i for i in state["instances"] if i["port"] == instances[0][1])
    assert dead["healthy"] is False
    assert state["retries"] >= 1
    survivors = [i for i in state["instances"] if i["port"] != instances[0][1]]
    assert sum(i["requests"] - i["errors"] for i in survivors) >= 70


def test_a_full_queue_gets_429_with_retry_after_and_big_max_tokens_a_400() -> None:
    """Bounded queues: beyond max_queued_requests a request is told when to come back;
    a max_tokens above the gateway's limit is refused naming the limit; it keeps serving."""
    with LocalStack(
        "sim-llm",
        engine="simulated",
        max_concurrent_requests=1,
        gateway_options={"max_queued_requests": 1, "max_tokens_limit": 64},
        profile={"decode_base_ms": 20.0, "max_batch": 1},
    ) as stack:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
                return await asyncio.gather(
                    *(client.post("/chat/completions", json=chat(max_tokens=8)) for _ in range(6))
                )

        answers = asyncio.run(burst())
        codes = sorted(a.status_code for a in answers)
        assert codes.count(200) >= 2 and 429 in codes, codes
        refused = next(a for a in answers if a.status_code == 429)
        assert int(refused.headers["retry-after"]) >= 1
        error = refused.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "queue_full"
        snapshot = httpx.get(stack.gateway_url + "/management/metrics").json()
        assert snapshot["rejected"] == codes.count(429)  # it was 0 whatever was refused
        too_big = httpx.post(stack.gateway_url + "/chat/completions", json=chat(max_tokens=65))
        assert too_big.status_code == 400
        assert too_big.json()["error"]["param"] == "max_tokens"
        assert "at most 64" in too_big.json()["error"]["message"]
        fine = httpx.post(stack.gateway_url + "/chat/completions", json=chat(max_tokens=64))
        assert fine.status_code == 200


def test_stop_drains_requests_in_progress_and_refuses_new_ones_with_503() -> None:
    stack = LocalStack(
        "sim-llm",
        engine="simulated",
        max_concurrent_requests=4,
        profile={"decode_base_ms": 50.0, "max_batch": 4},
    ).start()
    gateway = stack.gateway
    assert gateway is not None and gateway.registry is not None
    url = stack.gateway_url + "/chat/completions"
    answers: dict[str, httpx.Response] = {}
    with httpx.Client(timeout=30) as early, httpx.Client(timeout=30) as late:
        assert late.get(stack.gateway_url + "/models").status_code == 200  # opens a connection

        def slow() -> None:  # about 1 s of decoding
            answers["slow"] = early.post(url, json=chat(max_tokens=20))

        sender = threading.Thread(target=slow)
        sender.start()
        while not any(i.in_flight for i in gateway.registry.all()):  # wait until it is in
            assert sender.is_alive()
        stopper = threading.Thread(target=stack.stop)
        stopper.start()
        while gateway._http is not None and not gateway._http.draining:
            assert stopper.is_alive()
        refused = late.post(url, json=chat(max_tokens=2))  # on the connection opened before
        sender.join()
        stopper.join()
    assert answers["slow"].status_code == 200  # finished, not cut off
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "shutting down" in refused.json()["error"]["message"]
