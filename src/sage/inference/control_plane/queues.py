"""Request queues of the control plane: which waiting request is dispatched next, by policy.

Pure, synchronous data structures with no clock of their own (``now`` is passed in), so
every policy's order can be pinned by deterministic tests on hand-built traces. Each push and
pop is O(log n): the keys that look time-dependent are rewritten so that the part depending
on ``now`` is the same for every request and drops out of the comparison.

* **FIFO**: arrival order.
* **PRIORITY**: lower ``priority`` first (as in vLLM: 0 is more urgent than 5); ties by
  arrival. With aging, a request's effective priority falls by one level per ``aging_s``
  seconds waited (``priority - waited / aging_s``), so low priority never starves. Since the
  ``- now / aging_s`` term is common to all, the key is ``priority + arrival / aging_s``.
* **SLO_AWARE**: least slack first, slack = deadline - now - predicted service time, where
  the deadline is ``arrival + slo_ms`` and the prediction comes from the caller (the
  instances' measured P95 latency per token times the request's tokens). Requests without an
  SLO get ``default_slo_s``. A request whose slack is negative can no longer meet its SLO:
  it moves to a "late" queue (kept, in the order found late), served only when the least
  slack among the on-time requests could absorb the late one's predicted service time, so
  that late requests finish as early as possible without costing an on-time one its
  deadline.
* **COST_OPTIMIZED**: ordered as SLO_AWARE; the policy differs in where requests go
  (:mod:`.costs`).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sage.common.errors import ConfigError
from sage.inference.config import DEFAULT_TENANT, SchedulingPolicyType

__all__ = [
    "FifoQueue",
    "PendingRequest",
    "PriorityQueue",
    "RequestQueue",
    "SloAwareQueue",
    "make_queue",
]


@dataclass(eq=False)
class PendingRequest:
    """A request waiting in the control plane.

    Attributes:
        arrival: When it arrived (seconds on the control plane's monotonic clock).
        kind: ``"llm"`` or ``"embedding"``.
        model: Requested model.
        priority: Lower is more urgent (0 is the default).
        slo_ms: Latency objective in milliseconds (``None``: the queue's default).
        tokens: Tokens it is expected to cost (prompt + max_tokens), for predictions.
        prefix: Chained hashes of its prompt's blocks, for prefix-aware routing (empty:
            not computed, or a prompt shorter than a block).
        session: The conversation it belongs to, for session routing (``None``: none).
        tenant: Who sent it (from its API key): fair share and the tenant's figures.
        cost: Tokens charged to its tenant when it is dispatched (prompt estimate plus
            ``max_tokens``; 0: ``tokens``), for fair share.
        payload: Whatever the dispatcher needs to run it (opaque here).
    """

    arrival: float
    kind: str = "llm"
    model: str = ""
    priority: int = 0
    slo_ms: float | None = None
    tokens: int = 1
    prefix: tuple[int, ...] = ()
    session: str | None = None
    tenant: str = DEFAULT_TENANT
    cost: int = 0
    payload: Any = None


class RequestQueue(Protocol):
    """What the dispatcher needs of a policy's queue."""

    policy: SchedulingPolicyType

    def push(self, request: PendingRequest) -> None: ...

    def pop(self, now: float) -> PendingRequest | None: ...

    def requeue(self, request: PendingRequest) -> None:
        """Put back a request just popped (it keeps its place)."""
        ...

    def remove(self, request: PendingRequest) -> bool:
        """Take out a waiting request (its client left); whether it was there. O(n): rare."""
        ...

    def __len__(self) -> int: ...


class FifoQueue:
    """First come, first served."""

    policy = SchedulingPolicyType.FIFO

    def __init__(self) -> None:
        self._items: deque[PendingRequest] = deque()

    def push(self, request: PendingRequest) -> None:
        self._items.append(request)

    def pop(self, now: float) -> PendingRequest | None:
        return self._items.popleft() if self._items else None

    def requeue(self, request: PendingRequest) -> None:
        self._items.appendleft(request)

    def remove(self, request: PendingRequest) -> bool:
        try:
            self._items.remove(request)
        except ValueError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._items)


