"""Shared fixtures of the whole test suite."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_job_threads_left() -> Iterator[None]:
    """Every test must leave no SAGE job thread running behind it.

    Threads that were already running when the test started belong to wider-scoped fixtures
    (a module's shared servers) and are theirs to stop.
    """
    before = set(threading.enumerate())
    yield
    alive = [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("sage-") and t.is_alive() and t not in before
    ]
    assert not alive, f"job threads still alive after the test: {alive}"
