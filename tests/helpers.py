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


class FileSink(SinkFunction):
    """Appends each record as a JSON line to ``<directory>/part-<instance>``.

    The way to collect results from a pipeline whose sinks run in other processes (Ray
    actors): every node of a test cluster shares this machine's file system.
    """

    def __init__(self, directory: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.directory = directory
        self._file: Any = None

    def open(self, context: Any) -> None:
        import os

        path = os.path.join(self.directory, f"part-{context.instance_index}")
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def execute(self, data: Any) -> None:
        import json

        self._file.write(json.dumps(data) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def read_parts(directory: str) -> list[Any]:
    """Every record a :class:`FileSink` wrote into ``directory`` (part by part)."""
    import json
    import pathlib

    out: list[Any] = []
    for part in sorted(pathlib.Path(directory).glob("part-*")):
        out.extend(json.loads(line) for line in part.read_text(encoding="utf-8").splitlines())
    return out
