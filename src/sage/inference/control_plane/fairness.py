"""Fair share among tenants: within the most urgent priority band, the tenant that has been
served the fewest weighted tokens goes next.

A *virtual token counter* per tenant (VTC: Sheng et al., "Fairness in Serving Large Language
Models", OSDI 2024; llm-d's flow control orders the same way: priority bands first, then a
fairness policy among the band's flows, then each flow's own ordering policy):

* **Counting.** A tenant's counter grows by the tokens it is served divided by its weight.
  The dispatcher charges a request's predicted tokens when it is granted an instance
  (:meth:`VirtualCounters.charge`) and the difference to its actual usage when the answer
  tells it (a non-streamed answer's ``usage``; a streamed one keeps its prediction; one that
  failed before answering is refunded), so a tenant of weight 2 gets twice the tokens of a
  tenant of weight 1 while both wait.
* **No credit for idling.** A tenant whose request arrives while it has none waiting is
  lifted to the least counter among the tenants that have requests waiting; when nobody
  waits, to the largest counter of all. A tenant that was away cannot come back with a low
  counter and hold the model until it has "caught up", and a tenant that used capacity
  nobody else wanted is not made to pay for it later.
* **Order.** Priority bands are strict (lower ``priority`` first); within the band, the
  waiting tenant with the least counter (ties: the tenant that has waited in the band
  longest); within the tenant, the order of the active policy's queue (FIFO, PRIORITY or
  SLO_AWARE: one queue per tenant and band).

Pure and synchronous like :mod:`.queues` (``now`` is passed in). A push is O(log n); a pop
O(log bands + tenants waiting in the band + log n). Under fair share, ``priority`` is a strict
band, as in llm-d: PRIORITY's aging does not carry a request into a more urgent band, so a
band waits while a more urgent one has requests (fair share keeps a band's tenants from
starving each other, not one band from starving another).

Example:
    >>> from sage.inference.control_plane.queues import FifoQueue
    >>> counters = VirtualCounters({"gold": 2.0})
    >>> queue = FairShareQueue(FifoQueue, counters)
    >>> for i, tenant in enumerate(["gold", "gold", "free"]):
    ...     queue.push(PendingRequest(arrival=i, tenant=tenant, payload=f"{tenant}{i}"))
    >>> first = queue.pop(now=3.0)
    >>> counters.charge(first.tenant, 100)  # the dispatcher charges what it grants
    >>> first.payload, queue.pop(now=3.0).payload  # gold: 50 weighted tokens, free: 0
    ('gold0', 'free2')
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping

from sage.inference.config import SchedulingPolicyType
from sage.inference.control_plane.queues import PendingRequest, RequestQueue

__all__ = ["NO_COUNTERS", "FairShareQueue", "VirtualCounters"]


class VirtualCounters:
    """The virtual token counters of one lane's tenants (tokens served / weight).

    Args:
        weights: Weight per tenant; a tenant not listed has weight 1.
    """

    def __init__(self, weights: Mapping[str, float]) -> None:
        self.weights = dict(weights)
        self.values: dict[str, float] = {}

    def get(self, tenant: str) -> float:
        """``tenant``'s counter (0 before it was served)."""
        return self.values.get(tenant, 0.0)

    def charge(self, tenant: str, tokens: float) -> None:
        """Count ``tokens`` served to ``tenant`` (negative: a refund, the prediction was high)."""
        self.values[tenant] = self.get(tenant) + tokens / self.weights.get(tenant, 1.0)

    def charge_request(self, request: PendingRequest, used: int | None = None) -> None:
        """Charge ``request``'s tenant its predicted tokens (``cost``, else ``tokens``) as it
        is granted; with ``used`` (its actual usage, once known), the difference instead."""
        predicted = request.cost or request.tokens
        self.charge(request.tenant, predicted if used is None else used - predicted)

    def lift(self, tenant: str, floor: float) -> None:
        """Raise ``tenant``'s counter to ``floor`` if it is below."""
        if self.get(tenant) < floor:
            self.values[tenant] = floor

    def highest(self) -> float:
        """The largest counter (0 when nobody was served)."""
        return max(self.values.values(), default=0.0)


