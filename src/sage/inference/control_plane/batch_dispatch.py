"""Batched embedding calls, on the dispatcher's side: what a granted request is given, which
waiting requests ride on another's call, and how long a batch may wait to fill.

:mod:`.batching` merges the request bodies and splits the answer; this module decides who
goes together. Under the policies in :data:`~.adaptive.BATCHING`, an embedding request
leaving its lane takes along the waiting requests with the same ``batch_key`` (up to
``max_texts`` inputs) as *riders*: they get a :class:`Grant` without an instance and wait on
its ``outcome``, which the leader settles with :func:`settle_riders`. Under HYBRID a batch
may also wait up to ``wait_s`` to fill while its model has calls in flight
(:meth:`EmbeddingBatcher.hold`); an idle instance gets a request at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sage.inference.control_plane.fairness import VirtualCounters
from sage.inference.control_plane.instances import Instance, InstanceRegistry
from sage.inference.control_plane.queues import PendingRequest, RequestQueue

__all__ = ["BatchLane", "EmbeddingBatcher", "Grant", "Ticket", "settle_riders"]


@dataclass(eq=False)
class Grant:
    """What a waiting request is given.

    Attributes:
        instance: The instance to send to, holding one slot for this request. ``None`` for
            a request riding on another's batched call: await ``outcome`` instead.
        riders: Requests whose embedding inputs go in this same call (batching); the
            holder sends them all and settles each rider's ``outcome``.
        outcome: For a rider: the (status, body) its share of the batched call gets, or
            ``None`` when the call failed and the request should be admitted again.
    """

    instance: Instance | None
    riders: list[PendingRequest] = field(default_factory=list)
    outcome: asyncio.Future[tuple[int, bytes] | None] | None = None


@dataclass(eq=False)
class Ticket:
    """The dispatcher's part of a waiting request (kept in ``PendingRequest.payload``).

    Attributes:
        granted: Resolved with the :class:`Grant` when the request may go.
        body: The request's parsed JSON body (batching reads and merges ``input``).
        batch_key: Embedding requests with equal keys may share a call (``None``: never).
        texts: Number of embedding inputs.
    """

    granted: asyncio.Future[Grant]
    body: Any = None
    batch_key: Any = None
    texts: int = 1


def settle_riders(riders: list[PendingRequest], outcomes: list[tuple[int, bytes]] | None) -> None:
    """Give each rider of a batched call its share (``None``: the call failed, admit again)."""
    for i, rider in enumerate(riders):
        ticket: Ticket = rider.payload
        grant = ticket.granted.result()
        if grant.outcome is not None and not grant.outcome.done():
            grant.outcome.set_result(None if outcomes is None else outcomes[i])


class BatchLane(Protocol):
    """What batching needs of a dispatcher lane (one kind and model's waiting requests)."""

    kind: str
    model: str
    queue: RequestQueue
    texts: int  # embedding inputs waiting
    timer: asyncio.TimerHandle | None  # a held batch's wake-up
    counters: VirtualCounters  # fair share: riders are charged to their tenants too


class EmbeddingBatcher:
    """Gathers riders for leaving embedding requests and holds batches to fill (HYBRID).

    Args:
        registry: The instances (a batch is held only while its model is busy).
        clock: The dispatcher's monotonic clock.
        dispatch: Dispatches a lane again (called when a held batch's wait is over).
        max_texts: Embedding inputs per batched call at most.
        wait_s: How long a batch may wait to fill while its model is busy (0: never).
    """

    def __init__(
        self,
        registry: InstanceRegistry,
        clock: Callable[[], float],
        dispatch: Callable[[Any], None],
        max_texts: int = 256,
        wait_s: float = 0.005,
    ) -> None:
        self.registry = registry
        self.clock = clock
        self.dispatch = dispatch
        self.max_texts = max_texts
        self.wait_s = wait_s
        self.batches = 0  # batched calls sent
        self.batched_requests = 0  # requests that went in them (leaders included)

    def hold(self, lane: BatchLane) -> bool:
        """Whether to let the lane's batch fill a little longer (sets a timer if so)."""
        if self.wait_s <= 0 or lane.texts >= self.max_texts:
            return False
        busy = any(i.in_flight for i in self.registry.of_model(lane.kind, lane.model))
        if not busy:
            return False  # an idle instance: send now
        head = lane.queue.pop(self.clock())
        if head is None:
            return False
        lane.queue.requeue(head)
        due = head.arrival + self.wait_s
        if self.clock() >= due:
            return False
        if lane.timer is None:
            loop = asyncio.get_running_loop()
            lane.timer = loop.call_later(due - self.clock(), self._timer_fired, lane)
        return True

    def _timer_fired(self, lane: BatchLane) -> None:
        lane.timer = None
        if len(lane.queue):
            self.dispatch(lane)

    def riders(self, lane: BatchLane, leader: PendingRequest, now: float) -> list[PendingRequest]:
        """Take the waiting requests that can share ``leader``'s call, in queue order, and
        grant each a place in it."""
        lead: Ticket = leader.payload
        texts = lead.texts
        riders: list[PendingRequest] = []
        queue = lane.queue
        while len(queue) and texts < self.max_texts:
            request = queue.pop(now)
            if request is None:
                break
            ticket: Ticket = request.payload
            if ticket.granted.done():
                lane.texts -= ticket.texts
                continue
            if ticket.batch_key != lead.batch_key or texts + ticket.texts > self.max_texts:
                queue.requeue(request)
                break
            lane.texts -= ticket.texts
            texts += ticket.texts
            riders.append(request)
            outcome: asyncio.Future[tuple[int, bytes] | None] = (
                asyncio.get_running_loop().create_future()
            )
            ticket.granted.set_result(Grant(None, outcome=outcome))
            lane.counters.charge_request(request)
        if riders:
            self.batches += 1
            self.batched_requests += len(riders) + 1
        return riders
