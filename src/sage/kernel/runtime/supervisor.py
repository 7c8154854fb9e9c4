"""A job's attempts under its restart strategy: the one loop both runtimes run.

A runtime (:class:`~sage.kernel.runtime.local.executor.LocalJob`,
:class:`~sage.kernel.runtime.ray.executor.RayJob`) knows how to start an attempt of its
tasks, wait for it, and release it; :class:`Supervisor` decides what happens between
attempts, the same way on both: a finished attempt commits and ends the job; a failed one
is followed, as the strategy allows and after its delay, by a new attempt from the latest
checkpoint; a cancel at any point (during an attempt, or during the delay before the next)
ends the job with :class:`~sage.common.errors.JobCancelledError`, whose ``__cause__`` is the
failure it interrupted, if any.
"""

from __future__ import annotations

import threading
from time import monotonic
from typing import Protocol

from sage.common.errors import JobCancelledError
from sage.kernel.checkpoint.restart import RestartsExhaustedError, RestartStrategy
from sage.kernel.checkpoint.store import Checkpoint

__all__ = ["Attempts", "Supervisor"]


class Attempts(Protocol):
    """What a runtime does for the supervisor (each call from the supervising thread)."""

    def await_attempt(self) -> BaseException | None:
        """Block until the current attempt ended; its error (``None``: it finished)."""

    def commit(self) -> None:
        """The attempt finished: let the job's sinks commit (its final checkpoint)."""

    def end_attempt(self) -> None:
        """Release the failed attempt's tasks (before the next one starts)."""

    def latest_checkpoint(self) -> Checkpoint | None:
        """The checkpoint the next attempt resumes from (``None``: the start)."""

    def start_attempt(self, restore: Checkpoint | None) -> None:
        """Build and start a new attempt, resumed from ``restore``."""

    def log(self, line: str) -> None:
        """Report an event of the job (its log; a warning for a restart)."""


class Supervisor:
    """Runs a job's attempts (see the module docstring).

    Args:
        name: The job's name (for errors).
        attempts: The runtime's side.
        strategy: The restart strategy (``None``: a failed attempt fails the job).
    """

    def __init__(self, name: str, attempts: Attempts, strategy: RestartStrategy | None) -> None:
        self.name = name
        self.attempts = attempts
        self.strategy = strategy
        self.restarts = 0
        self.cancelled = threading.Event()
        self.waiting_to_restart = threading.Event()
        """Set while the supervisor waits out the strategy's delay before a restart."""

    def cancel(self) -> None:
        """End the job: no further attempt starts, a delay before one is cut short."""
        self.cancelled.set()

    def _cancelled(self, interrupted: BaseException | None) -> JobCancelledError:
        if isinstance(interrupted, JobCancelledError):
            return interrupted
        error = JobCancelledError(f"job {self.name!r} was cancelled")
        error.__cause__ = interrupted
        return error

    def supervise(self) -> BaseException | None:
        """Run attempts until one finishes, the strategy gives up or the job is cancelled.

        Returns:
            The job's error: ``None`` (finished), the failure (no strategy),
            :class:`RestartsExhaustedError` (the strategy gave up, caused by the last
            failure), :class:`JobCancelledError` (cancelled), or what starting an attempt
            raised.
        """
        attempts, strategy = self.attempts, self.strategy
        while True:
            error = attempts.await_attempt()
            if error is None:
                attempts.commit()
                return None
            if self.cancelled.is_set():
                return self._cancelled(error)
            if strategy is None:
                return error
            delay = strategy.on_failure(monotonic())
            if delay is None:
                return RestartsExhaustedError.of(self.name, self.restarts, strategy, error)
            attempts.end_attempt()
            latest = attempts.latest_checkpoint()
            attempts.log(
                f"restarting in {delay:.3g}s from "
                f"{'the start' if latest is None else f'checkpoint {latest.id}'} "
                f"(restart {self.restarts + 1}, {strategy.describe()}) after: "
                f"{type(error).__name__}: {error}"
            )
            self.waiting_to_restart.set()
            try:
                if self.cancelled.wait(delay):  # the strategy's delay, cut short by a cancel
                    return self._cancelled(error)
            finally:
                self.waiting_to_restart.clear()
            self.restarts += 1
            try:
                attempts.start_attempt(latest)
            except Exception as exc:
                return exc
