"""A pipeline that runs until its stdin closes: the job the dashboard tests watch.

Run as a separate process (``python tests/dashboard/running_pipeline.py NAME``), as a user's
script would be: it knows nothing about the dashboard and publishes to it by itself. It prints
``running`` once the job has started.
"""

from __future__ import annotations

import sys
import threading

from sage.common.core.functions.filter_function import FilterFunction
from sage.common.core.functions.map_function import MapFunction
from sage.common.core.functions.sink_function import SinkFunction
from sage.common.core.functions.source_function import SourceFunction, StopSignal
from sage.core.api.local_environment import LocalEnvironment
from sage.kernel.services.base_service import BaseService

stop = threading.Event()


class Counter(SourceFunction):
    """0, 1, 2... until stdin closes."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.n = 0

    def execute(self) -> object:
        if stop.is_set():
            return StopSignal("stdin closed")
        self.n += 1
        return self.n


class Lookup(BaseService):
    """A service the map calls on some records."""

    def get(self, n: int) -> int:
        return n % 7


class Enrich(MapFunction):
    def execute(self, n: int) -> tuple[int, int]:
        bucket = self.call_service["lookup"].get(n) if n % 50 == 0 else n % 7
        return n, bucket


class Even(FilterFunction):
    def execute(self, pair: tuple[int, int]) -> bool:
        return pair[0] % 2 == 0


class Discard(SinkFunction):
    def execute(self, pair: tuple[int, int]) -> None:
        pass


def main() -> None:
    env = LocalEnvironment(sys.argv[1], config={"memory_monitor": {"threshold_mb": 100_000}})
    env.register_service("lookup", Lookup)
    env.from_source(Counter).map(Enrich, parallelism=2).filter(Even).sink(Discard)
    job = env.submit(autostop=False)
    print("running", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    stop.set()
    job.wait()


if __name__ == "__main__":
    main()
