"""Fair share among tenants (virtual token counters) on hand-built traces: the queue alone,
then inside the dispatcher with a fake clock. No servers."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from sage.inference.config import BackendInstanceConfig
from sage.inference.control_plane.dispatcher import Dispatcher, Grant, Ticket
from sage.inference.control_plane.fairness import FairShareQueue, VirtualCounters
from sage.inference.control_plane.instances import InstanceRegistry
from sage.inference.control_plane.queues import (
    FifoQueue,
    PendingRequest,
    PriorityQueue,
    RequestQueue,
    SloAwareQueue,
)


def request(tenant: str, name: str, arrival: float = 0.0, **fields: object) -> PendingRequest:
    return PendingRequest(arrival=arrival, tenant=tenant, payload=name, **fields)  # type: ignore[arg-type]


def serve(queue: FairShareQueue, n: int, tokens: float = 100.0) -> list[str]:
    """Pop ``n`` requests, charging each ``tokens`` as the dispatcher would at its grant."""
    order = []
    for _ in range(n):
        popped = queue.pop(now=0.0)
        assert popped is not None
        queue.counters.charge(popped.tenant, tokens)
        order.append(popped.payload)
    return order


def test_tenants_waiting_together_get_tokens_in_proportion_to_their_weights() -> None:
    queue = FairShareQueue(FifoQueue, VirtualCounters({"gold": 2.0, "free": 1.0}))
    for i in range(40):
        queue.push(request("gold", f"gold-{i}"))
        queue.push(request("free", f"free-{i}"))
    served = Counter(name.split("-")[0] for name in serve(queue, 30))
    assert served == {"gold": 20, "free": 10}
    assert queue.counters.get("gold") == queue.counters.get("free") == 1000.0  # 2000/2, 1000/1
    assert len(queue) == 50 and queue.waiting() == {"gold": 20, "free": 30}


def test_each_tenants_own_requests_leave_in_arrival_order_under_fifo() -> None:
    queue = FairShareQueue(FifoQueue, VirtualCounters({}))
    for i in range(3):
        queue.push(request("a", f"a{i}"))
    queue.push(request("b", "b0"))
    assert serve(queue, 4) == ["a0", "b0", "a1", "a2"]


def test_a_more_urgent_band_goes_first_whatever_the_counters() -> None:
    counters = VirtualCounters({})
    queue = FairShareQueue(FifoQueue, counters)
    queue.push(request("rich", "rich-batch", priority=5))
    counters.charge("poor", 10_000)  # "poor" has been served far more
    queue.push(request("poor", "poor-urgent", priority=0))
    queue.push(request("rich", "rich-urgent", priority=0))
    assert serve(queue, 3) == ["rich-urgent", "poor-urgent", "rich-batch"]


def test_within_a_tenant_the_policys_order_holds() -> None:
    """SLO_AWARE inside: a tenant's requests leave by slack, not by arrival."""
    queue = FairShareQueue(lambda: SloAwareQueue(default_slo_s=60.0), VirtualCounters({}))
    queue.push(request("a", "relaxed", slo_ms=30_000))
    queue.push(request("a", "urgent", slo_ms=1_000))
    queue.push(request("b", "b-only", slo_ms=60_000))
    assert serve(queue, 3) == ["urgent", "b-only", "relaxed"]


def test_a_tenant_back_from_idling_cannot_spend_credit_it_banked_meanwhile() -> None:
    """It is lifted to the least counter of the tenants waiting: the heavy tenant that kept
    the model busy alone is not starved when the light one comes back."""
    counters = VirtualCounters({})
    queue = FairShareQueue(FifoQueue, counters)
    for i in range(30):
        queue.push(request("heavy", f"h{i}"))
    serve(queue, 10)  # heavy alone: its counter is 1000, light's 0
    for i in range(5):
        queue.push(request("light", f"l{i}"))
    assert counters.get("light") == 1000.0
    order = serve(queue, 6)
    assert order == ["h10", "l0", "h11", "l1", "h12", "l2"]  # alternating, not l0..l4 first


def test_with_nobody_waiting_a_newcomer_starts_level_with_the_highest_counter() -> None:
    counters = VirtualCounters({})
    counters.charge("busy", 500)  # used capacity nobody else wanted
    queue = FairShareQueue(FifoQueue, counters)
    queue.push(request("newcomer", "n0"))
    assert counters.get("newcomer") == 500.0
    queue.push(request("busy", "b0"))
    assert counters.get("busy") == 500.0  # not lowered; both level
    assert serve(queue, 2) == ["n0", "b0"]  # a tie: the one that waited first


def test_a_requeued_request_keeps_its_place_and_a_removed_one_is_gone() -> None:
    counters = VirtualCounters({})
    queue = FairShareQueue(FifoQueue, counters)
    a0, a1, b0 = request("a", "a0"), request("a", "a1"), request("b", "b0")
    for r in (a0, a1, b0):
        queue.push(r)
    assert queue.pop(now=0.0) is a0
    before = dict(counters.values)
    queue.requeue(a0)  # the dispatcher looked and put it back: no lift, same place
    assert counters.values == before and queue.pop(now=0.0) is a0
    queue.requeue(a0)
    assert queue.remove(b0) and queue.waiting() == {"a": 2}
    assert not queue.remove(b0)  # gone already
    assert queue.remove(a1) and queue.remove(a0)
    assert len(queue) == 0 and queue.waiting() == {} and queue.pop(now=0.0) is None


