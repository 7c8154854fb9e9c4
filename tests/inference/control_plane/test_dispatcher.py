"""The dispatcher's order and placement on hand-built traces: a fake clock, no servers.

Each test admits requests against instances that are "full", then frees slots one at a
time and reads the order in which the waiting requests were granted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from sage.common.errors import ConfigError
from sage.inference.config import BackendInstanceConfig, SchedulingPolicyType
from sage.inference.control_plane.adaptive import choose_policy
from sage.inference.control_plane.dispatcher import (
    Dispatcher,
    Grant,
    NoInstance,
    QueueFull,
    Ticket,
)
from sage.inference.control_plane.instances import InstanceRegistry
from sage.inference.control_plane.queues import PendingRequest

P = SchedulingPolicyType


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A registry of instances, a dispatcher over them, and the grants in order."""

    def __init__(self, policy: str, slots: list[int], kind: str = "llm", **options: object):
        self.clock = Clock()
        self.kind = kind
        self.registry = InstanceRegistry()
        self.instances = [
            self.registry.add(
                BackendInstanceConfig(
                    port=9000 + i,
                    model_name="m",
                    instance_type=kind,  # type: ignore[arg-type]
                    max_concurrent_requests=n,
                )
            )
            for i, n in enumerate(slots)
        ]
        self.dispatcher = Dispatcher(self.registry, policy, clock=self.clock, **options)  # type: ignore[arg-type]
        self.granted: list[tuple[str, Grant]] = []
        self.tasks: list[asyncio.Task[None]] = []

    def admit(
        self,
        name: str,
        *,
        kind: str = "llm",
        priority: int = 0,
        slo_ms: float | None = None,
        tokens: int = 1,
        body: object = None,
        batch_key: object = None,
        texts: int = 1,
    ) -> asyncio.Task[None]:
        request = PendingRequest(
            arrival=self.clock.now,
            kind=kind,
            model="m",
            priority=priority,
            slo_ms=slo_ms,
            tokens=tokens,
        )
        ticket = Ticket(asyncio.get_running_loop().create_future(), body, batch_key, texts)

        async def run() -> None:
            grant = await self.dispatcher.admit(request, ticket)
            self.granted.append((name, grant))

        task = asyncio.get_running_loop().create_task(run())
        self.tasks.append(task)
        return task

    async def settle(self) -> None:
        for _ in range(5):  # let granted tasks run their continuation
            await asyncio.sleep(0)

    def finish(self, name: str) -> None:
        grant = next(g for n, g in self.granted if n == name)
        assert grant.instance is not None
        request = PendingRequest(arrival=0.0, kind=grant.instance.config.instance_type, model="m")
        self.dispatcher.finish(request, grant.instance, 0.0, failed=False)

    def order(self) -> list[str]:
        return [name for name, _ in self.granted]


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())


async def fill_then_drain(h: Harness, waiting: list[dict[str, object]]) -> list[str]:
    """Occupy the single slot with ``busy``, queue ``waiting``, then free slots one by one."""
    h.admit("busy", kind=h.kind)
    await h.settle()
    for spec in waiting:
        h.admit(**spec)  # type: ignore[arg-type]
    await h.settle()
    assert h.order() == ["busy"], "nothing may pass a full instance"
    previous = "busy"
    while len(h.order()) < len(waiting) + 1:
        h.finish(previous)
        await h.settle()
        previous = h.order()[-1]
    return h.order()[1:]


def test_fifo_grants_in_arrival_order_whatever_the_priority() -> None:
    async def body() -> None:
        h = Harness("fifo", [1])
        order = await fill_then_drain(
            h, [{"name": "a", "priority": 5}, {"name": "b", "priority": 0}, {"name": "c"}]
        )
        assert order == ["a", "b", "c"]

    run(body)


