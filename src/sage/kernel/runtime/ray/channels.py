"""Channels between task actors: ordered, bounded, and exact about end of stream.

A sender's :class:`RemoteChannel` turns each ``put`` into a ``push`` call on the receiving
actor, numbered per (sender, receiver). The receiver's :class:`OrderedDelivery` puts items
into the task's ordinary :class:`~sage.kernel.runtime.channel.Inbox` strictly in that order,
whatever order Ray runs the concurrent calls in, so an end-of-stream marker can never
overtake the data sent before it.

Backpressure is end to end: a ``push`` returns once its item is in the receiver's inbox
(blocking while the inbox is full) or parked behind an earlier one, and a sender keeps at
most ``window`` pushes unanswered per receiver before it waits for the oldest. A slow
consumer therefore stalls its producers within ``window`` batches, as a full local inbox
does.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from sage.kernel.runtime.channel import Cancelled, EndOfStream, Inbox

__all__ = ["OrderedDelivery", "RemoteChannel"]


class OrderedDelivery:
    """The receiving side: puts numbered items into ``inbox`` in each sender's order.

    Calls arrive on the actor's worker threads, possibly out of order. An item that comes
    early is parked (at most ``window`` per sender, since a sender waits for its oldest
    push) and the call returns; the call delivering its predecessor also delivers it. So a
    call never holds a thread waiting for another call, and any number of threads works.
    """

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox
        self._next: dict[str, int] = {}
        self._early: dict[str, dict[int, Any]] = {}
        self._lock = threading.Lock()
        self._cancelled = False

    def deliver(self, sender: str, seq: int, item: Any) -> bool:
        """Put ``item`` (the ``seq``-th from ``sender``); ``False`` if the job was cancelled."""
        with self._lock:
            if self._cancelled:
                return False
            if self._next.get(sender, 0) != seq:
                self._early.setdefault(sender, {})[seq] = item
                return True
        while True:
            try:
                self.inbox.put(item)  # blocks while the inbox is full: backpressure
            except Cancelled:
                return False
            seq += 1
            with self._lock:
                early = self._early.get(sender)
                if not early or seq not in early:
                    self._next[sender] = seq  # the next call for this sender takes over
                    return True
                item = early.pop(seq)

    def cancel(self) -> None:
        """Refuse further items and cancel the inbox (blocked deliveries return ``False``)."""
        with self._lock:
            self._cancelled = True
            self._early.clear()
        self.inbox.cancel()


class RemoteChannel:
    """The sending side: a :class:`~sage.kernel.runtime.routing.Channel` to a task actor.

    Args:
        handle: The receiving task's host.
        job: The job (a host ignores pushes of a job it no longer serves).
        sender: The sending task's id (orders its items at the receiver).
        window: Pushes left unanswered before ``put`` waits for the oldest.
    """

    def __init__(self, handle: Any, job: str, sender: str, window: int) -> None:
        import ray  # only ever built inside a Ray worker

        self._ray = ray
        self._handle = handle
        self._job = job
        self._sender = sender
        self._window = window
        self._seq = 0
        self._pending: deque[Any] = deque()

    def put(self, item: Any) -> None:
        """Send ``item``; block while ``window`` earlier pushes are unanswered.

        After an end-of-stream marker, wait for every push: the sender's task only ends once
        the receiver holds everything it sent.

        Raises:
            Cancelled: the receiver was cancelled (the job is being torn down).
        """
        self._pending.append(self._handle.push.remote(self._job, self._sender, self._seq, item))
        self._seq += 1
        if isinstance(item, EndOfStream):
            while self._pending:
                self._settle(self._pending.popleft())
        elif len(self._pending) > self._window:
            self._settle(self._pending.popleft())

    def _settle(self, ref: Any) -> None:
        if not self._ray.get(ref):
            raise Cancelled
