"""Fixtures of the dashboard tests: an isolated ``$SAGE_HOME``, a dashboard, a running job."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sage.dashboard.server import DashboardServer

PIPELINE = Path(__file__).with_name("running_pipeline.py")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's ``$SAGE_HOME``: no dashboard, JobManager or LLM stack but its own."""
    monkeypatch.setenv("SAGE_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def dashboard(home: Path) -> Iterator[DashboardServer]:
    with DashboardServer(port=0) as server:
        assert server.wait_sampled(30)
        yield server


class RunningJob:
    """A user's script running a pipeline in its own process until :meth:`finish`."""

    def __init__(self, name: str, home: Path) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, str(PIPELINE), name],
            env={**os.environ, "SAGE_HOME": str(home)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "running"

    def finish(self) -> int:
        assert self.process.stdin is not None
        if not self.process.stdin.closed:
            self.process.stdin.close()
        return self.process.wait(60)


@pytest.fixture
def running_job(home: Path, dashboard: DashboardServer) -> Iterator[RunningJob]:
    job = RunningJob("clicks-e2e", home)
    try:
        yield job
    finally:
        if job.process.poll() is None:
            job.finish()