def test_priority_grants_most_urgent_first_and_aging_lets_old_low_priority_pass() -> None:
    async def body() -> None:
        h = Harness("priority", [1], aging_s=10.0)
        h.admit("busy")
        await h.settle()
        h.admit("old-low", priority=3)  # arrives at t=0
        h.clock.now = 25.0  # 2.5 levels of aging later
        h.admit("new-mid", priority=1)
        h.admit("new-high", priority=0)
        await h.settle()
        for _ in range(3):
            h.finish(h.order()[-1])
            await h.settle()
        # keys: old-low 3 + 0/10 = 3.0; new-mid 1 + 2.5 = 3.5; new-high 0 + 2.5 = 2.5
        assert h.order()[1:] == ["new-high", "old-low", "new-mid"]

    run(body)


def test_slo_aware_serves_least_slack_first_and_late_requests_last() -> None:
    async def body() -> None:
        h = Harness("slo_aware", [1])
        h.admit("busy")
        await h.settle()
        h.admit("batch", slo_ms=30_000)
        h.admit("interactive", slo_ms=2_000)
        h.admit("hopeless", slo_ms=100)
        await h.settle()
        h.clock.now = 0.5  # "hopeless" (deadline 0.1 s) can no longer make it
        for _ in range(3):
            h.finish(h.order()[-1])
            await h.settle()
        assert h.order()[1:] == ["interactive", "batch", "hopeless"]
        assert h.dispatcher.describe()["active_policy"] == "slo_aware"

    run(body)


def test_slo_prediction_uses_measured_latency_per_token() -> None:
    async def body() -> None:
        h = Harness("slo_aware", [1])
        request = PendingRequest(arrival=0.0, kind="llm", model="m", tokens=100)
        assert h.dispatcher.predict_s(request) == 0.0  # nothing measured yet
        instance = h.instances[0]
        h.registry.take(instance)
        # a request of 10 tokens that took ~0.1 s: ~10 ms per token
        import time

        started = time.perf_counter() - 0.1
        h.dispatcher.finish(
            PendingRequest(0.0, "llm", "m", tokens=10), instance, started, failed=False
        )
        assert 0.9 < h.dispatcher.predict_s(request) < 1.5

    run(body)


def test_an_instance_never_holds_more_than_its_slots_and_placement_fills_the_emptiest() -> None:
    async def body() -> None:
        h = Harness("fifo", [2, 3])
        for i in range(10):
            h.admit(f"r{i}")
        await h.settle()
        assert len(h.granted) == 5
        assert [i.in_flight for i in h.instances] == [2, 3]
        # placement: most capacity left first (ties to the first registered)
        assert [g.instance.id for _, g in h.granted[:2]] == ["127.0.0.1:9001", "127.0.0.1:9000"]
        h.finish("r0")
        await h.settle()
        assert len(h.granted) == 6 and [i.in_flight for i in h.instances] == [2, 3]
        assert h.dispatcher.queued == 4

    run(body)


def test_unhealthy_instances_leave_rotation_and_a_model_without_any_fails_its_waiters() -> None:
    async def body() -> None:
        h = Harness("fifo", [1, 1])
        h.registry.mark(h.instances[0], False, "down")
        h.admit("a")
        h.admit("b")
        await h.settle()
        assert h.order() == ["a"] and h.granted[0][1].instance is h.instances[1]
        h.registry.mark(h.instances[1], False, "down too")  # waiting "b" fails at once
        await h.settle()
        with pytest.raises(NoInstance):
            await h.tasks[1]
        with pytest.raises(NoInstance):  # and so does a new request
            await h.dispatcher.admit(
                PendingRequest(0.0, "llm", "m"), Ticket(asyncio.get_running_loop().create_future())
            )
        h.registry.mark(h.instances[0], True)  # back in rotation
        h.admit("c")
        await h.settle()
        assert h.order() == ["a", "c"]

    run(body)


