"""Test helpers: a source fed by the test, and a sink the test can wait on (no sleeping)."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from sage.common.core.functions.sink_function import SinkFunction
from sage.common.core.functions.source_function import SourceFunction, StopSignal


class QueueSource(SourceFunction):
    """Emits what the test puts in ``feed``, blocking in between; ``None`` ends the stream."""

    def __init__(self, feed: queue.Queue[Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.feed = feed

    def execute(self) -> Any:
        item = self.feed.get()
        return StopSignal("feed closed") if item is None else item


class Collector(SinkFunction):
    """Keeps every record with its arrival time; the test waits for a count on a condition."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.records: list[Any] = []
        self.arrivals: list[float] = []
        self._arrived = threading.Condition()

    def execute(self, data: Any) -> None:
        with self._arrived:
            self.records.append(data)
            self.arrivals.append(time.monotonic())
            self._arrived.notify_all()

    def wait_for(self, n: int, timeout: float = 10.0) -> bool:
        """Block until at least ``n`` records have arrived; ``False`` after ``timeout``."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self.records) >= n, timeout)
