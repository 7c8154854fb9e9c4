"""``ControlPlaneVLLMService``: the seed's dict config, requests through its gateway, metrics,
clean shutdown, config errors, and use as a dataflow service.

The instances are stub engine servers on free loopback ports, on one test event-loop thread.
The two LLM stubs can hold requests (a gate the test opens), so the test can see which
instance each concurrent request was placed on without timing assumptions.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from control_plane_servers import StubServers

from sage.common.concurrency import LoopThread
from sage.common.config.ports import SagePorts
from sage.common.core.functions.map_function import MapFunction
from sage.common.errors import ConfigError, GatewayError, ServiceError
from sage.inference.engines.base import Delta, SamplingParams
from sage.inference.engines.stub import (
    ANSWER,
    StubEmbeddingEngine,
    StubLLMEngine,
)
from sage.kernel.api.local_environment import LocalEnvironment
from sage.middleware.services.control_plane import ControlPlaneVLLMService, parse_service_config

LLM, EMB = "test-llm", "test-emb"


class Gate:
    """Holds LLM requests while closed; counts, per instance, the requests it holds."""

    def __init__(self, loop: LoopThread) -> None:
        self._loop = loop
        self._open = asyncio.Event()
        self._open.set()
        self.held: Counter[str] = Counter()
        self._changed = threading.Condition()

    def close(self) -> None:
        self._loop.loop.call_soon_threadsafe(self._open.clear)

    def open(self) -> None:
        self._loop.loop.call_soon_threadsafe(self._open.set)

    async def pass_through(self, name: str) -> None:
        if self._open.is_set():
            return
        with self._changed:
            self.held[name] += 1
            self._changed.notify_all()
        await self._open.wait()

    def wait_held(self, n: int, timeout: float) -> bool:
        """Block until ``n`` requests are held (``False`` after ``timeout``)."""
        with self._changed:
            return self._changed.wait_for(lambda: sum(self.held.values()) >= n, timeout)


class GatedLLMEngine(StubLLMEngine):
    """The LLM stub, waiting at the gate before it answers."""

    def __init__(self, name: str, gate: Gate) -> None:
        super().__init__(LLM)
        self.name, self.gate = name, gate

    async def generate(
        self,
        params: SamplingParams,
        *,
        messages: Sequence[dict[str, Any]] | None = None,
        prompt: str | None = None,
    ) -> AsyncIterator[Delta]:
        await self.gate.pass_through(self.name)
        async for delta in super().generate(params, messages=messages, prompt=prompt):
            yield delta


class Engines(StubServers):
    """Two LLM stub servers (``a``, ``b``) behind the gate and an embedding stub server."""

    def __init__(self) -> None:
        loop = LoopThread("sage-test-engines")
        self.gate = Gate(loop)
        llm = [GatedLLMEngine(name, self.gate) for name in ("a", "b")]
        super().__init__(loop, llm, StubEmbeddingEngine(EMB))

    def config(self, **top: Any) -> dict[str, Any]:
        """The seed-shaped config over these servers (one slot per LLM instance)."""
        instances = self.instances(max_concurrent_requests=1)
        return {"scheduling_policy": "fifo", "instances": instances, **top}

    def close(self) -> None:
        self.gate.open()  # held requests finish before their servers stop
        super().close()


@pytest.fixture
def engines() -> Iterator[Engines]:
    e = Engines()
    yield e
    e.close()


def control_plane_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "sage-control-plane"]


def assert_stopped(port: int) -> None:
    assert control_plane_threads() == []
    assert SagePorts.is_port_free(port)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2.0)


def by_id(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["instance_id"]: i for i in metrics["instances"]}


# -- requests, metrics, cleanup -------------------------------------------------------------


def test_requests_go_through_the_gateway_to_both_instances_and_cleanup_stops_it(
    engines: Engines,
) -> None:
    service = ControlPlaneVLLMService(engines.config())
    assert service.get_status()["running"] is False
    service.setup()
    service.setup()  # idempotent: one gateway
    assert len(control_plane_threads()) == 1
    url = service.gateway_url
    port = int(url.split(":")[-1].split("/")[0])

    before = service.get_metrics()
    assert before["total_requests"] == 0
    assert before["policy"] == "fifo"
    assert sorted(by_id(before)) == ["emb", "llm-a", "llm-b"]
    assert all(i["healthy"] for i in before["instances"])
    status = service.get_status()
    assert status["running"] and status["gateway_url"] == url
    assert (status["llm_model"], status["embedding_model"]) == (LLM, EMB)

    assert service.generate("Hello", max_tokens=3) == "This is the"
    assert service.chat([{"role": "user", "content": "Hi"}], max_tokens=2) == "This is"
    vectors = service.embed(["one", "two"])
    assert len(vectors) == 2 and all(len(v) == 16 for v in vectors)
    assert service.embed("one") == vectors[0]

    # Two requests at once, one slot per instance: the second must go to the other instance.
    engines.gate.close()
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(service.generate, f"prompt {i}", max_tokens=1) for i in range(2)]
        both_held = engines.gate.wait_held(2, timeout=20)
        engines.gate.open()
        answers = [f.result(timeout=60) for f in futures]
    assert both_held and engines.gate.held == Counter({"a": 1, "b": 1})
    assert answers == ["This", "This"]

    metrics = service.get_metrics()
    assert metrics["total_requests"] == 6  # 4 LLM requests, 2 embedding calls
    states = by_id(metrics)
    assert states["llm-a"]["requests"] > 0 and states["llm-b"]["requests"] > 0
    assert states["llm-a"]["requests"] + states["llm-b"]["requests"] == 4
    assert states["emb"]["requests"] == 2
    assert sum(engines.llm_requests()) == 4 and min(engines.llm_requests()) > 0

    service.cleanup()
    assert_stopped(port)
    service.cleanup()  # idempotent
    assert service.get_status()["running"] is False
    with pytest.raises(ServiceError, match=r"call setup\(\) first"):
        service.get_metrics()
    with pytest.raises(ServiceError, match=r"call setup\(\) first"):
        service.generate("after cleanup")

    with service:  # starts again, on a new port, with fresh counters
        assert service.get_metrics()["total_requests"] == 0
        assert service.generate("again", max_tokens=1) == "This"
        again = int(service.gateway_url.split(":")[-1].split("/")[0])
    assert_stopped(again)


def test_async_and_streamed_calls_from_any_loop(engines: Engines) -> None:
    with ControlPlaneVLLMService(engines.config()) as service:

        async def calls() -> tuple[Any, ...]:
            text, chat, vector = await asyncio.gather(
                service.agenerate("x", max_tokens=2),
                service.achat("y", max_tokens=4),
                service.aembed("z"),
            )
            pieces = [p async for p in await service.agenerate("s", max_tokens=3, stream=True)]
            return text, chat, vector, pieces

        text, chat, vector, pieces = asyncio.run(calls())
        assert (text, chat) == ("This is", "This is the stub")
        assert len(vector) == 16
        assert "".join(pieces) == "This is the" and len(pieces) == 3
        # a second event loop works too: requests run on the service's loop, not the caller's
        assert asyncio.run(service.agenerate("again", max_tokens=1)) == "This"
        assert "".join(service.chat("sync stream", stream=True)) == ANSWER
        assert service.get_metrics()["total_requests"] == 6


def test_priority_and_slo_ms_are_sent_as_request_fields(engines: Engines) -> None:
    with ControlPlaneVLLMService(engines.config()) as service:
        assert service.generate("urgent", max_tokens=1, priority=0, slo_ms=500) == "This"
        assert service.chat("later", max_tokens=1, priority=5) == "This"
        # the field reaches the server: an invalid value is refused there, naming it
        with pytest.raises(GatewayError, match="slo_ms") as refused:
            service.generate("bad", max_tokens=1, slo_ms=-1)
        assert refused.value.status == 400


# -- unreachable instances -----------------------------------------------------------------


def test_setup_works_with_unreachable_instances_and_requests_say_which() -> None:
    nobody = SagePorts.any_free_port()  # nothing listens there
    service = ControlPlaneVLLMService(
        {
            "scheduling_policy": "adaptive",
            "instances": [
                {"instance_id": "llm-1", "host": "localhost", "port": nobody,
                 "model_name": "Qwen/Qwen2.5-7B-Instruct"},
            ],
            "request_timeout_s": 5,
        }
    )  # fmt: skip
    with service:
        metrics = service.get_metrics()
        assert metrics["total_requests"] == 0
        assert [(i["instance_id"], i["healthy"]) for i in metrics["instances"]] == [
            ("llm-1", False)
        ]
        assert service.get_status()["healthy_instances"] == 0
        with pytest.raises(GatewayError) as failed:
            service.generate("Hello", max_tokens=4)
        message = str(failed.value)
        assert failed.value.status in (502, 503, 504)
        assert f"llm-1 (Qwen/Qwen2.5-7B-Instruct at 127.0.0.1:{nobody})" in message
        assert "Start their engine servers" in message
    assert control_plane_threads() == []


# -- configuration errors ----------------------------------------------------------------------

GOOD = {"instance_id": "llm-1", "host": "localhost", "port": 8001, "model_name": "m"}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"scheduling_policy": "round_robin", "instances": [GOOD]},
            r"scheduling_policy: unknown scheduling policy 'round_robin'; use one of: "
            r"fifo, priority, slo_aware, hybrid, adaptive",
        ),
        (
            {"instances": [{"host": "localhost", "model_name": "m"}]},
            r"instances\[0\]: 'port' is missing",
        ),
        (
            {"instances": [{"port": 8001}]},
            r"instances\[0\]: 'model_name' is missing",
        ),
        ({"instance": [GOOD]}, r"unknown key 'instance' \(did you mean 'instances'\?\)"),
        (
            {"instances": [{**GOOD, "model": "m"}]},
            r"instances\[0\]: unknown key 'model' \(did you mean 'model_name'\?\)",
        ),
        ({"instances": [{**GOOD, "port": "8001"}]}, r"instances\[0\].port='8001' is invalid"),
        ({"instances": [{**GOOD, "port": 0}]}, r"use an integer from 1 to 65535"),
        ({"instances": [{**GOOD, "instance_type": "gpu"}]}, r"use 'llm' or 'embedding'"),
        (
            {"instances": [{**GOOD, "max_concurrent_requests": 0}]},
            r"max_concurrent_requests=0 is invalid",
        ),
        ({"instances": []}, r"list at least one engine server"),
        ({"scheduling_policy": "fifo"}, r"instances=None is invalid"),
        ({"instances": [GOOD, GOOD]}, r"instance_id 'llm-1' is already used by instances\[0\]"),
        ({"instances": [GOOD], "request_timeout_s": 0}, r"request_timeout_s=0 is invalid"),
        ({"instances": [GOOD], "gateway_port": 70000}, r"gateway_port=70000 is invalid"),
        ({"instances": ["localhost:8001"]}, r"instances\[0\] is str; each instance is a dict"),
    ],
)
def test_bad_configs_name_the_key_and_the_fix(config: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        ControlPlaneVLLMService(config)


def test_config_defaults_and_keyword_form() -> None:
    parsed = parse_service_config({"instances": [{"port": 8001, "model_name": "m"}]})
    assert parsed.scheduling_policy == "fifo" and parsed.gateway_port == 0
    (instance,) = parsed.instances
    assert (instance.host, instance.instance_id, instance.instance_type) == (
        "127.0.0.1",
        "127.0.0.1:8001",
        "llm",
    )
    service = ControlPlaneVLLMService(scheduling_policy="hybrid_slo", instances=[GOOD])
    assert service.config.scheduling_policy == "hybrid"
    with pytest.raises(ConfigError, match="pass a dict"):
        ControlPlaneVLLMService(["not", "a", "dict"])  # type: ignore[arg-type]


# -- as a dataflow service ---------------------------------------------------------------------


class Ask(MapFunction):
    def execute(self, prompt: str) -> tuple[str, str]:
        return prompt, self.call_service["llm"].generate(prompt, max_tokens=2, priority=1)


def test_operators_call_it_as_a_registered_service(
    engines: Engines, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    gateway_port = SagePorts.any_free_port()
    env = LocalEnvironment("control-plane-service")
    env.register_service("llm", ControlPlaneVLLMService, engines.config(gateway_port=gateway_port))
    out: list[tuple[str, str]] = []
    prompts = [f"question {i}" for i in range(8)]
    env.from_collection(prompts).map(Ask, parallelism=2).sink(out.append)
    env.submit()
    assert sorted(out) == sorted((p, "This is") for p in prompts)
    assert sum(engines.llm_requests()) == 8
    service_metrics = env.metrics().service("llm")
    assert (service_metrics.calls, service_metrics.errors) == (8, 0)
    assert_stopped(gateway_port)  # the job's teardown called cleanup()
    # the job gave it its context before setup(): it logs under the service's name
    (registered,) = [r for r in caplog.records if r.getMessage().startswith("Registered")]
    assert registered.getMessage().startswith("Registered 3 instances with the control plane")
    assert registered.name.startswith("sage.service.") and registered.name.endswith(".llm")