@pytest.mark.parametrize("policy", ["fifo", "priority", "slo_aware"])
def test_a_cancelled_waiter_leaves_the_queue_and_a_cancelled_grant_gives_its_slot_back(
    policy: str,
) -> None:
    async def body() -> None:
        h = Harness(policy, [1])
        h.admit("busy")
        gone = h.admit("gone")
        h.admit("next")
        await h.settle()
        assert h.dispatcher.queued == 2
        gone.cancel()
        await h.settle()
        assert h.dispatcher.queued == 1  # at once, not when it would have reached the head
        h.finish("busy")
        await h.settle()
        assert h.order() == ["busy", "next"]
        assert h.instances[0].in_flight == 1

    run(body)


def test_switching_policy_reorders_the_waiting_requests() -> None:
    async def body() -> None:
        h = Harness("fifo", [1])
        h.admit("busy")
        await h.settle()
        for name, priority in [("low", 5), ("high", 0), ("mid", 2)]:
            h.admit(name, priority=priority)
        await h.settle()
        h.dispatcher.set_policy("priority")
        for _ in range(3):
            h.finish(h.order()[-1])
            await h.settle()
        assert h.order()[1:] == ["high", "mid", "low"]
        with pytest.raises(ConfigError, match="unknown scheduling policy 'fastest'"):
            h.dispatcher.set_policy("fastest")

    run(body)


def test_unknown_policy_name_raises() -> None:
    with pytest.raises(ConfigError, match="fifo, priority, slo_aware, hybrid, adaptive"):
        Dispatcher(InstanceRegistry(), "round_robin")


def test_hybrid_batches_waiting_embeddings_of_one_kind_up_to_the_cap() -> None:
    async def body() -> None:
        h = Harness("hybrid", [1], kind="embedding", batch_max_texts=5, batch_wait_s=0.0)
        h.admit("busy", kind="embedding", batch_key="k")
        await h.settle()
        for name, key, texts in [
            ("a", "k", 2),
            ("b", "k", 2),
            ("c", "k", 2),  # would pass the cap of 5 texts: next batch
            ("d", "other", 1),
        ]:
            h.admit(name, kind="embedding", batch_key=key, texts=texts)
        await h.settle()
        h.finish("busy")
        await h.settle()
        leads = [(n, g) for n, g in h.granted[1:] if g.instance is not None]
        riders = [(n, g) for n, g in h.granted[1:] if g.instance is None]
        (lead, grant), *_ = leads
        assert lead == "a" and len(leads) == 1
        assert [name for name, _ in riders] == ["b"]
        assert riders[0][1].instance is None and riders[0][1].outcome is not None
        assert len(grant.riders) == 1 and h.instances[0].in_flight == 1
        h.finish("a")
        await h.settle()
        h.finish("c")  # "c" went alone: "d" has another key
        await h.settle()
        assert sorted(h.order()[1:3]) == ["a", "b"] and h.order()[3:] == ["c", "d"]
        assert h.dispatcher.batches == 1 and h.dispatcher.batched_requests == 2

    run(body)


def test_fifo_never_batches_embeddings() -> None:
    async def body() -> None:
        h = Harness("fifo", [1], kind="embedding")
        order = await fill_then_drain(
            h, [{"name": n, "kind": "embedding", "batch_key": "k"} for n in "abc"]
        )
        assert order == ["a", "b", "c"]
        assert all(not g.riders for _, g in h.granted) and h.dispatcher.batches == 0

    run(body)


def test_hybrid_holds_a_batch_while_the_model_is_busy_until_the_wait_bound() -> None:
    async def body() -> None:
        h = Harness("hybrid", [2], kind="embedding", batch_max_texts=64, batch_wait_s=0.01)
        h.admit("busy1", kind="embedding", batch_key="k")
        h.admit("busy2", kind="embedding", batch_key="k")
        h.admit("a", kind="embedding", batch_key="k")
        await h.settle()
        h.finish("busy1")  # a slot frees while "busy2" still runs: "a" waits to fill
        await h.settle()
        assert h.order() == ["busy1", "busy2"]
        h.admit("b", kind="embedding", batch_key="k")
        h.clock.now = 0.02  # past the wait bound
        await asyncio.sleep(0.02)  # the dispatcher's timer (real loop time) fires
        await h.settle()
        grants = dict(h.granted)
        assert sorted(grants) == ["a", "b", "busy1", "busy2"]
        assert grants["a"].riders and grants["b"].instance is None

    run(body)


