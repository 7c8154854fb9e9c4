"""COST_OPTIMIZED: requests go to the cheapest instance expected to meet their SLO.

The placement rule on hand-built instances (no servers), the policy's names, the
``cost_per_1k_tokens`` checks, and then the real thing: a gateway in front of two cheap but
slow simulated instances and one dear but fast one, sent the same seeded trace once under
SLO_AWARE and once under COST_OPTIMIZED. COST_OPTIMIZED must serve it for less, meeting as
many SLOs (within 2 percentage points).
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

from sage.common.concurrency import LoopThread
from sage.common.errors import ConfigError
from sage.common.http import HttpPool
from sage.inference.config import (
    BackendInstanceConfig,
    SchedulingPolicyType,
    UnifiedServerConfig,
    parse_policies,
)
from sage.inference.control_plane.costs import CostPlacer, cheapest_in_time, price
from sage.inference.control_plane.dispatcher import Dispatcher, Ticket
from sage.inference.control_plane.instances import Instance, InstanceRegistry
from sage.inference.control_plane.queues import PendingRequest, SloAwareQueue, make_queue
from sage.inference.engines.server import EngineServer
from sage.inference.engines.simulated import SimulatedLLMEngine, SimulatorProfile
from sage.inference.gateway.server import UnifiedAPIServer
from sage.inference.protocol import InstanceSpec

P = SchedulingPolicyType


def in_loop(test: Callable[..., None]) -> Callable[..., None]:
    """Run a synchronous test inside an event loop (instances open their pools on one)."""

    @functools.wraps(test)
    def run(*args: object, **kwargs: object) -> None:
        async def body() -> None:
            test(*args, **kwargs)

        asyncio.run(body())

    return run


# -- names and validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["cost_optimized", "cost-optimized", "COST_OPTIMIZED", P.COST_OPTIMIZED]
)
def test_the_policy_is_parsed_by_every_spelling(name: object) -> None:
    assert P.parse(name) is P.COST_OPTIMIZED
    assert UnifiedServerConfig(scheduling_policy=name).scheduling_policy is P.COST_OPTIMIZED  # type: ignore[arg-type]


def test_combined_names_and_unknown_names_list_it() -> None:
    assert parse_policies("cost_optimized+prefix_aware")[0] is P.COST_OPTIMIZED
    with pytest.raises(ConfigError, match="cost_optimized"):
        P.parse("cheapest")


def test_it_orders_the_queue_as_slo_aware() -> None:
    queue = make_queue(P.COST_OPTIMIZED, predict_s=lambda r: 0.0, default_slo_s=5.0)
    assert isinstance(queue, SloAwareQueue)
    for name, slo_ms in (("loose", 9000.0), ("tight", 100.0), ("none", None)):
        queue.push(PendingRequest(arrival=0.0, slo_ms=slo_ms, model=name))
    assert [queue.pop(0.0).model for _ in range(3)] == ["tight", "none", "loose"]  # type: ignore[union-attr]


@pytest.mark.parametrize("value", [-1, -0.01, float("nan"), float("inf"), True, "1"])
def test_a_bad_cost_is_refused_naming_the_field(value: object) -> None:
    with pytest.raises(ConfigError, match=r"instance\.cost_per_1k_tokens=.*use a number >= 0"):
        BackendInstanceConfig(cost_per_1k_tokens=value)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"llm_backends\[0\]\.cost_per_1k_tokens"):
        BackendInstanceConfig.from_mapping(
            {"port": 8001, "cost_per_1k_tokens": value}, "llm_backends[0]"
        )
    with pytest.raises(ValidationError) as caught:
        InstanceSpec.model_validate({"cost_per_1k_tokens": value})
    assert caught.value.errors()[0]["loc"] == ("cost_per_1k_tokens",)


@in_loop
def test_a_good_cost_is_kept_as_a_float_and_shown() -> None:
    config = BackendInstanceConfig.from_mapping({"port": 8001, "cost_per_1k_tokens": 2})
    assert config.cost_per_1k_tokens == 2.0 and isinstance(config.cost_per_1k_tokens, float)
    registry = InstanceRegistry()
    priced = registry.add(config)
    unpriced = registry.add(BackendInstanceConfig(port=8002))
    assert priced.describe()["cost_per_1k_tokens"] == 2.0 and priced.describe()["cost"] == 0.0
    assert unpriced.describe()["cost_per_1k_tokens"] is None
    assert unpriced.describe()["cost"] is None


# -- placement, by hand ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def cluster(
    *instances: tuple[str, float | None, int],
) -> tuple[InstanceRegistry, dict[str, Instance]]:
    """Instances of model ``m`` by (id, cost per 1k tokens, slots)."""
    registry = InstanceRegistry()
    made = {
        name: registry.add(
            BackendInstanceConfig(
                port=9000 + i,
                model_name="m",
                instance_id=name,
                max_concurrent_requests=slots,
                cost_per_1k_tokens=cost,
            )
        )
        for i, (name, cost, slots) in enumerate(instances)
    }
    return registry, made


def placer(registry: InstanceRegistry, clock: Clock, s_per_token: dict[str, float]) -> CostPlacer:
    """A placer that has learnt each named instance's seconds per token."""
    costs = CostPlacer(registry, lambda request: 0.0, clock)
    for name, seconds in s_per_token.items():
        instance = registry.get(name)
        assert instance is not None
        costs.served(instance, PendingRequest(arrival=0.0, model="m", tokens=10), seconds * 10, 0)
    return costs


