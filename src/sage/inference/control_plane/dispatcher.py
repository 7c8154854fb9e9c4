"""The dispatcher: requests wait here, in one lane per (kind, model), until an instance of
their model has a free slot; the policy decides which waiting request leaves first.

An instance never holds more than its ``max_concurrent_requests``: a request is *granted* a
slot on one instance (chosen by the :class:`~.routing.Router`'s policy among the healthy ones
with a free slot: the least loaded by default) or waits. Whenever a
slot frees, an instance changes health or a request arrives, the lane dispatches from its
queue while it has both waiting requests and free slots. All of it runs on the gateway's
event loop; no locks.

Policies (:class:`SchedulingPolicyType`):

* ``FIFO`` — arrival order; the cheapest, and fair when nobody has a deadline.
* ``PRIORITY`` — lower ``priority`` first, aged so that waiting ``aging_s`` seconds is worth
  one level and low priority never starves.
* ``SLO_AWARE`` — least slack first (slack = deadline − now − predicted service time); the
  prediction is the model's measured P95 latency per token times the request's tokens.
  Requests that can no longer meet their SLO go after those that can (never dropped).
  Embeddings leaving together are sent as one batched call, as in HYBRID.
* ``HYBRID`` — for LLM and embedding traffic sharing a gateway: LLM requests by slack as in
  SLO_AWARE; embedding requests in arrival order, merged per model into batched calls of up
  to ``batch_max_texts`` texts. While the model has calls in flight, a batch waits up to
  ``batch_wait_s`` to fill; an idle instance gets a request at once.
* ``ADAPTIVE`` — every ``adaptive_interval_s`` looks at the traffic since the last look and
  picks one of the above but COST_OPTIMIZED (:mod:`.adaptive`); ``active_policy`` says which.
* ``COST_OPTIMIZED`` — ordered as SLO_AWARE, but placed by cost instead of by the router:
  on the cheapest instance (``cost_per_1k_tokens``) expected to meet the request's SLO,
  else on the one expected to finish soonest (:mod:`.costs`).

Batched embedding calls are gathered by :mod:`.batch_dispatch`. Whatever the policy, the
cost served is counted (``describe()["cost"]``, each instance's ``cost``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from sage.inference.config import SchedulingPolicyType
from sage.inference.control_plane.adaptive import BATCHING, Traffic, first_active
from sage.inference.control_plane.batch_dispatch import (
    EmbeddingBatcher,
    Grant,
    Ticket,
    settle_riders,
)
from sage.inference.control_plane.costs import CostPlacer
from sage.inference.control_plane.fairness import NO_COUNTERS, FairShareQueue, VirtualCounters
from sage.inference.control_plane.figures import ClassTable, LatencyModel
from sage.inference.control_plane.instances import Instance, InstanceRegistry
from sage.inference.control_plane.queues import (
    PendingRequest,
    RequestQueue,
    make_queue,
)
from sage.inference.control_plane.routing import Router

__all__ = [
    "Dispatcher",
    "Grant",
    "NoInstance",
    "QueueFull",
    "Ticket",
    "settle_riders",
]

logger = logging.getLogger(__name__)


class NoInstance(LookupError):
    """No healthy instance serves the request's model."""


class QueueFull(RuntimeError):
    """The request's lane already holds ``max_queued`` waiting requests.

    Attributes:
        retry_after_s: When the queue should have room again (whole seconds, at least 1),
            from its length, the model's measured latency and the instances' slots.
    """

    def __init__(self, model: str, queued: int, retry_after_s: int) -> None:
        super().__init__(f"{queued} requests for {model!r} are already waiting")
        self.retry_after_s = retry_after_s


class _Lane:
    """The waiting requests of one (kind, model)."""

    __slots__ = ("counters", "key", "kind", "model", "queue", "texts", "timer")

    def __init__(self, kind: str, model: str, queue: RequestQueue):
        self.counters: VirtualCounters = NO_COUNTERS  # fair share: the tenants' counters
        self.kind = kind
        self.model = model
        self.key = (kind, model)
        self.queue = queue
        self.texts = 0  # embedding inputs waiting (for batching)
        self.timer: asyncio.TimerHandle | None = None


