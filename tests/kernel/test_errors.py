"""User-code errors fail fast, naming operator, instance and record; skip/dead-letter opt in."""

from __future__ import annotations

import json
import threading
import time
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from sage.common.core.functions.map_function import MapFunction
from sage.common.core.functions.sink_function import SinkFunction
from sage.common.core.functions.source_function import SourceFunction, StopSignal
from sage.common.errors import JobError, OperatorError
from sage.kernel.api.local_environment import LocalEnvironment


class Lifecycle:
    """Counts open/close calls per (operator, instance) across parallel instances."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.opened: list[tuple[str, int]] = []
        self.closed: list[tuple[str, int]] = []


class Tracked(MapFunction):
    def __init__(self, log: Lifecycle, fail_on: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log, self.fail_on = log, fail_on

    def open(self, context: Any) -> None:
        with self.log.lock:
            self.log.opened.append((context.operator_name, context.instance_index))

    def execute(self, data: int) -> int:
        if data == self.fail_on:
            raise ValueError(f"cannot handle {data}")
        return data

    def close(self) -> None:
        assert self.ctx is not None
        with self.log.lock:
            self.log.closed.append((self.ctx.operator_name, self.ctx.instance_index))


def _job_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("sage-")]


def test_failure_in_parallel_map_raises_fast_naming_operator_instance_and_record() -> None:
    log = Lifecycle()
    env = LocalEnvironment("failing")
    # an endless source: only the error can end this job
    env.from_collection(count()).map(Tracked, log, 5000, parallelism=3, name="Parse").sink(
        lambda x: None
    )
    started = time.monotonic()
    with pytest.raises(OperatorError) as info:
        env.submit()
    elapsed = time.monotonic() - started
    error = info.value
    assert elapsed < 1.0, f"submit took {elapsed:.2f}s to report the failure"
    assert error.operator == "map 'Parse'"
    assert error.parallelism == 3 and 0 <= error.instance < 3
    assert error.record == 5000
    assert isinstance(error.__cause__, ValueError)
    assert "map 'Parse' (instance" in str(error) and "/3) failed on record 5000" in str(error)
    assert 'on_error": "skip"' in str(error)  # says what to do
    # open and close ran exactly once per instance, even though the job failed
    assert sorted(log.opened) == [("map 'Parse'", i) for i in range(3)]
    assert sorted(log.closed) == sorted(log.opened)
    assert _job_threads() == []
    assert env.metrics().status == "failed"


def test_skip_drops_failing_records_and_counts_them() -> None:
    env = LocalEnvironment("skipping", config={"on_error": "skip"})
    out: list[int] = []
    env.from_collection(range(100)).map(lambda x: 10 // (x % 10), parallelism=2).sink(out.append)
    env.submit()
    assert sorted(out) == sorted(10 // (x % 10) for x in range(100) if x % 10)
    op = env.metrics().operators[1]
    assert op.errors == 10
    assert op.records_in == 100 and op.records_out == 90
    assert env.dead_letters == []


def test_dead_letters_keep_record_operator_and_error(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    env = LocalEnvironment(
        "dead_letters", config={"on_error": "dead_letter", "dead_letter_path": str(path)}
    )
    out: list[str] = []
    (
        env.from_collection(["1", "x", "3", "y"])
        .flatmap(lambda s: [s, s])
        .map(int, name="to_int")
        .filter(lambda n: n > 1)
        .sink(out.append)
    )
    env.submit()
    assert sorted(out) == [3, 3]
    letters = env.dead_letters
    assert sorted(d.record for d in letters) == ["x", "x", "y", "y"]
    assert {d.operator for d in letters} == {"map 'to_int'"}
    assert all(d.error.startswith("ValueError: invalid literal") for d in letters)
    assert "Traceback" in letters[0].traceback
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(line["record"] for line in lines) == ["x", "x", "y", "y"]
    assert env.metrics().dead_letters == 4


def test_errors_inside_a_flatmap_output_skip_only_that_output() -> None:
    env = LocalEnvironment("nested", config={"on_error": "skip"})
    out: list[float] = []
    env.from_collection([1, 2]).flatmap(lambda x: [x, 0, x]).map(lambda x: 1 / x).sink(out.append)
    env.submit()
    assert sorted(out) == [0.5, 0.5, 1.0, 1.0]


def test_fail_mode_names_the_inner_operator_of_a_fused_chain() -> None:
    env = LocalEnvironment("nested_fail")
    env.from_collection([1, 2]).flatmap(lambda x: [x, 0]).map(lambda x: 1 / x, name="inv").sink(
        print
    )
    with pytest.raises(OperatorError) as info:
        env.submit()
    assert info.value.operator == "map 'inv'" and info.value.record == 0


def test_source_failure_names_the_source() -> None:
    def numbers() -> Any:
        yield 1
        raise RuntimeError("disk gone")

    env = LocalEnvironment("source_fails")
    env.from_source(numbers(), name="reader").sink(print)
    with pytest.raises(
        OperatorError, match=r"source 'reader' .* producing its next record"
    ) as info:
        env.submit()
    assert isinstance(info.value.__cause__, RuntimeError)


def test_open_failure_stops_the_job_before_any_record_is_read() -> None:
    read: list[int] = []

    class Counting(SourceFunction):
        def execute(self) -> Any:
            read.append(1)
            return StopSignal if len(read) > 3 else len(read)

    class BrokenOpen(SinkFunction):
        def open(self, context: Any) -> None:
            raise ConnectionError("no database")

        def execute(self, data: Any) -> None:
            pass

    env = LocalEnvironment("open_fails")
    env.from_source(Counting).map(str, parallelism=2).sink(BrokenOpen)
    with pytest.raises(OperatorError, match=r"failed in open\(\): ConnectionError"):
        env.submit()
    assert read == []


def test_close_failure_is_reported() -> None:
    class BrokenClose(SinkFunction):
        def execute(self, data: Any) -> None:
            pass

        def close(self) -> None:
            raise OSError("flush failed")

    env = LocalEnvironment("close_fails")
    env.from_collection([1]).sink(BrokenClose)
    with pytest.raises(OperatorError, match=r"failed in close\(\): OSError"):
        env.submit()


def test_internal_errors_in_non_user_code_still_fail_the_job() -> None:
    env = LocalEnvironment("unstable_key")
    env.from_collection([object()]).keyby(lambda o: o, name="by_object").map(
        str, parallelism=2
    ).sink(print)
    with pytest.raises(JobError, match=r"keyby 'by_object'.*stable across processes"):
        env.submit()
