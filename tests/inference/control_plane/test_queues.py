"""Each policy's dispatch order on hand-built traces (no clock, no servers)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sage.common.errors import ConfigError
from sage.inference.config import SchedulingPolicyType
from sage.inference.control_plane.queues import (
    FifoQueue,
    PendingRequest,
    PriorityQueue,
    RequestQueue,
    SloAwareQueue,
    make_queue,
)


def drain(queue, now: float) -> list[str]:
    order = []
    while (request := queue.pop(now)) is not None:
        order.append(request.payload)
    return order


def test_fifo_keeps_arrival_order_whatever_the_priority() -> None:
    queue = FifoQueue()
    for i, priority in enumerate([5, 0, 3]):
        queue.push(PendingRequest(arrival=i, priority=priority, payload=f"r{i}"))
    assert len(queue) == 3
    assert drain(queue, now=10) == ["r0", "r1", "r2"]
    assert queue.pop(now=10) is None


def test_priority_is_strict_without_aging_ties_by_arrival() -> None:
    queue = PriorityQueue(aging_s=None)
    trace = [(0.0, 2, "a"), (1.0, 0, "b"), (2.0, 1, "c"), (3.0, 0, "d"), (4.0, 2, "e")]
    for arrival, priority, name in trace:
        queue.push(PendingRequest(arrival=arrival, priority=priority, payload=name))
    assert drain(queue, now=100.0) == ["b", "d", "c", "a", "e"]


def test_priority_aging_lets_an_old_low_priority_request_overtake() -> None:
    queue = PriorityQueue(aging_s=10.0)
    # "old" (priority 2) waited 30 s: effective -1, ahead of a fresh priority 0 request
    queue.push(PendingRequest(arrival=0.0, priority=2, payload="old"))
    queue.push(PendingRequest(arrival=30.0, priority=0, payload="fresh-urgent"))
    # "recent" (priority 2) waited 5 s: effective 1.5, behind the urgent one
    queue.push(PendingRequest(arrival=25.0, priority=2, payload="recent"))
    assert drain(queue, now=30.0) == ["old", "fresh-urgent", "recent"]


def test_priority_aging_never_starves_low_priority() -> None:
    """A low-priority request among a steady stream of urgent ones is served in bounded time."""
    queue = PriorityQueue(aging_s=1.0)
    queue.push(PendingRequest(arrival=0.0, priority=5, payload="low"))
    served_at = None
    for tick in range(1, 100):  # one urgent arrival and one dispatch per second
        queue.push(PendingRequest(arrival=float(tick), priority=0, payload=f"u{tick}"))
        if queue.pop(now=float(tick)).payload == "low":
            served_at = tick
            break
    assert served_at is not None and served_at <= 6


@pytest.mark.parametrize("aging_s", [0, -1.0])
def test_priority_rejects_a_non_positive_aging(aging_s: float) -> None:
    with pytest.raises(ConfigError, match="aging_s"):
        PriorityQueue(aging_s=aging_s)


def test_slo_aware_orders_by_slack_using_the_prediction() -> None:
    per_token_s = 0.01
    queue = SloAwareQueue(predict_s=lambda r: r.tokens * per_token_s, default_slo_s=60.0)
    # deadlines: a 0+2.0, b 0.5+30, c 1.0+2.5; predicted: a 0.5, b 0.1, c 0.2
    queue.push(PendingRequest(arrival=0.0, slo_ms=2000, tokens=50, payload="a"))
    queue.push(PendingRequest(arrival=0.5, slo_ms=30000, tokens=10, payload="b"))
    queue.push(PendingRequest(arrival=1.0, slo_ms=2500, tokens=20, payload="c"))
    # slack at now=1.0: a 0.5, c 2.3, b 29.4
    assert drain(queue, now=1.0) == ["a", "c", "b"]
    assert queue.demoted == 0


def test_slo_aware_a_long_request_with_the_same_deadline_goes_first() -> None:
    queue = SloAwareQueue(predict_s=lambda r: r.tokens * 0.01)
    queue.push(PendingRequest(arrival=0.0, slo_ms=5000, tokens=10, payload="short"))
    queue.push(PendingRequest(arrival=0.0, slo_ms=5000, tokens=300, payload="long"))
    assert drain(queue, now=0.0) == ["long", "short"]


def test_slo_aware_demotes_requests_that_can_no_longer_make_it_and_keeps_them() -> None:
    queue = SloAwareQueue(predict_s=lambda r: 1.0)
    queue.push(PendingRequest(arrival=0.0, slo_ms=1500, payload="doomed"))  # latest start 0.5
    queue.push(PendingRequest(arrival=0.2, slo_ms=1000, payload="doomed-too"))  # latest 0.2
    queue.push(PendingRequest(arrival=0.9, slo_ms=2000, payload="on-time"))  # latest start 1.9
    queue.push(PendingRequest(arrival=1.0, slo_ms=5000, payload="relaxed"))  # latest start 5.0
    # at now=1.0 the first two are past their latest start and become late; "on-time" has
    # 0.9 s of slack, less than a late one's 1.0 s of service: it goes first
    assert queue.pop(now=1.0).payload == "on-time"
    assert queue.demoted == 2 and len(queue) == 3
    # "relaxed" has 4.0 s to spare: the late ones go before it, in demotion order
    assert drain(queue, now=1.0) == ["doomed-too", "doomed", "relaxed"]


def test_slo_aware_late_requests_wait_while_on_time_ones_cannot_spare_the_time() -> None:
    queue = SloAwareQueue(predict_s=lambda r: 1.0)
    queue.push(PendingRequest(arrival=0.0, slo_ms=1000, payload="late"))  # latest start 0.0
    for i in range(3):  # latest starts 1.5, 1.6, 1.7: slack < 1.0 at now=1.0
        queue.push(PendingRequest(arrival=0.5 + i / 10, slo_ms=2000, payload=f"tight{i}"))
    assert drain(queue, now=1.0) == ["tight0", "tight1", "tight2", "late"]


def test_slo_aware_default_slo_applies_to_requests_without_one() -> None:
    queue = SloAwareQueue(default_slo_s=10.0)
    queue.push(PendingRequest(arrival=0.0, payload="no-slo"))  # deadline 10
    queue.push(PendingRequest(arrival=0.0, slo_ms=5000, payload="tight"))  # deadline 5
    assert drain(queue, now=0.0) == ["tight", "no-slo"]


@pytest.mark.parametrize(
    "make",
    [FifoQueue, lambda: PriorityQueue(aging_s=None), SloAwareQueue],
    ids=["fifo", "priority", "slo_aware"],
)
def test_a_request_whose_client_left_is_removed_and_the_others_keep_their_order(
    make: Callable[[], RequestQueue],
) -> None:
    def filled() -> tuple[RequestQueue, list[PendingRequest]]:
        queue = make()
        trace = [
            PendingRequest(i, priority=i % 3, slo_ms=i * 1000, payload=f"r{i}") for i in range(8)
        ]
        for request in trace:
            queue.push(request)
        return queue, trace

    expected, _ = filled()
    first = expected.pop(now=3.5)  # SLO-aware: r0..r3 are late by now
    queue, trace = filled()
    assert queue.pop(now=3.5) is not None and first is not None
    gone = [r for r in trace if r.payload in ("r2", "r5") and r.payload != first.payload]
    for request in gone:
        assert queue.remove(request)
    assert not queue.remove(PendingRequest(0.0))
    assert len(queue) == len(trace) - 1 - len(gone)
    left = [name for name in drain(expected, now=3.5) if name not in {r.payload for r in gone}]
    assert drain(queue, now=3.5) == left


def test_make_queue_by_name_and_unknown_names_raise() -> None:
    assert isinstance(make_queue("fifo"), FifoQueue)
    assert isinstance(make_queue("PRIORITY", aging_s=5.0), PriorityQueue)
    assert make_queue(SchedulingPolicyType.SLO_AWARE).policy is SchedulingPolicyType.SLO_AWARE
    with pytest.raises(ConfigError, match="fifo"):
        make_queue("shortest_first")