def request(clock: Clock, slo_ms: float | None, tokens: int = 10) -> PendingRequest:
    return PendingRequest(arrival=clock.now, model="m", slo_ms=slo_ms, tokens=tokens)


def chosen(costs: CostPlacer, pending: PendingRequest) -> str | None:
    """The id of the instance ``costs`` places ``pending`` on."""
    instance = costs.pick(pending)
    return instance.id if instance is not None else None


SPEEDS = {"cheap": 0.1, "middle": 0.02, "dear": 0.005}  # seconds per token
THREE = (("cheap", 1.0, 2), ("middle", 5.0, 2), ("dear", 10.0, 2))


@in_loop
def test_the_cheapest_instance_expected_in_time_is_chosen() -> None:
    clock = Clock()
    registry, _ = cluster(*THREE)
    costs = placer(registry, clock, SPEEDS)
    # 10 tokens: cheap 1 s, middle 0.2 s, dear 0.05 s
    assert chosen(costs, request(clock, 3000.0)) == "cheap"
    assert chosen(costs, request(clock, 500.0)) == "middle"
    assert chosen(costs, request(clock, 100.0)) == "dear"
    late = request(clock, 1500.0)
    clock.now += 1.0  # waited 1 s: 0.5 s left, the cheap one would miss it now
    assert chosen(costs, late) == "middle"


@in_loop
def test_when_none_is_expected_in_time_the_soonest_takes_it() -> None:
    clock = Clock()
    registry, made = cluster(*THREE)
    costs = placer(registry, clock, SPEEDS)
    assert chosen(costs, request(clock, 10.0)) == "dear"
    made["dear"].in_flight = 2  # full
    assert chosen(costs, request(clock, 10.0)) == "middle"


@in_loop
def test_without_an_slo_the_cheapest_with_a_free_slot() -> None:
    clock = Clock()
    registry, made = cluster(*THREE)
    costs = placer(registry, clock, SPEEDS)
    assert chosen(costs, request(clock, None, tokens=10_000)) == "cheap"
    made["cheap"].in_flight = 2
    assert chosen(costs, request(clock, None)) == "middle"
    registry.mark(made["middle"], False)  # unhealthy: skipped
    assert chosen(costs, request(clock, None)) == "dear"
    made["dear"].in_flight = 2
    assert chosen(costs, request(clock, None)) is None


@in_loop
def test_an_undeclared_cost_counts_as_the_dearest_declared() -> None:
    registry, made = cluster(("dear", 10.0, 2), ("unknown", None, 2), ("cheap", 1.0, 1))
    peers = registry.of_model("llm", "m")
    assert price(made["unknown"], peers) == 10.0
    assert price(made["unknown"], [made["unknown"]]) == 0.0  # nobody declares: all equal
    clock = Clock()
    costs = placer(registry, clock, {})
    assert chosen(costs, request(clock, 5000.0)) == "cheap"  # not taken for free
    made["cheap"].in_flight = 1
    made["dear"].in_flight = 1
    assert chosen(costs, request(clock, 5000.0)) == "unknown"  # as dear as "dear", less busy


@in_loop
def test_equal_prices_go_to_the_least_loaded_and_ties_to_the_first() -> None:
    registry, made = cluster(("a", 1.0, 4), ("b", 1.0, 4))
    candidates = registry.of_model("llm", "m")
    assert cheapest_in_time(candidates, candidates, lambda i: 0.0, None).id == "a"
    made["a"].in_flight = 1
    assert cheapest_in_time(candidates, candidates, lambda i: 0.0, 1.0).id == "b"