class PriorityQueue:
    """Strict priority (lower first) with aging: one level per ``aging_s`` seconds waited.

    Args:
        aging_s: Seconds of waiting worth one priority level (``None``: no aging, strict).

    Raises:
        ConfigError: ``aging_s`` is not positive.
    """

    policy = SchedulingPolicyType.PRIORITY

    def __init__(self, aging_s: float | None = 10.0) -> None:
        if aging_s is not None and not aging_s > 0:
            raise ConfigError(f"aging_s={aging_s!r} must be a positive number of seconds or None")
        self.aging_s = aging_s
        self._heap: list[tuple[float, int, PendingRequest]] = []
        self._seq = itertools.count()

    def push(self, request: PendingRequest) -> None:
        key = float(request.priority)
        if self.aging_s is not None:
            key += request.arrival / self.aging_s
        heapq.heappush(self._heap, (key, next(self._seq), request))

    def pop(self, now: float) -> PendingRequest | None:
        return heapq.heappop(self._heap)[2] if self._heap else None

    def requeue(self, request: PendingRequest) -> None:
        self.push(request)  # the key depends only on the request: same place

    def remove(self, request: PendingRequest) -> bool:
        return _heap_remove(self._heap, request)

    def __len__(self) -> int:
        return len(self._heap)


class SloAwareQueue:
    """Least slack first; requests that can no longer meet their SLO go when the others can
    spare the time.

    Args:
        predict_s: Predicted service time of a request, in seconds (called once, at push).
        default_slo_s: The objective of requests that carry none.
    """

    policy = SchedulingPolicyType.SLO_AWARE

    def __init__(
        self,
        predict_s: Callable[[PendingRequest], float] = lambda request: 0.0,
        default_slo_s: float = 60.0,
    ) -> None:
        self.predict_s = predict_s
        self.default_slo_s = default_slo_s
        # key: latest start time that still meets the deadline (deadline - predicted service)
        self._heap: list[tuple[float, int, PendingRequest]] = []
        self._late: deque[PendingRequest] = deque()
        self._seq = itertools.count()
        self.demoted = 0  # requests found unable to meet their SLO

    def deadline(self, request: PendingRequest) -> float:
        """When ``request`` must be answered by."""
        slo_s = request.slo_ms / 1000 if request.slo_ms is not None else self.default_slo_s
        return request.arrival + slo_s

    def push(self, request: PendingRequest) -> None:
        latest_start = self.deadline(request) - self.predict_s(request)
        heapq.heappush(self._heap, (latest_start, next(self._seq), request))

    def pop(self, now: float) -> PendingRequest | None:
        heap = self._heap
        while heap and heap[0][0] < now:  # slack < 0: it can no longer make its deadline
            self._late.append(heapq.heappop(heap)[2])
            self.demoted += 1
        if self._late and (not heap or heap[0][0] - now >= self.predict_s(self._late[0])):
            return self._late.popleft()  # every on-time request can spare its service time
        return heapq.heappop(heap)[2] if heap else None

    def requeue(self, request: PendingRequest) -> None:
        self.push(request)

    def remove(self, request: PendingRequest) -> bool:
        if _heap_remove(self._heap, request):
            return True
        try:
            self._late.remove(request)
        except ValueError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._heap) + len(self._late)


def _heap_remove(heap: list[tuple[float, int, PendingRequest]], request: PendingRequest) -> bool:
    """Take ``request`` out of a heap of ``(key, seq, request)``; whether it was there."""
    for i, entry in enumerate(heap):
        if entry[2] is request:
            last = heap.pop()
            if i < len(heap):
                heap[i] = last
                heapq.heapify(heap)
            return True
    return False


def make_queue(
    policy: SchedulingPolicyType | str, kind: str = "llm", **options: Any
) -> RequestQueue:
    """The queue a lane of ``kind`` requests uses under ``policy``.

    Options: ``aging_s`` for PRIORITY; ``predict_s``, ``default_slo_s`` for SLO_AWARE,
    COST_OPTIMIZED (ordered as SLO_AWARE) and HYBRID's LLM lanes. HYBRID orders LLM
    requests by slack and keeps embeddings in arrival order (they are batched as they
    leave, see the dispatcher).

    Raises:
        ConfigError: an unknown policy name, or ADAPTIVE (which picks one of the others at
            run time; ask the dispatcher for its queue).
    """
    parsed = SchedulingPolicyType.parse(policy)
    if parsed is SchedulingPolicyType.FIFO:
        return FifoQueue()
    if parsed is SchedulingPolicyType.PRIORITY:
        return PriorityQueue(**options)
    if parsed in (SchedulingPolicyType.SLO_AWARE, SchedulingPolicyType.COST_OPTIMIZED):
        return SloAwareQueue(**options)  # COST_OPTIMIZED: slack order; it differs in placement
    if parsed is SchedulingPolicyType.HYBRID:
        return FifoQueue() if kind == "embedding" else SloAwareQueue(**options)
    raise ConfigError(
        "policy 'adaptive' has no queue of its own: it switches among fifo, priority, "
        "slo_aware and hybrid; build the queue for the policy it chose"
    )
