"""One thread per job that fires call timeouts at their deadlines (no polling)."""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from time import perf_counter

__all__ = ["DeadlineWatcher"]

logger = logging.getLogger(__name__)


class DeadlineWatcher:
    """Runs callbacks at their deadlines on one helper thread, started on first use.

    The thread sleeps on a condition until the earliest deadline (or a new, earlier one);
    with no deadline pending it sleeps until one is scheduled.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def schedule(self, deadline: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` at ``deadline`` (``perf_counter`` seconds)."""
        with self._cond:
            if self._closed:
                return
            heapq.heappush(self._heap, (deadline, next(self._seq), callback))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"sage-{self._name}-deadlines", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def close(self) -> None:
        """Drop pending deadlines and stop the thread."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._heap or self._heap[0][0] > perf_counter()):
                    self._cond.wait(None if not self._heap else self._heap[0][0] - perf_counter())
                if self._closed:
                    return
                _, _, callback = heapq.heappop(self._heap)
            try:
                callback()
            except Exception:  # a timeout handler must not kill the watcher
                logger.exception("timeout handler failed")