@in_loop
def test_an_instance_that_answered_nothing_is_predicted_by_its_model() -> None:
    clock = Clock()
    registry, made = cluster(("cheap", 1.0, 1), ("dear", 10.0, 1))
    costs = CostPlacer(registry, lambda r: 0.05 * r.tokens, clock)
    assert costs.predict_s(made["cheap"], request(clock, None)) == pytest.approx(0.5)
    costs.served(made["dear"], request(clock, None), 0.01, 0)  # learnt: 0.001 s per token
    assert chosen(costs, request(clock, 400.0)) == "dear"  # the cheap one: 0.5 s, too slow
    costs.served(made["cheap"], request(clock, None), 0.1, 0)  # learnt: 0.01 s per token
    assert chosen(costs, request(clock, 400.0)) == "cheap"


def test_the_dispatcher_places_by_cost_and_counts_what_was_served() -> None:
    async def scenario() -> None:
        clock = Clock()
        registry, made = cluster(("dear", 10.0, 1), ("cheap", 1.0, 1), ("free", None, 1))
        dispatcher = Dispatcher(registry, "cost-optimized", clock=clock)
        loop = asyncio.get_running_loop()
        grants = []
        for _ in range(3):
            pending = PendingRequest(arrival=clock.now, model="m", tokens=5, cost=50)
            grant = await dispatcher.admit(pending, Ticket(loop.create_future()))
            grants.append((pending, grant.instance))
        # "free" declares nothing: it counts as 10 like "dear", and is registered after it
        assert [i.id for _, i in grants] == ["cheap", "dear", "free"]  # type: ignore[union-attr]
        for (pending, instance), used in zip(grants, (1000, 200, None), strict=True):
            assert instance is not None
            dispatcher.finish(pending, instance, 0.0, failed=False, used_tokens=used)
        assert made["cheap"].cost == pytest.approx(1.0)  # 1000 tokens at 1 per 1k
        assert made["dear"].cost == pytest.approx(2.0)  # 200 tokens at 10 per 1k
        assert made["free"].describe()["cost"] is None  # nothing declared, nothing counted
        assert dispatcher.describe()["cost"] == pytest.approx(3.0)
        assert dispatcher.describe()["policy"] == "cost_optimized"

    asyncio.run(scenario())


# -- the gateway, on simulated instances -------------------------------------------------------

MODEL = "sim-llm"
CHEAP = SimulatorProfile(decode_base_ms=10.0, decode_ms_per_seq=0.5)  # ~0.2 s a request
DEAR = SimulatorProfile(decode_base_ms=2.0, decode_ms_per_seq=0.5)  # ~0.05 s a request
SLOTS = 4  # per instance: 2 x 4 / 0.2 s ~ 40 requests/s for the cheap pair at most
REQUESTS, RATE, SEED = 100, 45.0, 7  # offered 45/s: the cheap pair cannot carry it alone
ENGINES = (("cheap-a", CHEAP, 1.0), ("cheap-b", CHEAP, 1.0), ("dear", DEAR, 10.0))
SLO_MS = 5000.0  # generous against ~0.2 s of service: only a stalled machine misses it


@pytest.fixture(scope="module")
def engines() -> Iterator[tuple[LoopThread, list[tuple[str, int, float]]]]:
    """Two cheap (1 per 1k tokens) slow simulators and a dear (10) fast one."""
    loop = LoopThread("cost-optimized-test")
    servers = []
    instances = []
    try:
        for name, profile, cost in ENGINES:
            server = EngineServer(SimulatedLLMEngine(MODEL, profile), "127.0.0.1", 0)
            servers.append(server)
            instances.append((name, loop.call(server.start(), 60), cost))
        yield loop, instances
    finally:
        for server in servers:
            loop.call(server.stop(), 60)
        loop.stop()


def gateway_config(policy: str, instances: list[tuple[str, int, float]]) -> UnifiedServerConfig:
    return UnifiedServerConfig(
        host="127.0.0.1",
        port=0,
        scheduling_policy=policy,
        llm_backends=[
            BackendInstanceConfig(
                host="127.0.0.1",
                port=port,
                model_name=MODEL,
                instance_id=name,
                max_concurrent_requests=SLOTS,
                cost_per_1k_tokens=cost,
            )
            for name, port, cost in instances
        ],
    )


async def send_trace(port: int) -> list[tuple[int, int]]:
    """The seeded trace, each request sent at its arrival time; (status, total tokens) each.

    Every fifth request carries no SLO (it goes to the cheapest free instance)."""
    rng = random.Random(SEED)
    arrivals, at = [], 0.0
    for _ in range(REQUESTS):
        at += rng.expovariate(RATE)
        arrivals.append((at, rng.randint(1, 40)))
    pool = HttpPool("127.0.0.1", port, limit=REQUESTS)
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def one(i: int, at: float, words: int) -> tuple[int, int]:
        await asyncio.sleep(max(0.0, start + at - loop.time()))  # the open-loop schedule
        body: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "word " * words}],
            "max_tokens": 16,
        }
        if i % 5:
            body["slo_ms"] = SLO_MS
        result = await pool.request("POST", "/v1/chat/completions", orjson.dumps(body))
        usage = orjson.loads(result.body).get("usage", {}) if result.status == 200 else {}
        return result.status, int(usage.get("total_tokens", 0))

    try:
        return await asyncio.gather(*(one(i, at, w) for i, (at, w) in enumerate(arrivals)))
    finally:
        await pool.close()


