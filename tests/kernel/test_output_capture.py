"""Catching what a job's functions print and log, line by line, named by operator instance.

The local runtime only catches output when it runs a job for someone else (a JobManager):
``LocalJob(..., output=sink)``; a ``LocalEnvironment``'s job prints where it runs.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from sage.common.core.functions.map_function import MapFunction
from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.runtime.local.executor import LocalJob
from sage.kernel.runtime.output import Attribution, OutputLine, OutputRoute, capture


@contextmanager
def installed() -> Iterator[None]:
    """The capture, installed in the test itself (pytest sets its own streams again when a
    test's call begins, over anything a fixture installed)."""
    capture.install()
    try:
        yield
    finally:
        capture.uninstall()


def route_to(lines: list[OutputLine], operators: Any = (), fallback: str = "task") -> OutputRoute:
    return OutputRoute(Attribution(list(operators), fallback), lines.append)


def test_a_routed_thread_writes_whole_lines_to_its_route(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines: list[OutputLine] = []
    with installed(), capture.routed(route_to(lines)):
        print("one")
        sys.stdout.write("two, in ")
        sys.stdout.write("pieces\nthree\n")
        print("to stderr", file=sys.stderr)
        sys.stdout.write("unfinished")  # handed on when the thread leaves the route
    with installed():
        print("not routed")
    assert [(line.stream, line.text) for line in lines] == [
        ("stdout", "one"),
        ("stdout", "two, in pieces"),
        ("stdout", "three"),
        ("stderr", "to stderr"),
        ("stdout", "unfinished"),
    ]
    assert {line.origin for line in lines} == {"task"}
    assert capsys.readouterr().out == "not routed\n"


def test_other_threads_write_through(capsys: pytest.CaptureFixture[str]) -> None:
    lines: list[OutputLine] = []
    with installed(), capture.routed(route_to(lines)):
        thread = threading.Thread(target=print, args=("from another thread",))
        thread.start()
        thread.join()
    assert lines == []
    assert capsys.readouterr().out == "from another thread\n"


def test_lines_are_named_after_the_operator_on_the_stack() -> None:
    class Shout:
        def execute(self, data: str) -> None:
            print(data.upper())

    shout = Shout()
    whisper = lambda data: print(data.lower())  # noqa: E731
    lines: list[OutputLine] = []
    route = route_to(
        lines,
        [("map 'Shout' 1/2", shout, shout.execute), ("sink 'w' 2/2", None, whisper)],
        fallback="chain",
    )
    with installed(), capture.routed(route):
        shout.execute("a")
        whisper("B")
        print("neither")
    assert [(line.origin, line.text) for line in lines] == [
        ("map 'Shout' 1/2", "A"),
        ("sink 'w' 2/2", "b"),
        ("chain", "neither"),
    ]


def test_log_records_of_routed_threads_are_caught() -> None:
    lines: list[OutputLine] = []
    job_logger = logging.getLogger("sage.job.capture_test.map")
    job_logger.setLevel(logging.INFO)
    with installed(), capture.routed(route_to(lines)):
        job_logger.info("job info")
        logging.getLogger("some.library").info("library info: not caught")
        logging.getLogger("some.library").warning("library warning")
    texts = [line.text for line in lines if line.stream == "stderr"]
    assert texts == [
        "INFO sage.job.capture_test.map: job info",
        "WARNING some.library: library warning",
    ]


def test_uninstall_restores_the_streams() -> None:
    before = sys.stdout, sys.stderr
    capture.install()
    capture.install()
    capture.uninstall()
    assert sys.stdout is not before[0]  # still one install left
    capture.uninstall()
    assert (sys.stdout, sys.stderr) == before


class Talk(MapFunction):
    def execute(self, data: int) -> int:
        print(f"saw {data}")
        return data


def test_a_local_job_run_for_someone_else_hands_its_lines_to_its_output(
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = LocalEnvironment("talk")
    env.from_collection(range(4)).map(Talk, parallelism=2).print("got ")
    got: list[OutputLine] = []
    job = LocalJob(env.plan(), env.job_config, publish=False, output=got.extend)
    job.start()
    job.wait(30)
    by_origin: dict[str, set[str]] = {}
    for line in got:
        by_origin.setdefault(line.origin, set()).add(line.text)
    assert by_origin == {
        "map 'Talk' 1/2": {"saw 0", "saw 2"},
        "map 'Talk' 2/2": {"saw 1", "saw 3"},
        "sink 'print' 1/1": {"got 0", "got 1", "got 2", "got 3"},
    }
    assert capsys.readouterr().out == ""  # nothing leaked to this process's output


def test_a_local_environment_prints_where_it_runs(capsys: pytest.CaptureFixture[str]) -> None:
    env = LocalEnvironment("plain")
    env.from_collection([1, 2]).print()
    env.submit()
    assert capsys.readouterr().out.splitlines() == ["1", "2"]


class _ConsoleHandler(logging.Handler):
    """Writes records to whatever ``sys.stdout`` is when they come (as Rich's handler does)."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stdout.write(f"console: {record.getMessage()}\n")


def test_a_console_log_handler_does_not_catch_a_record_twice(
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines: list[OutputLine] = []
    console = _ConsoleHandler()
    library = logging.getLogger("some.other.library")
    library.addHandler(console)
    try:
        with installed(), capture.routed(route_to(lines)):
            library.warning("once")
    finally:
        library.removeHandler(console)
    assert [line.text for line in lines] == ["WARNING some.other.library: once"]
    assert capsys.readouterr().out == "console: once\n"  # where it went before
