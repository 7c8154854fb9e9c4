"""The gateway's per-instance figures: SLO attainment, lane queue and limits, in
``GET /metrics`` (read back by prometheus_client's parser) and in the instances' JSON; its
latency histograms in seconds per model and class, and per instance.

The gateway runs over stub engines (they answer at once); the queue figure, which needs
requests to wait, is checked on the dispatcher itself with a fake clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from metric_names import histogram_count, missing, shaped
from sage.inference.config import BackendInstanceConfig
from sage.inference.control_plane.dispatcher import Dispatcher, Grant, Ticket
from sage.inference.control_plane.instances import InstanceRegistry
from sage.inference.control_plane.queues import PendingRequest
from sage.inference.deploy.stack import LocalStack

CHAT = {"model": "stub-llm", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
EMBED = {"model": "stub-emb", "input": ["a text"]}
MET, MISSED = {"x-sage-slo-ms": "60000"}, {"x-sage-slo-ms": "0.001"}  # 1 µs: never met

INSTANCE_FAMILIES = {
    "sage_instance_requests": "counter",  # prometheus_client drops a counter's _total
    "sage_instance_errors": "counter",
    "sage_instance_in_flight": "gauge",
    "sage_instance_healthy": "gauge",
    "sage_instance_latency_p95_ms": "gauge",  # deprecated alias
    "sage_instance_ttft_p95_ms": "gauge",
    "sage_instance_request_duration_seconds": "histogram",
    "sage_instance_time_to_first_token_seconds": "histogram",
    "sage_instance_max_concurrent_requests": "gauge",
    "sage_instance_queued": "gauge",
    "sage_instance_slo_attainment": "gauge",
}


@pytest.fixture
def stack() -> Iterator[LocalStack]:
    s = LocalStack(
        "stub-llm",
        "stub-emb",
        engine="stub",
        llm_ports=(0, 0),  # two instances of the LLM
        max_concurrent_requests=3,
        gateway_options={"health_check_interval_s": 3600, "shutdown_grace_s": 1.0},
    ).start()
    yield s
    s.stop()


def scrape(url: str) -> dict[str, Any]:
    answer = httpx.get(url + "/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert not missing(answer.text, "Gateway")  # every name docs/OBSERVABILITY.md lists
    return shaped(answer.text)  # parses; latencies are histograms in seconds


def per_instance(family: Any) -> dict[str, float]:
    return {sample.labels["instance"]: sample.value for sample in family.samples}


def test_metrics_show_per_instance_slo_attainment_queue_and_limits(stack: LocalStack) -> None:
    url = f"http://127.0.0.1:{stack.port}"
    with httpx.Client(base_url=url) as client:
        sent = [
            client.post("/v1/chat/completions", json=CHAT, headers=MET),
            client.post("/v1/chat/completions", json=CHAT, headers=MET),
            client.post("/v1/chat/completions", json=CHAT, headers=MISSED),
            client.post("/v1/chat/completions", json=CHAT),  # no SLO: not counted
            client.post("/v1/embeddings", json=EMBED, headers=MET),
            client.post("/v1/embeddings", json=EMBED, headers=MET),
        ]
        stream = {**CHAT, "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=stream, headers=MET) as answer:
            assert answer.status_code == 200 and b"[DONE]" in answer.read()
        assert all(answer.status_code == 200 for answer in sent)
        instances = {
            i["instance_id"]: i for i in client.get("/v1/management/instances").json()["instances"]
        }
    families = scrape(url)

    requests = families["sage_gateway_requests"]
    assert requests.type == "counter" and requests.samples[0].value == 7
    for name, kind in INSTANCE_FAMILIES.items():
        assert families[name].type == kind, name
    llm = {i for i, d in instances.items() if d["instance_type"] == "llm"}
    (emb,) = set(instances) - llm
    assert len(llm) == 2
    labels = next(
        s.labels for s in families["sage_instance_queued"].samples if s.labels["instance"] == emb
    )
    assert labels == {"instance": emb, "model": "stub-emb", "type": "embedding"}

    served = per_instance(families["sage_instance_requests"])
    assert sum(served[i] for i in llm) == 5 and served[emb] == 2
    assert per_instance(families["sage_instance_max_concurrent_requests"]) == dict.fromkeys(
        instances, 3.0
    )
    assert per_instance(families["sage_instance_queued"]) == dict.fromkeys(instances, 0.0)
    assert per_instance(families["sage_instance_in_flight"]) == dict.fromkeys(instances, 0.0)

    attainment = per_instance(families["sage_instance_slo_attainment"])
    assert all(0.0 <= value <= 1.0 for value in attainment.values())
    assert attainment[emb] == 1.0
    for instance_id, state in instances.items():
        assert state["queued"] == 0
        if state["slo_requests"] == 0:  # served none with an SLO: no sample, None in JSON
            assert instance_id not in attainment and state["slo_attainment"] is None
        else:
            assert attainment[instance_id] == pytest.approx(state["slo_attainment"])
    # the LLM instances served 4 requests with an SLO (the streamed one too); 3 met it
    assert sum(instances[i]["slo_requests"] for i in llm) == 4
    assert sum(instances[i]["slo_requests"] * attainment.get(i, 0) for i in llm) == pytest.approx(3)

    classes = {s.labels["class"]: s.value for s in families["sage_class_slo_attainment"].samples}
    assert classes["llm:p0"] == pytest.approx(3 / 4) and classes["embedding:p0"] == 1.0

    for name in (
        "sage_gateway_request_duration_seconds",
        "sage_gateway_time_to_first_token_seconds",
        "sage_gateway_queue_time_seconds",
    ):
        family = families[name]
        assert histogram_count(family, model="stub-llm", **{"class": "llm:p0"}) == 5, name
        assert histogram_count(family, model="stub-emb", **{"class": "embedding:p0"}) == 2, name
        assert histogram_count(family) == 7, name  # no other series
    for name in (
        "sage_instance_request_duration_seconds",
        "sage_instance_time_to_first_token_seconds",
    ):
        counts = {i: histogram_count(families[name], instance=i) for i in instances}
        assert counts == served, name


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_instances_show_their_lane_queue_and_count_slo_where_the_request_finished() -> None:
    async def scenario() -> None:
        clock = Clock()
        registry = InstanceRegistry()
        a, b = (
            registry.add(
                BackendInstanceConfig(port=9000 + i, model_name="m", max_concurrent_requests=1)
            )
            for i in range(2)
        )
        other = registry.add(BackendInstanceConfig(port=9100, model_name="other"))
        dispatcher = Dispatcher(registry, "fifo", clock=clock)
        loop = asyncio.get_running_loop()

        def request(slo_ms: float | None) -> PendingRequest:
            return PendingRequest(arrival=clock.now, kind="llm", model="m", slo_ms=slo_ms)

        first, second, third = request(100.0), request(100.0), request(None)
        grants = [await dispatcher.admit(r, Ticket(loop.create_future())) for r in (first, second)]
        waiting = loop.create_task(dispatcher.admit(third, Ticket(loop.create_future())))
        await asyncio.sleep(0)  # let it reach the queue
        assert [a.describe()["queued"], b.describe()["queued"], other.queued] == [1, 1, 0]
        assert dispatcher.queued_in("llm", "m") == 1 and dispatcher.queued_in("llm", "x") == 0

        clock.now = 0.05  # 50 ms after arrival: within the 100 ms SLO
        assert grants[0].instance is a and grants[1].instance is b
        dispatcher.finish(first, a, 0.0, failed=False)
        grant: Grant = await waiting  # the freed slot goes to the waiting request
        assert grant.instance is a and a.queued == 0
        clock.now = 0.2  # too late for ``second``
        dispatcher.finish(second, b, 0.0, failed=False)
        dispatcher.finish(third, a, 0.0, failed=True)  # no SLO: not counted
        assert (a.slo_total, a.slo_met, a.describe()["slo_attainment"]) == (1, 1, 1.0)
        assert (b.describe()["slo_requests"], b.slo_attainment) == (1, 0.0)
        assert other.describe()["slo_requests"] == 0 and other.describe()["slo_attainment"] is None

        failed = request(1000.0)
        placed = (await dispatcher.admit(failed, Ticket(loop.create_future()))).instance
        assert placed is a
        dispatcher.finish(failed, a, 0.0, failed=True)  # fast but failed: SLO missed
        assert (a.slo_total, a.slo_met, a.slo_attainment) == (2, 1, 0.5)

    asyncio.run(scenario())
