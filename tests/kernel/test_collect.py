"""``stream.collect()`` on the local runtime: the records, in the submitting process."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from sage.common.errors import CollectLimitError, ConfigError, PlanError
from sage.kernel.api.collect import CollectResult
from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.runtime.collect import collecting_tasks, unpack
from sage.kernel.runtime.local.executor import LocalJob


def test_collect_gives_the_records_after_submit_in_arrival_order() -> None:
    env = LocalEnvironment("squares")
    squares = env.from_collection(range(5)).map(lambda x: x * x).collect()
    assert isinstance(squares, CollectResult) and len(squares) == 0
    env.submit()
    assert list(squares) == [0, 1, 4, 9, 16]
    assert squares[1] == 1 and squares[-1] == 16 and squares[1:3] == [1, 4]
    assert 9 in squares and squares.index(16) == 4
    assert "5 records" in repr(squares)


def test_every_collect_of_a_pipeline_gets_its_own_records() -> None:
    env = LocalEnvironment("two")
    numbers = env.from_collection(range(6), parallelism=2)
    evens = numbers.filter(lambda x: x % 2 == 0, parallelism=2).collect(name="evens")
    odds = numbers.filter(lambda x: x % 2 == 1, parallelism=3).collect()
    env.submit()
    assert sorted(evens) == [0, 2, 4] and sorted(odds) == [1, 3, 5]
    assert evens.operator == "sink 'evens'"


def test_a_new_job_starts_the_result_empty() -> None:
    env = LocalEnvironment("again")
    result = env.from_collection([1, 2]).collect()
    env.submit()
    env.submit()
    assert list(result) == [1, 2]


def test_the_collect_runs_once_and_keeps_each_senders_order() -> None:
    env = LocalEnvironment("order", config={"batch_size": 3})
    result = env.from_collection(range(1000)).map(lambda x: x + 1).collect()
    plan = env.plan()
    collect = next(n for n in plan.nodes if n.name == "sink 'collect'")
    assert collect.parallelism == 1
    env.submit()
    assert list(result) == list(range(1, 1001))


@pytest.mark.parametrize("mode", ["fail", "skip", "dead_letter"])
def test_past_the_cap_the_job_fails_in_every_error_mode(mode: str) -> None:
    env = LocalEnvironment("capped", config={"on_error": mode})
    result = env.from_collection(range(100)).collect(max_records=10)
    with pytest.raises(CollectLimitError, match=r"max_records=10 .*collect\(max_records=N\)"):
        env.submit()
    assert len(result) == 10  # what arrived before; the error says the rest is missing
    assert env.dead_letters == []


@pytest.mark.parametrize("bad", [0, -1, 1.5, "10", True, None])
def test_max_records_must_be_a_positive_int(bad: Any) -> None:
    env = LocalEnvironment("bad")
    with pytest.raises(PlanError, match=f"max_records={bad!r} is invalid"):
        env.from_collection([1]).collect(max_records=bad)
    assert len(env.graph) == 1  # nothing was added


def test_a_job_that_restarts_cannot_collect() -> None:
    env = LocalEnvironment(
        "restarts", config={"fault_tolerance": {"strategy": "restart", "max_restarts": 2}}
    )
    env.from_collection([1, 2]).collect()
    with pytest.raises(ConfigError, match=r"collect.*TransactionalFileSink"):
        env.submit()


def test_a_job_run_for_someone_else_hands_its_records_over_with_backpressure() -> None:
    """Built without collectors (as the JobManager builds it), the job keeps its records in
    bounded buffers until ``collected`` takes them, and does not end before."""
    env = LocalEnvironment("handover", config={"batch_size": 64})
    env.from_collection(range(20_000)).map(lambda x: x * 2).collect()
    plan = env.plan()
    assert collecting_tasks(plan)
    job = LocalJob(plan, env.job_config, publish=False)
    job.start()
    assert job.wait(0.05) is False  # the buffer filled and nobody took it: the job waits
    records: list[int] = []
    while (chunks := job.collected(4096, timeout=30)) is not None:
        for chunk in chunks:
            assert chunk.collector == "collect-0"
            records += unpack(chunk.payload)
    assert job.wait(30) is True
    assert records == [x * 2 for x in range(20_000)]


def test_cancelling_a_job_that_waits_to_hand_over_ends_it() -> None:
    env = LocalEnvironment("stuck")
    env.from_source(lambda: 1).collect()
    job = LocalJob(env.plan(), env.job_config, publish=False)
    job.start()
    done = threading.Event()
    threading.Thread(target=lambda: (job.close(), done.set()), daemon=True).start()
    assert done.wait(30)
    assert job.collected(10, timeout=0) is None
    assert job.status.value == "cancelled"
