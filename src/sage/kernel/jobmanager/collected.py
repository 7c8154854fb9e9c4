"""A job's collected records on the JobManager: taken from the job, held until the
submitter takes them.

:func:`pump` runs on a thread of its own for each job that collects: it takes records from
the job (``job.collected``: the job's buffers, or its Ray hosts through a relay) and puts
them in the job's :class:`ChunkStore`, whose pending bytes are bounded. The submitter's
``output`` calls read the chunks and acknowledge those they took, which makes room; while
there is none the pump waits, the job's collect buffers fill, and the collect waits in
turn: backpressure from the submitter's process to the pipeline.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from sage.kernel.runtime.collect import CollectedChunk

__all__ = [
    "MAX_PENDING_BYTES",
    "POLL_S",
    "ChunkStore",
    "TakeFn",
    "pump",
]

logger = logging.getLogger(__name__)

MAX_PENDING_BYTES = 8 * 1024 * 1024
"""Pickled records a job holds for its submitter before it takes no more from the job."""
TARGET_CHUNK_BYTES = 1024 * 1024
"""About how large the pump asks each take from the job to be (it learns the record size)."""
FIRST_TAKE = 1024  # records of the first take, before the record size is known
MAX_TAKE = 65_536  # records of one take at most
POLL_S = 10.0
"""Longest one take waits for records before the pump asks again."""

TakeFn = Callable[[int, float], "list[CollectedChunk] | None"]
"""``job.collected(max_records, timeout)``: see ``LocalJob.collected``."""


class ChunkStore:
    """The chunks of one job waiting for its submitter, numbered in arrival order.

    Shares the job entry's lock, and calls ``wake`` (with the lock held) when chunks arrive,
    so that ``output`` calls waiting on the entry return.

    Args:
        lock: The job entry's lock.
        wake: Wakes whoever waits on the entry (called with ``lock`` held).
    """

    def __init__(self, lock: threading.Lock, wake: Callable[[], None]) -> None:
        self._cond = threading.Condition(lock)
        self._wake = wake
        self._chunks: deque[tuple[int, CollectedChunk]] = deque()
        self._next = 0
        self._bytes = 0
        self._closed = False
        self.high_water = 0
        """The most pickled bytes held at once (bounded by about
        :data:`MAX_PENDING_BYTES` plus one take)."""

    def add(self, chunks: list[CollectedChunk]) -> None:
        """Number and keep ``chunks``; wake the submitter's waiting call."""
        with self._cond:
            for chunk in chunks:
                self._chunks.append((self._next, chunk))
                self._next += 1
                self._bytes += len(chunk.payload)
            self.high_water = max(self.high_water, self._bytes)
            self._wake()

    def ack(self, upto: int) -> None:
        """Drop the chunks numbered below ``upto`` (the submitter has them)."""
        with self._cond:
            dropped = False
            while self._chunks and self._chunks[0][0] < upto:
                _, chunk = self._chunks.popleft()
                self._bytes -= len(chunk.payload)
                dropped = True
            if dropped:
                self._cond.notify_all()

    def after(self, seq: int) -> tuple[list[tuple[int, CollectedChunk]], int]:
        """The chunks numbered ``seq`` and later, and the number the next one will get."""
        with self._cond:
            return [(n, c) for n, c in self._chunks if n >= seq], self._next

    def has_after(self, seq: int) -> bool:
        """Whether a chunk numbered ``seq`` or later is here (call with the lock held)."""
        return self._next > seq

    def wait_room(self) -> None:
        """Wait until the pending chunks are under :data:`MAX_PENDING_BYTES`, or the job
        ended (:meth:`close`)."""
        with self._cond:
            while self._bytes >= MAX_PENDING_BYTES and not self._closed:
                self._cond.wait()

    def close(self) -> None:
        """The job has ended: the pump stops waiting for room (it takes what is left)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def clear(self) -> None:
        """Drop every chunk (the job is forgotten)."""
        with self._cond:
            self._chunks.clear()
            self._bytes = 0
            self._cond.notify_all()


def _next_take(chunks: list[CollectedChunk]) -> int:
    """Records to ask for next: about :data:`TARGET_CHUNK_BYTES` at the size just seen."""
    count = sum(c.count for c in chunks)
    size = sum(len(c.payload) for c in chunks)
    per_record = max(size / max(count, 1), 1.0)
    return max(1, min(MAX_TAKE, int(TARGET_CHUNK_BYTES / per_record)))


def pump(store: ChunkStore, take: TakeFn, on_error: Callable[[BaseException], None]) -> None:
    """Move a job's collected records into ``store`` until every collect has ended (the
    body of the job's pump thread).

    Args:
        store: The job's chunks.
        take: The job's ``collected``.
        on_error: Called if taking fails (the job cannot finish without the pump: it should
            be cancelled).
    """
    n = FIRST_TAKE
    try:
        while True:
            store.wait_room()
            chunks = take(n, POLL_S)
            if chunks is None:
                return
            if chunks:
                store.add(chunks)
                n = _next_take(chunks)
    except BaseException as exc:
        logger.exception("taking the collected records failed")
        on_error(exc)