@pytest.mark.parametrize(
    ("queued", "llm", "embedding", "with_slo", "levels", "expected"),
    [
        (0, 10, 10, 10, 3, P.FIFO),
        (5, 10, 10, 0, 1, P.HYBRID),
        (5, 0, 10, 0, 1, P.HYBRID),
        (5, 10, 0, 3, 2, P.SLO_AWARE),
        (5, 10, 0, 0, 2, P.PRIORITY),
        (5, 10, 0, 0, 1, P.FIFO),
    ],
)
def test_adaptive_rule(
    queued: int, llm: int, embedding: int, with_slo: int, levels: int, expected: P
) -> None:
    assert choose_policy(queued, llm, embedding, with_slo, levels) is expected


def test_adaptive_switches_by_traffic_and_reports_the_active_policy() -> None:
    async def body() -> None:
        h = Harness("adaptive", [1], adaptive_interval_s=1.0)
        assert h.dispatcher.active_policy is P.FIFO
        h.admit("busy")
        await h.settle()
        for i in range(4):
            h.admit(f"r{i}", slo_ms=2000)
        await h.settle()
        h.clock.now = 1.5  # next look: a queue and requests with SLOs
        h.admit("r4", slo_ms=2000)
        await h.settle()
        state = h.dispatcher.describe()
        assert state["policy"] == "adaptive" and state["active_policy"] == "slo_aware"
        assert state["policy_switches"] == 1

    run(body)


def test_a_full_lane_refuses_new_requests_with_a_retry_after_but_keeps_retries() -> None:
    async def body() -> None:
        h = Harness("fifo", [1], max_queued=2)
        h.admit("busy")
        await h.settle()
        h.admit("w1")
        h.admit("w2")
        refused = h.admit("w3")
        await h.settle()
        with pytest.raises(QueueFull) as full:
            await refused
        assert full.value.retry_after_s >= 1
        assert "2 requests for 'm' are already waiting" in str(full.value)
        assert h.dispatcher.rejected == 1
        # a retry (its instance failed) is never refused: it was admitted once already
        retry = PendingRequest(arrival=h.clock.now, kind="llm", model="m")
        ticket = Ticket(asyncio.get_running_loop().create_future(), None, None, 1)
        task = asyncio.get_running_loop().create_task(h.dispatcher.admit(retry, ticket, True))
        await h.settle()
        assert not task.done()  # queued (at the head), not refused
        task.cancel()
        for t in h.tasks:
            t.cancel()
        await asyncio.gather(task, *h.tasks, return_exceptions=True)

    run(body)


def test_the_per_class_table_stays_bounded_whatever_names_clients_send() -> None:
    from sage.inference.control_plane.figures import MAX_CLASSES, OTHER_CLASS

    async def body() -> None:
        h = Harness("fifo", [1])
        request = PendingRequest(arrival=0.0, kind="llm", model="m")
        for i in range(MAX_CLASSES + 50):
            h.dispatcher.record(request, 0.01, 0.01, False, class_name=f"tenant-{i}")
        assert len(h.dispatcher.classes) == MAX_CLASSES
        assert h.dispatcher.classes[OTHER_CLASS].requests == 51

    run(body)


def test_a_retry_is_counted_even_when_it_goes_straight_to_a_free_instance() -> None:
    async def body() -> None:
        h = Harness("fifo", [1, 1])
        retry = PendingRequest(arrival=h.clock.now, kind="llm", model="m")
        ticket = Ticket(asyncio.get_running_loop().create_future(), None, None, 1)
        grant = await h.dispatcher.admit(retry, ticket, True)
        assert grant.instance is not None  # no queue: granted at once
        assert h.dispatcher.retries == 1

    run(body)