class Dispatcher:
    """Queues requests per model and grants slots by policy; see the module docstring.

    Args:
        registry: The instances.
        policy: The scheduling policy.
        aging_s: PRIORITY: seconds of waiting worth one priority level.
        default_slo_s: SLO_AWARE/HYBRID/COST_OPTIMIZED: the objective of requests that carry
            none, for their order in the queue.
        batch_max_texts: Embedding inputs per batched call at most.
        batch_wait_s: HYBRID: how long a batch may wait to fill while its model is busy.
        adaptive_interval_s: ADAPTIVE: seconds between looks at the traffic.
        router: Places granted requests on instances (default: least loaded).
        tenant_weights: Fair share among tenants by these weights (:mod:`.fairness`; ``None``: off).
        clock: Monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self,
        registry: InstanceRegistry,
        policy: SchedulingPolicyType | str = SchedulingPolicyType.FIFO,
        *,
        aging_s: float | None = 10.0,
        default_slo_s: float = 60.0,
        batch_max_texts: int = 256,
        batch_wait_s: float = 0.005,
        adaptive_interval_s: float = 1.0,
        max_queued: int | None = None,
        router: Router | None = None,
        tenant_weights: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.router = router or Router(registry)
        self.max_queued = max_queued
        self._policy = SchedulingPolicyType.parse(policy)
        self.aging_s = aging_s
        self.default_slo_s = default_slo_s
        self.adaptive_interval_s = adaptive_interval_s
        self.clock = clock
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self._models: dict[tuple[str, str], LatencyModel] = {}
        self.classes, self.tenants = ClassTable(), ClassTable()  # figures per class, per tenant
        self.tenant_weights = tenant_weights
        self._traffic = Traffic()
        self._active = first_active(self._policy)
        self._next_look = 0.0
        self.switches = 0  # ADAPTIVE policy changes
        self.batcher = EmbeddingBatcher(
            registry, clock, self._dispatch, batch_max_texts, batch_wait_s
        )
        self.costs = CostPlacer(registry, self.predict_s, clock)
        self.retries = 0
        self.rejected = 0  # requests refused because their lane was full
        registry.on_change = self.redispatch
        registry.waiting = self.queued_in

    # -- policy ------------------------------------------------------------------------------

    @property
    def policy(self) -> SchedulingPolicyType:
        """The configured policy."""
        return self._policy

    @property
    def active_policy(self) -> SchedulingPolicyType:
        """The policy ordering requests now (differs from :attr:`policy` under ADAPTIVE)."""
        return self._active

    def set_policy(self, policy: SchedulingPolicyType | str) -> SchedulingPolicyType:
        """Switch policy; waiting requests move to the new order.

        Raises:
            ConfigError: an unknown policy name.
        """
        self._policy = SchedulingPolicyType.parse(policy)
        self._switch(first_active(self._policy))
        return self._policy

    def _switch(self, active: SchedulingPolicyType) -> None:
        if active is self._active:
            return
        logger.info("scheduling policy now %s (configured: %s)", active, self._policy)
        self._active = active
        now = self.clock()
        for lane in self._lanes.values():
            old = lane.queue
            if isinstance(old, FairShareQueue):  # tenants keep their counters and places
                old.reorder(now)  # its factory builds the new policy's queues
                continue
            lane.queue = self._queue(lane.kind)
            while (request := old.pop(now)) is not None:
                lane.queue.push(request)
        self.redispatch()

    def _queue(self, kind: str) -> RequestQueue:
        policy = self._active
        if policy is SchedulingPolicyType.PRIORITY:
            return make_queue(policy, kind, aging_s=self.aging_s)
        if policy in BATCHING and not (
            policy is SchedulingPolicyType.HYBRID and kind == "embedding"
        ):
            return make_queue(
                policy, kind, predict_s=self.predict_s, default_slo_s=self.default_slo_s
            )
        return make_queue(policy, kind)

    def _look(self, now: float) -> None:
        """ADAPTIVE: pick the policy for the traffic since the last look."""
        self._next_look = now + self.adaptive_interval_s
        traffic, self._traffic = self._traffic, Traffic()
        chosen = traffic.choose(self.queued)
        if chosen is not self._active:
            self.switches += 1
            self._switch(chosen)

    # -- predictions ---------------------------------------------------------------------------

    def predict_s(self, request: PendingRequest) -> float:
        """Predicted service time: the model's P95 seconds per token times its tokens."""
        model = self._models.get((request.kind, request.model))
        return model.p95_per_token * request.tokens if model is not None else 0.0

    def _place(self, request: PendingRequest) -> Instance | None:
        """The instance ``request`` goes to: by cost under COST_OPTIMIZED, else the router's."""
        if self._active is SchedulingPolicyType.COST_OPTIMIZED:
            return self.costs.pick(request)
        return self.router.pick(request)

    # -- admission ----------------------------------------------------------------------------

    def _lane(self, kind: str, model: str) -> _Lane:
        lane = self._lanes.get((kind, model))
        if lane is None:
            lane = _Lane(kind, model, self._queue(kind))
            if self.tenant_weights is not None:
                lane.counters = VirtualCounters(self.tenant_weights)
                lane.queue = FairShareQueue(lambda: self._queue(kind), lane.counters)
            self._lanes[(kind, model)] = lane
        return lane

    async def admit(self, request: PendingRequest, ticket: Ticket, retry: bool = False) -> Grant:
        """Wait for ``request``'s turn and a slot; the grant.

        ``request.payload`` is set to ``ticket``. A ``retry`` (its instance failed) goes back
        to the head of its lane. Cancelling the wait takes the request out of the queue.

        Raises:
            NoInstance: no healthy instance serves the model (now, or while it waited).
        """
        now = self.clock()
        if self._policy is SchedulingPolicyType.ADAPTIVE:
            self._traffic.count(request)
            if now >= self._next_look:
                self._look(now)
        lane = self._lane(request.kind, request.model)
        request.payload = ticket  # (a retry's old ticket must not count its old riders)
        if retry:
            self.retries += 1
        if not len(lane.queue):  # nobody waits: straight to a free instance if there is one
            instance = self._place(request)
            if instance is not None:
                self.registry.take(instance)
                self.router.placed(instance, request)
                lane.counters.charge_request(request)  # fair share: its tenant pays
                return Grant(instance)
            if not self.registry.has_healthy(request.kind, request.model):
                raise NoInstance(request.model)
        queued = len(lane.queue)
        if not retry and self.max_queued is not None and queued >= self.max_queued:
            self.rejected += 1
            raise QueueFull(request.model, queued, self._drain_s(request, queued))
        if retry:
            lane.queue.requeue(request)
        else:
            lane.queue.push(request)
        lane.texts += ticket.texts
        self._dispatch(lane)
        try:
            return await ticket.granted
        except asyncio.CancelledError:
            if ticket.granted.done() and not ticket.granted.cancelled():
                self._give_back(ticket.granted.result())  # granted as it was cancelled
            ticket.granted.cancel()  # (if it stayed queued, it would be skipped at the head)
            if lane.queue.remove(request):  # still queued: it leaves the queue now
                lane.texts -= ticket.texts
            raise

    def _drain_s(self, request: PendingRequest, queued: int) -> int:
        """Whole seconds (>= 1) until ``queued`` requests like ``request`` have been served."""
        slots = max(self.registry.capacity(request.kind, request.model), 1)
        return max(1, math.ceil(queued * self.predict_s(request) / slots))

    def _give_back(self, grant: Grant) -> None:
        """Undo a grant whose request went away before using it (riders are re-admitted)."""
        settle_riders(grant.riders, None)
        if grant.instance is not None:
            grant.instance.in_flight -= 1
            self.redispatch()

    def finish(
        self,
        request: PendingRequest,
        instance: Instance,
        dispatched: float,
        *,
        failed: bool,
        first_byte: float | None = None,
        used_tokens: int | None = None,
    ) -> None:
        """A request granted ``instance`` at ``dispatched`` (perf_counter) is done.

        A request with an SLO counts towards the instance's SLO attainment: met when it did
        not fail and its time since arrival (queueing included, as for its class) is
        within ``slo_ms``. ``used_tokens`` (its usage, if known) corrects fair share's charge
        and is what its cost is counted on (else the tokens it was charged, riders' included).
        """
        slo_met = None
        if request.slo_ms is not None:
            slo_met = not failed and (self.clock() - request.arrival) * 1000 <= request.slo_ms
        self.registry.release(instance, dispatched, failed, first_byte, slo_met=slo_met)
        if not failed:
            seconds = time.perf_counter() - dispatched
            model = self._models.get((request.kind, request.model))
            if model is None:
                model = self._models[(request.kind, request.model)] = LatencyModel()
            model.add(seconds, request.tokens)
            tokens = used_tokens if used_tokens is not None else _charged(request)
            by_cost = self._active is SchedulingPolicyType.COST_OPTIMIZED
            self.costs.served(instance, request, seconds, tokens, learn=by_cost)
        lane = self._lanes.get((request.kind, request.model))
        if lane is not None and used_tokens is not None:
            lane.counters.charge_request(request, used_tokens)
        if lane is not None and len(lane.queue):
            self._dispatch(lane)

    def record(
        self,
        request: PendingRequest,
        latency_s: float,
        ttft_s: float,
        failed: bool,
        class_name: str | None = None,
        queue_s: float = 0.0,
    ) -> None:
        """Count a request the client got an answer for, in its class's and tenant's figures.

        Times are seconds since its arrival: to the last byte (``latency_s``), the first
        byte (``ttft_s``) and the grant of an instance (``queue_s``).
        """
        name = class_name or f"{request.kind}:p{request.priority}"
        for stats in (self.classes.stats(name), self.tenants.stats(request.tenant)):
            stats.record(latency_s, ttft_s, request.slo_ms, failed, request.model, queue_s)

    # -- dispatch ---------------------------------------------------------------------------

    def redispatch(self) -> None:
        """Dispatch every lane (an instance was added, removed, or changed health)."""
        for lane in list(self._lanes.values()):
            if len(lane.queue):
                self._dispatch(lane)

    def _dispatch(self, lane: _Lane) -> None:
        registry, queue = self.registry, lane.queue
        batching = lane.kind == "embedding" and self._active in BATCHING
        hybrid = self._active is SchedulingPolicyType.HYBRID
        while len(queue):
            if not registry.has_free_slot(lane.kind, lane.model):
                if not registry.has_healthy(lane.kind, lane.model):
                    self._fail_lane(lane)
                return
            if batching and hybrid and self.batcher.hold(lane):
                return
            now = self.clock()
            request = queue.pop(now)
            if request is None:
                return
            ticket: Ticket = request.payload
            lane.texts -= ticket.texts
            if ticket.granted.done():  # its client went away while it waited
                continue
            instance = self._place(request)
            assert instance is not None  # a healthy instance has a free slot (checked above)
            grant = Grant(instance)
            if batching and ticket.batch_key is not None:
                grant.riders = self.batcher.riders(lane, request, now)
            registry.take(instance)
            self.router.placed(instance, request)
            lane.counters.charge_request(request)
            ticket.granted.set_result(grant)

    def _fail_lane(self, lane: _Lane) -> None:
        """No healthy instance left for the lane's model: every waiting request gets an error."""
        now = self.clock()
        while (request := lane.queue.pop(now)) is not None:
            ticket: Ticket = request.payload
            if not ticket.granted.done():
                ticket.granted.set_exception(NoInstance(lane.model))
        lane.texts = 0

    # -- metrics -----------------------------------------------------------------------------

    def _p95_ms_per_token(self, key: tuple[str, str]) -> float:
        model = self._models.get(key)
        return model.p95_per_token * 1e3 if model is not None else 0.0

    @property
    def batches(self) -> int:
        """Batched embedding calls sent."""
        return self.batcher.batches

    @property
    def batched_requests(self) -> int:
        """Requests that went in batched embedding calls (leaders included)."""
        return self.batcher.batched_requests

    @property
    def queued(self) -> int:
        """Requests waiting now, all lanes."""
        return sum(len(lane.queue) for lane in self._lanes.values())

    def queued_in(self, kind: str, model: str) -> int:
        """Requests waiting now in the lane of ``kind`` and ``model`` (0: no such lane)."""
        lane = self._lanes.get((kind, model))
        return len(lane.queue) if lane is not None else 0

    def describe(self) -> dict[str, Any]:
        """JSON-ready state: policy, lanes, classes, batching and retry counters."""
        return {
            "policy": str(self._policy),
            "active_policy": str(self._active),
            "policy_switches": self.switches,
            "queued": self.queued,
            "lanes": [
                {
                    "kind": lane.kind,
                    "model": lane.model,
                    "queued": len(lane.queue),
                    "p95_ms_per_token": self._p95_ms_per_token(lane.key),
                    "virtual_tokens": dict(lane.counters.values),
                }
                for lane in list(self._lanes.values())
            ],
            "classes": {name: stats.describe() for name, stats in sorted(self.classes.items())},
            "embedding_batches": self.batcher.batches,
            "batched_requests": self.batcher.batched_requests,
            "retries": self.retries,
            "cost": self.costs.total,
            "routing": self.router.describe(),
        }


def _charged(request: PendingRequest) -> int:
    """Tokens ``request`` was charged at admission, with those of the riders on its call."""
    tokens = request.cost or request.tokens
    ticket = request.payload
    if not isinstance(ticket, Ticket) or not ticket.granted.done():
        return tokens  # granted at once (no riders)
    if ticket.granted.cancelled() or ticket.granted.exception() is not None:
        return tokens
    return tokens + sum(r.cost or r.tokens for r in ticket.granted.result().riders)
