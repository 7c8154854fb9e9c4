"""Job control: autostop, stop/wait/close, metrics while running, no sleeping on the path."""

from __future__ import annotations

import queue
import time
from itertools import count
from typing import Any

import pytest

from helpers import Collector, QueueSource
from sage.common.core.functions.source_function import SourceFunction, StopSignal
from sage.common.errors import JobError
from sage.kernel.api.local_environment import LocalEnvironment


def test_autostop_false_runs_in_background_and_stop_drains_in_flight_records() -> None:
    env = LocalEnvironment("endless")
    gate = Collector()
    env.from_collection(count()).map(lambda x: x + 1, parallelism=2).sink(gate)
    job = env.submit(autostop=False)
    assert gate.wait_for(50_000, timeout=20)
    running = env.metrics()
    assert running.status == "running"
    assert running.operators[1].records_in >= 50_000  # the map, read while it runs
    assert env.stop(timeout=20)
    done = env.metrics()
    assert done.status == "finished"
    source, mapped, sink = done.operators
    # every record the source emitted went through the map and reached the sink
    assert source.records_out == mapped.records_in == mapped.records_out == sink.records_in
    assert len(gate.records) == sink.records_in
    assert job.status.value == "finished"


def test_metrics_increase_while_the_job_runs() -> None:
    feed: queue.Queue[Any] = queue.Queue()
    gate = Collector()
    env = LocalEnvironment("live_metrics")
    env.from_source(QueueSource, feed).map(str).sink(gate)
    env.submit(autostop=False)
    try:
        feed.put(1)
        assert gate.wait_for(1)
        before = env.metrics().operator("str").records_in
        feed.put(2)
        feed.put(3)
        assert gate.wait_for(3)
        after = env.metrics().operator("str").records_in
        assert before == 1 and after == 3
        assert env.metrics().status == "running"
    finally:
        feed.put(None)
        env.close()


def test_close_cancels_a_running_job_and_wait_reports_it() -> None:
    env = LocalEnvironment("closing")
    gate = Collector()
    env.from_collection(count()).sink(gate)
    job = env.submit(autostop=False)
    assert gate.wait_for(1000)
    env.close()
    assert job.status.value == "cancelled"
    with pytest.raises(JobError, match="cancelled"):
        job.wait()


def test_submit_while_running_is_refused() -> None:
    env = LocalEnvironment("twice")
    gate = Collector()
    env.from_collection(count()).sink(gate)
    env.submit(autostop=False)
    try:
        with pytest.raises(JobError, match="still running"):
            env.submit()
    finally:
        env.close()


def test_env_can_run_again_after_a_job_finished() -> None:
    env = LocalEnvironment("again")
    out: list[int] = []
    env.from_collection(range(3)).sink(out.append)
    env.submit()
    env.submit()
    assert sorted(out) == [0, 0, 1, 1, 2, 2]


def test_a_million_records_flow_without_any_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    class Numbers(SourceFunction):
        def __init__(self, n: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.i, self.n = 0, n

        def execute(self) -> Any:
            if self.i >= self.n:
                return StopSignal
            self.i += 1
            return self.i

    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"time.sleep({seconds}) was called on the record path")

    monkeypatch.setattr(time, "sleep", no_sleep)
    env = LocalEnvironment("million")
    total = [0, 0]

    def add(x: int) -> None:
        total[0] += x
        total[1] += 1

    env.from_source(Numbers, 1_000_000).map(lambda x: x * 2, parallelism=2).sink(add)
    env.submit()
    assert total == [1_000_000 * 1_000_001, 1_000_000]


def test_blocked_source_still_delivers_the_records_it_already_produced() -> None:
    feed: queue.Queue[Any] = queue.Queue()
    gate = Collector()
    env = LocalEnvironment("blocked_source")
    env.from_source(QueueSource, feed).map(lambda x: x * 10).sink(gate)  # fused with the source
    env.submit(autostop=False)
    try:
        for i in range(3):
            feed.put(i)
        # the source now blocks in feed.get(); its 3 records must not wait for a 4th
        assert gate.wait_for(3)
    finally:
        feed.put(None)
        env.wait(10)


def test_cpu_affinity_pins_task_threads_and_restores_the_caller() -> None:
    import os

    before = os.sched_getaffinity(0)
    cpu = min(before)
    seen: set[frozenset[int]] = set()

    def where(x: int) -> int:
        seen.add(frozenset(os.sched_getaffinity(0)))
        return x

    env = LocalEnvironment("pinned", config={"cpu_affinity": [cpu]})
    env.from_collection(range(200)).map(where, parallelism=2).sink(where)
    env.submit()
    assert seen == {frozenset({cpu})}
    assert os.sched_getaffinity(0) == before


def test_cpu_affinity_outside_the_allowed_cpus_is_refused() -> None:
    from sage.common.errors import ConfigError

    with pytest.raises(ConfigError, match="this process may use CPUs"):
        LocalEnvironment("pinned", config={"cpu_affinity": [10_000]})


def test_a_slow_operator_emits_each_result_before_finishing_its_input_batch() -> None:
    """Results of a slow map stream out; they are not held until its whole batch is done.

    Record i+1 may only be processed after record i reached the sink: if the task held its
    outputs until the end of the 20-record batch, this would never finish.
    """
    import threading as th

    reached = [th.Event() for _ in range(20)]
    collector = Collector()

    def slow(i: int) -> int:
        if i > 0:
            assert reached[i - 1].wait(10), f"record {i - 1} was held back"
        return i

    def arrive(i: int) -> None:
        collector.execute(i)
        reached[i].set()

    # a delay budget below any real per-record cost: every result must leave on its own
    env = LocalEnvironment("streaming_out", config={"max_batch_delay_s": 1e-7})
    env.from_collection(range(20)).map(slow, parallelism=1, name="slow").rebalance().sink(
        arrive, parallelism=1
    )
    env.submit()
    assert collector.records == list(range(20))
