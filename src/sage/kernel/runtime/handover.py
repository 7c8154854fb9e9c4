"""Bounded buffers that a job's tasks fill and one fetcher empties: how collected records and
printed lines leave the process that runs a task.

A :class:`Handover` holds any number of named buffers under one condition, so the fetcher
(the JobManager's relay, a Ray call from it) waits for *any* of them with one
:meth:`~Handover.take`. A writer that finds its buffer full waits for room (backpressure up
the pipeline, as a full channel does); :meth:`~HandoverBuffer.close` says no more items come
and, for a buffer made with ``drain_on_close``, waits until the fetcher has taken the last
one, so a task does not end (and its process is not reused) while records it produced sit
here. :meth:`~Handover.cancel` wakes and ends every waiter: writers raise
:class:`~sage.kernel.runtime.channel.Cancelled`.

Nothing polls: writers append without the lock and wake the fetcher only when it waits.
"""

from __future__ import annotations

import threading
from collections import deque
from time import monotonic
from typing import Any

from sage.kernel.runtime.channel import Cancelled

__all__ = ["Handover", "HandoverBuffer"]


class HandoverBuffer:
    """One named buffer of a :class:`Handover` (written by one writer at a time)."""

    def __init__(self, hub: Handover, name: str, drain_on_close: bool) -> None:
        self.name = name
        self._hub = hub
        self._items: deque[Any] = deque()
        self._drain_on_close = drain_on_close
        self.closed = False

    def put(self, item: Any) -> None:
        """Append ``item``; wait while the buffer is full.

        Raises:
            Cancelled: the handover was cancelled (the job is being torn down).
        """
        hub = self._hub
        items = self._items
        if len(items) >= hub.capacity or hub.cancelled:
            hub._wait_room(self)
        items.append(item)
        # The fetcher raises its flag before it looks at the buffers: if it is down here,
        # the fetcher will see this item; if it is up, wake it.
        if hub._fetcher_waiting:
            with hub._cond:
                hub._cond.notify_all()

    def close(self) -> None:
        """No more items come; with ``drain_on_close``, wait until the last was taken (or the
        handover is cancelled)."""
        hub = self._hub
        with hub._cond:
            self.closed = True
            hub._cond.notify_all()
            if self._drain_on_close:
                while self._items and not hub.cancelled:
                    hub._cond.wait()

    def __len__(self) -> int:
        return len(self._items)


class Handover:
    """Named bounded buffers and the one fetcher that empties them (see the module docstring).

    Args:
        capacity: Items one buffer holds before its writer waits.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity={capacity!r}: use an integer >= 1")
        self.capacity = capacity
        self.cancelled = False
        self._buffers: list[HandoverBuffer] = []
        self._cond = threading.Condition()
        self._fetcher_waiting = False

    def buffer(self, name: str, *, drain_on_close: bool = False) -> HandoverBuffer:
        """A new buffer called ``name`` (the name comes back with its items)."""
        buffer = HandoverBuffer(self, name, drain_on_close)
        with self._cond:
            self._buffers.append(buffer)
        return buffer

    def _wait_room(self, buffer: HandoverBuffer) -> None:
        with self._cond:
            while len(buffer._items) >= self.capacity and not self.cancelled:
                self._cond.wait()
            if self.cancelled:
                raise Cancelled

    def take(
        self, max_items: int, timeout: float | None = None
    ) -> list[tuple[str, list[Any]]] | None:
        """Up to ``max_items`` items, by buffer, oldest first, once there are any.

        Args:
            max_items: The most items to return (over all buffers).
            timeout: Seconds to wait for items (``None``: until there are some or the end).

        Returns:
            ``[(name, items), ...]`` for the buffers that had items; ``[]`` if ``timeout``
            passed first; ``None`` once every buffer is closed and empty, or the handover
            was cancelled (nothing will ever come).
        """
        deadline = None if timeout is None else monotonic() + timeout
        with self._cond:
            self._fetcher_waiting = True
            try:
                while True:
                    if self.cancelled:
                        return None
                    ready = [b for b in self._buffers if b._items]
                    if ready:
                        break
                    if all(b.closed for b in self._buffers):
                        return None
                    remaining = None if deadline is None else deadline - monotonic()
                    if remaining is not None and remaining <= 0:
                        return []
                    self._cond.wait(remaining)
            finally:
                self._fetcher_waiting = False
            taken: list[tuple[str, list[Any]]] = []
            budget = max(max_items, 1)
            for buffer in ready:
                items = buffer._items
                n = min(len(items), budget)
                taken.append((buffer.name, [items.popleft() for _ in range(n)]))
                budget -= n
                if budget == 0:
                    break
            self._cond.notify_all()  # writers waiting for room, closers waiting for the drain
            return taken

    def cancel(self) -> None:
        """End every wait: writers raise ``Cancelled``, closers return, ``take`` gives ``None``."""
        with self._cond:
            self.cancelled = True
            self._cond.notify_all()

    @property
    def ended(self) -> bool:
        """Whether :meth:`take` would return ``None`` (all closed and empty, or cancelled)."""
        with self._cond:
            return self.cancelled or all(b.closed and not b._items for b in self._buffers)
