"""The batch operator flushes on size, on time without new input, and at end of stream."""

from __future__ import annotations

import queue
import time
from typing import Any

from helpers import Collector, QueueSource
from sage.kernel.api.local_environment import LocalEnvironment


def test_flushes_full_batches_and_the_rest_at_end_of_stream() -> None:
    env = LocalEnvironment("batch_size")
    out: list[list[int]] = []
    env.from_collection(range(10)).batch(4).sink(out.append)
    env.submit()
    assert out == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_flushes_a_partial_batch_after_the_timeout_without_new_input() -> None:
    env = LocalEnvironment("batch_time")
    feed: queue.Queue[Any] = queue.Queue()
    sink = Collector()
    env.from_source(QueueSource, feed).batch(100, timeout_s=0.2).sink(sink)
    job = env.submit(autostop=False)
    try:
        sent = time.monotonic()
        for i in range(3):
            feed.put(i)
        # no more input arrives; the partial batch must come out on its own
        assert sink.wait_for(1, timeout=10)
        batch, at = sink.records[0], sink.arrivals[0]
        assert batch == [0, 1, 2]
        assert at - sent >= 0.2  # held for the timeout, not flushed early
        feed.put(3)
        feed.put(None)
        assert job.wait(10)
    finally:
        feed.put(None)
        job.close()
    assert sink.records == [[0, 1, 2], [3]]


def test_batch_with_parallelism_keeps_every_record() -> None:
    env = LocalEnvironment("batch_parallel")
    out: list[list[int]] = []
    env.from_collection(range(1000)).batch(64, 1.0, parallelism=3).sink(out.append)
    env.submit()
    assert all(0 < len(b) <= 64 for b in out)
    assert sorted(x for b in out for x in b) == list(range(1000))