def serve(
    loop: LoopThread, instances: list[tuple[str, int, float]], policy: str
) -> tuple[dict[str, Any], list[tuple[int, int]]]:
    """Run the trace through a fresh gateway; its metrics JSON and the answers."""
    gateway = UnifiedAPIServer(gateway_config(policy, instances))
    port = loop.call(gateway.start_async(), 60)
    try:
        answers = asyncio.run(send_trace(port))
        metrics = httpx.get(f"http://127.0.0.1:{port}/v1/management/metrics").json()
    finally:
        loop.call(gateway.stop_async(), 60)
    return metrics, answers


def check_cost_figures(metrics: dict[str, Any], answers: list[tuple[int, int]]) -> None:
    """The cost per instance is its tokens x its price: the tokens add up to what clients got."""
    assert all(status == 200 for status, _ in answers)
    served = sum(i["cost"] * 1000 / i["cost_per_1k_tokens"] for i in metrics["instances"])
    assert served == pytest.approx(sum(tokens for _, tokens in answers))
    assert metrics["cost"] == pytest.approx(sum(i["cost"] for i in metrics["instances"]))


def attainment(metrics: dict[str, Any]) -> float:
    figures = metrics["classes"]["llm:p0"]
    assert figures["slo_requests"] == REQUESTS - REQUESTS // 5
    return float(figures["slo_attainment"])


def test_cost_optimized_serves_the_trace_for_less_meeting_as_many_slos(
    engines: tuple[LoopThread, list[tuple[str, int, float]]],
) -> None:
    loop, instances = engines
    slo_aware, slo_answers = serve(loop, instances, "slo_aware")
    cost_optimized, cost_answers = serve(loop, instances, "cost_optimized")
    check_cost_figures(slo_aware, slo_answers)
    check_cost_figures(cost_optimized, cost_answers)
    assert cost_optimized["policy"] == "cost_optimized"
    assert cost_optimized["cost"] < slo_aware["cost"], (cost_optimized["cost"], slo_aware["cost"])
    gap = attainment(cost_optimized) - attainment(slo_aware)
    assert abs(gap) <= 0.02, (attainment(cost_optimized), attainment(slo_aware))
    dear = {
        m["policy"]: next(i for i in m["instances"] if i["instance_id"] == "dear")
        for m in (slo_aware, cost_optimized)
    }
    assert dear["cost_optimized"]["requests"] < dear["slo_aware"]["requests"]


def test_the_management_api_takes_the_policy_and_instance_costs(
    engines: tuple[LoopThread, list[tuple[str, int, float]]],
) -> None:
    loop, instances = engines
    gateway = UnifiedAPIServer(gateway_config("fifo", instances[:1]))
    port = loop.call(gateway.start_async(), 60)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            changed = client.put("/v1/management/policy", json={"policy": "cost-optimized"})
            assert changed.status_code == 200 and changed.json()["policy"] == "cost_optimized"
            assert client.get("/health").json()["policy"] == "cost_optimized"
            name, engine_port, _ = instances[2]
            spec = {"port": engine_port, "model_name": MODEL, "instance_id": name}
            bad = client.post("/v1/management/instances", json={**spec, "cost_per_1k_tokens": -1})
            assert bad.status_code == 400
            assert bad.json()["error"]["param"] == "cost_per_1k_tokens"
            added = client.post(
                "/v1/management/instances", json={**spec, "cost_per_1k_tokens": 2.5}
            )
            assert added.status_code == 201, added.text
            state = added.json()["instance"]
            assert state["cost_per_1k_tokens"] == 2.5 and state["cost"] == 0.0
            listed = client.get("/v1/management/instances").json()["instances"]
            assert {i["instance_id"]: i["cost_per_1k_tokens"] for i in listed} == {
                instances[0][0]: instances[0][2],
                name: 2.5,
            }
            answer = client.post(
                "/v1/chat/completions",
                json={
                    "model": MODEL,
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 4,
                },
            )
            assert answer.status_code == 200
            tokens = answer.json()["usage"]["total_tokens"]
            metrics = client.get("/v1/management/metrics").json()
            # cheap-a (1 per 1k) was the cheapest with a free slot
            assert metrics["cost"] == pytest.approx(tokens * 1.0 / 1000)
    finally:
        loop.call(gateway.stop_async(), 60)
