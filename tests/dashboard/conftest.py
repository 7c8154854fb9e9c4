"""Fixtures of the dashboard tests: an isolated ``$SAGE_HOME``, a dashboard, a running job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_helpers import RunningJob

from sage.dashboard.server import DashboardServer


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


@pytest.fixture
def running_job(home: Path, dashboard: DashboardServer) -> Iterator[RunningJob]:
    job = RunningJob("clicks-e2e", home)
    try:
        yield job
    finally:
        if job.process.poll() is None:
            job.finish()
