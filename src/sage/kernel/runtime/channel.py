"""Bounded channels between tasks, and the markers that travel in them.

Each task reads one :class:`Inbox` fed by all its upstream tasks. Items are either a data
batch, ``(input_index, records)``, or a marker: :class:`EndOfStream`, :class:`Barrier`. The inbox is
bounded, so a fast producer blocks when its consumer falls behind (backpressure); blocking
waits on a condition, never a timed poll. :meth:`Inbox.cancel` wakes every waiter with
:class:`Cancelled` so a failing job shuts down promptly.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = ["Barrier", "Cancelled", "EndOfStream", "Inbox"]


class Cancelled(Exception):
    """Raised by a channel operation after the job was cancelled."""


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """Sent once by each upstream task over each of its edges when it has finished."""

    sender: str


@dataclass(frozen=True, slots=True)
class Barrier:
    """Checkpoint ``checkpoint_id``: everything ``sender`` sent before it belongs to it.

    Sent over every edge, like :class:`EndOfStream`; see
    :mod:`sage.kernel.checkpoint.coordinator` for how tasks align on barriers.
    """

    checkpoint_id: int
    sender: str


class Inbox:
    """A bounded multi-producer, single-consumer queue of batches and markers.

    Args:
        capacity: Items (batches) held before :meth:`put` blocks.
    """

    __slots__ = ("_cancelled", "_items", "_not_empty", "_not_full", "capacity", "high_water")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.high_water = 0
        self._items: deque[Any] = deque()
        lock = threading.Lock()
        self._not_empty = threading.Condition(lock)
        self._not_full = threading.Condition(lock)
        self._cancelled = False

    def put(self, item: Any) -> None:
        """Append ``item``, blocking while the inbox is full.

        Raises:
            Cancelled: the job was cancelled.
        """
        with self._not_full:
            while len(self._items) >= self.capacity and not self._cancelled:
                self._not_full.wait()
            if self._cancelled:
                raise Cancelled
            self._items.append(item)
            depth = len(self._items)
            if depth > self.high_water:
                self.high_water = depth
            self._not_empty.notify()

    def get(self, timeout: float | None = None) -> Any:
        """Remove and return the oldest item, blocking until one arrives.

        Args:
            timeout: Seconds to wait at most (``None``: until an item arrives).

        Returns:
            The item, or ``None`` if ``timeout`` passed first.

        Raises:
            Cancelled: the job was cancelled.
        """
        with self._not_empty:
            if not self._items:
                deadline = None if timeout is None else time.monotonic() + timeout
                while not self._items and not self._cancelled:
                    if deadline is None:
                        self._not_empty.wait()
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    self._not_empty.wait(remaining)
            if self._cancelled:
                raise Cancelled
            item = self._items.popleft()
            self._not_full.notify()
            return item

    def cancel(self) -> None:
        """Wake every producer and consumer with :class:`Cancelled`."""
        with self._not_empty:
            self._cancelled = True
            self._not_empty.notify_all()
            self._not_full.notify_all()

    @property
    def depth(self) -> int:
        """Items waiting now."""
        return len(self._items)