class _NoCounters(VirtualCounters):
    """Counters that count nothing: a lane without fair share."""

    def charge(self, tenant: str, tokens: float) -> None:
        pass


NO_COUNTERS: VirtualCounters = _NoCounters({})
"""What a lane without fair share charges to: nothing (so charging needs no test)."""


class FairShareQueue:
    """Requests of several tenants, served by fair share within strict priority bands.

    Args:
        make_queue: Builds the active policy's queue (one per tenant and band), whichever
            policy is active when it is called.
        counters: The lane's counters; the dispatcher charges them as it grants requests.
    """

    def __init__(self, make_queue: Callable[[], RequestQueue], counters: VirtualCounters) -> None:
        self._make = make_queue
        self.counters = counters
        self.policy: SchedulingPolicyType = make_queue().policy
        # band (priority) -> tenant -> its non-empty queue, in the order tenants joined
        self._bands: dict[int, dict[str, RequestQueue]] = {}
        self._keys: list[int] = []  # heap of band keys; a key whose band is gone is stale
        self._in_heap: set[int] = set()
        self._waiting: dict[str, int] = {}  # requests waiting per tenant (all bands)
        self._len = 0

    def push(self, request: PendingRequest) -> None:
        tenant = request.tenant
        if tenant not in self._waiting:  # it becomes active: no credit for its time away
            active = [self.counters.get(t) for t in self._waiting]
            self.counters.lift(tenant, min(active) if active else self.counters.highest())
        self._add(request).push(request)

    def requeue(self, request: PendingRequest) -> None:
        self._add(request).requeue(request)  # just popped: active all along, no lift

    def _add(self, request: PendingRequest) -> RequestQueue:
        """Count ``request`` in; the queue of its tenant and band to put it in."""
        key = request.priority
        band = self._bands.get(key)
        if band is None:
            band = self._bands[key] = {}
            if key not in self._in_heap:
                self._in_heap.add(key)
                heapq.heappush(self._keys, key)
        queue = band.get(request.tenant)
        if queue is None:
            queue = band[request.tenant] = self._make()
        self._waiting[request.tenant] = self._waiting.get(request.tenant, 0) + 1
        self._len += 1
        return queue

    def pop(self, now: float) -> PendingRequest | None:
        keys = self._keys
        while keys:
            band = self._bands.get(keys[0])
            if band is None:  # emptied since: drop the stale key
                self._in_heap.discard(heapq.heappop(keys))
                continue
            tenant = min(band, key=self.counters.get)
            request = band[tenant].pop(now)  # not None: the band keeps non-empty queues only
            self._drop(keys[0], tenant, request)
            return request
        return None

    def remove(self, request: PendingRequest) -> bool:
        band = self._bands.get(request.priority)
        queue = band.get(request.tenant) if band is not None else None
        if queue is None or not queue.remove(request):
            return False
        self._drop(request.priority, request.tenant, request)
        return True

    def _drop(self, key: int, tenant: str, request: PendingRequest | None) -> None:
        """Count ``request`` (taken from ``tenant``'s queue in band ``key``) out; forget
        the queue and the band once empty."""
        band = self._bands[key]
        if not len(band[tenant]):
            del band[tenant]
            if not band:
                del self._bands[key]
        if request is None:
            return
        self._len -= 1
        left = self._waiting[tenant] - 1
        if left:
            self._waiting[tenant] = left
        else:
            del self._waiting[tenant]

    def reorder(self, now: float) -> None:
        """The active policy changed: rebuild each tenant's queue with ``make_queue`` (tenants
        keep their counters and nobody is lifted: they were waiting all along)."""
        make_queue = self._make
        self.policy = make_queue().policy
        for band in self._bands.values():
            for tenant, old in band.items():
                new = band[tenant] = make_queue()
                while (request := old.pop(now)) is not None:
                    new.push(request)

    def waiting(self) -> dict[str, int]:
        """Requests waiting per tenant."""
        return dict(self._waiting)

    def __len__(self) -> int:
        return self._len
