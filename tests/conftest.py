"""Shared fixtures of the whole test suite."""

from __future__ import annotations

import logging
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


def _ours(handler: logging.Handler) -> bool:
    return not type(handler).__module__.startswith("_pytest")


@pytest.fixture(scope="session")
def root_logging_at_start() -> tuple[list[logging.Handler], int]:
    """The root logger's own handlers and level before any test ran."""
    root = logging.getLogger()
    return [h for h in root.handlers if _ours(h)], root.level


@pytest.fixture(autouse=True)
def root_logging_restored(
    root_logging_at_start: tuple[list[logging.Handler], int],
) -> Iterator[None]:
    """Handlers a test's CLI call configured on the root logger (``basicConfig(force=True)``
    with a console handler, say) are gone after it, so no later test sees their output.
    The root goes back to how the session found it, so a handler added by a module-scoped
    fixture (set up before this fixture looks) goes too. pytest's own capturing handlers
    come and go with each phase: they are left to it."""
    yield
    handlers, level = root_logging_at_start
    root = logging.getLogger()
    for handler in [h for h in root.handlers if _ours(h) and h not in handlers]:
        root.removeHandler(handler)
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)
