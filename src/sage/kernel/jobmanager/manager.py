"""The JobManager itself: it runs submitted jobs, each on a thread of its own, through a job
factory, and remembers them."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

from sage.common.errors import JobCancelledError, JobError
from sage.kernel.jobmanager.collected import pump
from sage.kernel.jobmanager.factories import JobFactory, RayJobFactory
from sage.kernel.jobmanager.managed import ManagedJob
from sage.kernel.jobmanager.protocol import (
    Submission,
)
from sage.kernel.runtime.collect import collecting_tasks
from sage.kernel.runtime.metrics import JobMetrics

if TYPE_CHECKING:
    from sage.kernel.api.base_environment import Job

__all__ = ["MAX_HISTORY", "MAX_LOG_LINES", "JobManager"]

logger = logging.getLogger(__name__)

MAX_HISTORY = 1_000
MAX_LOG_LINES = 10_000
_TRACEBACK_LINES = 40  # of a failed job's traceback, kept in its log
_SHUTDOWN_GRACE_S = 30.0  # for cancelled jobs to end when the server stops
_PUMP_GRACE_S = 30.0  # for an ended job's collected records to be taken from it


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "-", name.lower()).strip("-")[:40] or "job"


def _apply(job: Job, action: str) -> None:
    """Ask ``job`` to stop gracefully (without waiting) or to end now."""
    if action == "stop":
        # The job's own thread is waiting on it and records the outcome; stop(0) only asks.
        with contextlib.suppress(Exception):
            job.stop(0)
        return
    cancel = getattr(job, "cancel", None)
    if callable(cancel):
        cancel()
    else:
        job.close()


class JobManager:
    """Runs submitted jobs and remembers them.

    Args:
        job_factory: Builds each job (default: :class:`RayJobFactory` on ``ray_address``).
        ray_address: The Ray cluster for the default factory.
        max_history: Ended jobs kept for ``list``/``info``/``logs`` (oldest dropped first;
            running jobs are always kept).
        max_log_lines: Lines kept per job's log.
    """

    def __init__(
        self,
        job_factory: JobFactory | None = None,
        *,
        ray_address: str | None = None,
        max_history: int = MAX_HISTORY,
        max_log_lines: int = MAX_LOG_LINES,
    ) -> None:
        self.factory: JobFactory = job_factory or RayJobFactory(ray_address)
        self.max_history = max_history
        self.max_log_lines = max_log_lines
        self._jobs: dict[str, ManagedJob] = {}
        self._lock = threading.Lock()
        self._closing = False

    @property
    def runtime(self) -> str:
        """What runs the jobs (for ``/v1/health``)."""
        description = getattr(self.factory, "description", None)
        return str(description) if description else f"custom ({type(self.factory).__name__})"

    def _new_id(self, name: str) -> str:
        while True:
            job_id = f"{_slug(name)}-{secrets.token_hex(3)}"
            if job_id not in self._jobs:
                return job_id

    def submit(self, submission: Submission) -> ManagedJob:
        """Start running ``submission`` on a thread of its own; return its record at once.

        Raises:
            RuntimeError: the JobManager is shutting down.
        """
        with self._lock:
            if self._closing:
                raise RuntimeError("the JobManager is shutting down; submit to another one")
            entry = ManagedJob(self._new_id(submission.name), submission, self.max_log_lines)
            plan = submission.plan
            entry.log(
                f"submitted {entry.job_id}: {len(plan.nodes)} operators in {len(plan.tasks)} "
                f"tasks, {len(submission.services)} services, autostop={submission.autostop}"
            )
            entry.thread = threading.Thread(
                target=self._run, args=(entry,), name=f"sage-jobmanager-{entry.job_id}", daemon=True
            )
            self._jobs[entry.job_id] = entry
            # started under the lock: shutdown() sees every job with its thread running
            entry.thread.start()
        logger.info("job %s submitted", entry.job_id)
        return entry

    def _run(self, entry: ManagedJob) -> None:
        """The job's thread: build, start, wait for the end, record it."""
        job: Job | None = None
        error: BaseException | None = None
        pumping: threading.Thread | None = None
        try:
            job = self.factory(entry.submission, entry.log, entry.add_output)
            if not entry._attach(job):
                raise JobCancelledError(f"job {entry.job_id!r} was cancelled before it started")
            job.start()
            entry.log("started")
            pumping = self._start_pump(entry, job)
            pending = entry._mark_started()
            if pending is not None:
                _apply(job, pending)
            job.wait()
        except BaseException as exc:  # the job's outcome, whatever it is, is recorded
            error = exc
        finally:
            entry.chunks.close()  # the pump takes what is left, without waiting for room
            if pumping is not None:
                pumping.join(_PUMP_GRACE_S)
                if pumping.is_alive():
                    logger.warning("job %s: its collected records were not all taken", entry.job_id)
            if job is not None:
                try:
                    job.close()
                except Exception:
                    logger.exception("job %s: close() failed", entry.job_id)
        if error is None:
            entry.log("finished")
        else:
            entry.log(
                f"{'cancelled' if isinstance(error, JobCancelledError) else 'failed'}: "
                f"{type(error).__name__}: {error}"
            )
            if not isinstance(error, JobCancelledError):
                lines = "".join(traceback.format_exception(error)).rstrip().splitlines()
                entry.log("\n".join(lines[-_TRACEBACK_LINES:]))
        entry._finish(error)
        logger.info("job %s %s", entry.job_id, entry.status)
        self._prune()

    def _start_pump(self, entry: ManagedJob, job: Job) -> threading.Thread | None:
        """For a job that collects, start the thread that takes its records (see
        :mod:`.collected`); ``None`` for one that does not."""
        if not collecting_tasks(entry.submission.plan):
            return None
        take = getattr(job, "collected", None)
        if not callable(take):
            raise JobError(
                f"job {entry.job_id!r} ends in collect(), but its runtime "
                f"({type(job).__name__}) cannot hand collected records over"
            )

        def failed(exc: BaseException) -> None:
            entry.log(f"taking its collected records failed: {type(exc).__name__}: {exc}")
            _apply(job, "cancel")

        thread = threading.Thread(
            target=pump,
            args=(entry.chunks, take, failed),
            name=f"sage-jobmanager-{entry.job_id}-collect",
            daemon=True,
        )
        thread.start()
        return thread

    def _prune(self) -> None:
        with self._lock:
            ended = [e for e in self._jobs.values() if e.is_ended]
            for entry in ended[: max(len(ended) - self.max_history, 0)]:
                entry.chunks.clear()
                del self._jobs[entry.job_id]

    def get(self, job_id: str) -> ManagedJob:
        """The job ``job_id``.

        Raises:
            KeyError: no such job (never submitted, or dropped from the history).
        """
        with self._lock:
            return self._jobs[job_id]

    def jobs(self) -> list[ManagedJob]:
        """Every job kept, oldest first."""
        with self._lock:
            return list(self._jobs.values())

    def stop(self, job_id: str) -> ManagedJob:
        """Ask the job to stop gracefully: sources end, records in flight reach the sinks.
        Returns at once; the job ends later (may block briefly on a remote runtime)."""
        return self._control(job_id, "stop")

    def cancel(self, job_id: str) -> ManagedJob:
        """End the job now, dropping records in flight; it ends as ``cancelled``."""
        return self._control(job_id, "cancel")

    def _control(self, job_id: str, action: str) -> ManagedJob:
        entry = self.get(job_id)
        job = entry._request(action)
        if job is not None:
            _apply(job, action)
        entry.log(f"{action} requested")
        return entry

    def metrics(self, job_id: str) -> dict[str, Any]:
        """The job's metrics (``JobMetrics.to_dict()``); empty until the job is built."""
        entry = self.get(job_id)
        job = entry.job
        if job is None:
            info = entry.info()
            return JobMetrics(entry.name, info.status, info.elapsed_s, (), ()).to_dict()
        return job.metrics().to_dict()

    def dead_letters(self, job_id: str) -> dict[str, Any]:
        """The job's dead letters as JSON objects (``DeadLetter.to_json``), in order."""
        job = self.get(job_id).job
        letters = [] if job is None else job.dead_letters
        return {"dead_letters": [json.loads(letter.to_json()) for letter in letters]}

    def shutdown(self, grace_s: float = _SHUTDOWN_GRACE_S) -> None:
        """Refuse new jobs, cancel the running ones, wait (up to ``grace_s``) for their
        threads to end, then close the factory (leaving the Ray cluster)."""
        with self._lock:
            self._closing = True
            entries = list(self._jobs.values())
        for entry in entries:
            if not entry.is_ended:
                try:
                    self.cancel(entry.job_id)
                except Exception:
                    logger.exception("job %s: cancel failed during shutdown", entry.job_id)
        deadline = time.monotonic() + grace_s
        for entry in entries:
            if entry.thread is not None:
                entry.thread.join(max(deadline - time.monotonic(), 0))
                if entry.thread.is_alive():
                    logger.warning(
                        "job %s did not end within %.0f s of being cancelled (stuck in user "
                        "code?); leaving it behind",
                        entry.job_id,
                        grace_s,
                    )
        close = getattr(self.factory, "close", None)
        if callable(close):
            try:
                close()
            except Exception:
                logger.exception("closing the job runtime failed")