def test_switching_the_inner_policy_keeps_counters_and_requests() -> None:
    counters = VirtualCounters({})
    active: list[Callable[[], RequestQueue]] = [FifoQueue]  # what the dispatcher's _queue reads
    queue = FairShareQueue(lambda: active[0](), counters)
    queue.push(request("a", "a-late", arrival=5.0))
    queue.push(request("a", "a-early", arrival=1.0))
    counters.charge("a", 7)
    active[0] = PriorityQueue  # the policy switched: its factory builds the new one's queues
    queue.reorder(now=10.0)
    assert queue.policy == "priority" and counters.get("a") == 7
    assert serve(queue, 2) == ["a-early", "a-late"]  # aged: the older one first


def test_a_light_tenant_waits_behind_at_most_one_request_of_a_heavy_one() -> None:
    """Heavy sends 10x light's load into a full lane; each light request is the next or
    second to go, where FIFO would make it wait for the whole backlog."""
    queue = FairShareQueue(FifoQueue, VirtualCounters({}))
    waits = []
    for step in range(50):
        for i in range(10):
            queue.push(request("heavy", f"h{step}-{i}"))
        queue.push(request("light", f"l{step}"))
        order = serve(queue, 11)  # the lane serves as fast as requests arrive
        waits.append(order.index(f"l{step}"))
    assert max(waits) <= 1


# -- inside the dispatcher -------------------------------------------------------------------


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def settle() -> None:
    for _ in range(5):  # let granted tasks run their continuation
        await asyncio.sleep(0)


async def admitted(dispatcher: Dispatcher, tenant: str, name: str, grants: list[str]) -> Grant:
    pending = PendingRequest(arrival=0.0, model="m", tenant=tenant, cost=100, payload=name)
    ticket = Ticket(asyncio.get_running_loop().create_future())
    grant = await dispatcher.admit(pending, ticket)
    grants.append(name)
    return grant


def test_the_dispatcher_charges_at_the_grant_and_corrects_by_the_usage() -> None:
    async def body() -> None:
        registry = InstanceRegistry()
        instance = registry.add(
            BackendInstanceConfig(port=9, model_name="m", max_concurrent_requests=1)
        )
        dispatcher = Dispatcher(registry, "fifo", tenant_weights={"heavy": 1.0}, clock=Clock())
        grants: list[str] = []
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(admitted(dispatcher, "heavy", f"h{i}", grants)) for i in range(4)]
        await settle()
        tasks.append(loop.create_task(admitted(dispatcher, "light", "l0", grants)))
        await settle()
        assert grants == ["h0"]  # straight to the free slot, charged 100
        lane = dispatcher.describe()["lanes"][0]
        assert lane["virtual_tokens"] == {"heavy": 100.0, "light": 100.0}  # light lifted
        done = PendingRequest(arrival=0.0, model="m", tenant="heavy", cost=100)
        while len(grants) < 5:
            dispatcher.finish(done, instance, 0.0, failed=False)
            await settle()
        assert grants == ["h0", "h1", "l0", "h2", "h3"]  # FIFO would put l0 last
        dispatcher.finish(done, instance, 0.0, failed=False, used_tokens=40)  # 60 back
        lane = dispatcher.describe()["lanes"][0]
        assert lane["virtual_tokens"] == {"heavy": 340.0, "light": 200.0}
        await asyncio.gather(*tasks)

    asyncio.run(body())


def test_without_tenant_weights_the_dispatcher_keeps_the_policys_order_and_no_counters() -> None:
    async def body() -> None:
        registry = InstanceRegistry()
        instance = registry.add(
            BackendInstanceConfig(port=9, model_name="m", max_concurrent_requests=1)
        )
        dispatcher = Dispatcher(registry, "fifo", clock=Clock())
        grants: list[str] = []
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(admitted(dispatcher, "heavy", f"h{i}", grants)) for i in range(3)]
        await settle()
        tasks.append(loop.create_task(admitted(dispatcher, "light", "l0", grants)))
        await settle()
        while len(grants) < 4:
            dispatcher.finish(PendingRequest(arrival=0.0, model="m"), instance, 0.0, failed=False)
            await settle()
        assert grants == ["h0", "h1", "h2", "l0"]
        assert dispatcher.describe()["lanes"][0]["virtual_tokens"] == {}
        await asyncio.gather(*tasks)

    asyncio.run(body())


def test_switching_policy_under_fair_share_keeps_the_counters() -> None:
    async def body() -> None:
        registry = InstanceRegistry()
        registry.add(BackendInstanceConfig(port=9, model_name="m", max_concurrent_requests=1))
        dispatcher = Dispatcher(registry, "fifo", tenant_weights={}, clock=Clock())
        grants: list[str] = []
        loop = asyncio.get_running_loop()
        tenants = ["a", "a", "b"]
        tasks = [
            loop.create_task(admitted(dispatcher, t, f"r{i}", grants))
            for i, t in enumerate(tenants)
        ]
        await settle()
        before = dispatcher.describe()["lanes"][0]["virtual_tokens"]
        dispatcher.set_policy("slo_aware")
        after = dispatcher.describe()["lanes"][0]
        assert after["virtual_tokens"] == before and after["queued"] == 2
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(body())
