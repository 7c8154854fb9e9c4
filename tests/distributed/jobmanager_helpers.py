"""Shared by the JobManager tests: an in-process JobManager running jobs on local threads."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sage.kernel.api.base_environment import Job
from sage.kernel.jobmanager.factories import JobFactory, LocalJobFactory, LogFn
from sage.kernel.jobmanager.protocol import Submission
from sage.kernel.jobmanager.server import JobManagerServer
from sage.kernel.jobmanager.token import TOKEN_ENV
from sage.kernel.runtime.output import OutputSink


class CountingFactory(LocalJobFactory):
    """Runs jobs on threads of this process and remembers every submission it was given."""

    def __init__(self) -> None:
        self.calls: list[Submission] = []

    def __call__(self, submission: Submission, log: LogFn, output: OutputSink) -> Job:
        self.calls.append(submission)
        return super().__call__(submission, log, output)


def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``$SAGE_HOME`` (so a fresh token file) for one test."""
    home = tmp_path / "sage"
    monkeypatch.setenv("SAGE_HOME", str(home))
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    return home


@contextmanager
def running_jobmanager(factory: JobFactory | None = None) -> Iterator[JobManagerServer]:
    """A JobManager on a free loopback port, stopped (its jobs cancelled) afterwards."""
    with JobManagerServer(job_factory=factory or CountingFactory(), port=0) as server:
        yield server


class Armed:
    """Unpickling this creates ``marker``: proof that a body was (or was not) decoded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (Path.touch, (self.marker,))
