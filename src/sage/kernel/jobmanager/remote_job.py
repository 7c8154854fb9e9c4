"""``RemoteJob``: a job running on a JobManager, with the life cycle of a local one.

``RemoteEnvironment.submit`` returns one. Each method is a call to the JobManager
(:class:`~.client.JobManagerClient`); the job itself runs there (on Ray by default), so
its functions' side effects (sinks, files) happen where it runs. What comes back while
``wait`` (or ``run``) waits: the lines its functions print and log, written to this
process's stdout and stderr prefixed with their operator instance (as Ray does with its
workers' output), and the records of its ``collect()`` operators, into their results.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sage.common.errors import JobError
from sage.kernel.graph.plan import PhysicalPlan
from sage.kernel.jobmanager.client import JobManagerClient
from sage.kernel.jobmanager.protocol import (
    MAX_WAIT_S,
    JobInfo,
    LogPage,
    OutputPage,
    Submission,
    metrics_from_dict,
    rebuild_error,
)
from sage.kernel.runtime.error_policy import DeadLetter
from sage.kernel.runtime.metrics import JobMetrics
from sage.kernel.runtime.output import echo_line
from sage.kernel.runtime.status import JobStatus
from sage.kernel.services.spec import ServiceSpec

if TYPE_CHECKING:
    from sage.kernel.api.collect import CollectResult

__all__ = ["RemoteJob"]

logger = logging.getLogger(__name__)

_CLOSE_GRACE_S = 10.0  # close() waits this long for a cancelled job to end


class RemoteJob:
    """A compiled pipeline submitted to a JobManager.

    ``start()`` submits it and returns; ``run()`` submits it and waits for its end (the
    client's ``autostop``). ``wait``, ``stop`` and ``close`` behave as on a local job, and
    ``wait``/``run`` raise the job's error rebuilt on this side (an ``OperatorError``
    names the operator, instance and phase; the failing record stays in the job's log).

    While ``wait`` waits it follows the job: the lines its functions write are echoed
    here, and the records of its ``collect()`` operators fill their results. A job that
    collects waits for this (the JobManager holds a few megabytes of its records, no more):
    after ``submit(autostop=False)``, call ``wait()`` or ``stop()`` to take them.

    Args:
        client: The JobManager to run on (the job closes it on :meth:`close`).
        name: The environment's name.
        plan: The compiled pipeline.
        config: The environment's config mapping.
        services: The registered services.
        collect_results: What each ``collect()`` of the pipeline returned, by collector id.
        log_to_driver: Echo what the job's functions print and log to this process's
            stdout and stderr (it is in the job's log either way).
    """

    def __init__(
        self,
        client: JobManagerClient,
        name: str,
        plan: PhysicalPlan,
        config: dict[str, Any],
        services: list[ServiceSpec],
        *,
        collect_results: Mapping[str, CollectResult] | None = None,
        log_to_driver: bool = True,
    ) -> None:
        self.client = client
        self.name = name
        self.plan = plan
        self._config = config
        self._services = services
        self._info: JobInfo | None = None
        self._closed = False
        self._log_to_driver = log_to_driver
        self._results = {cid: r._restart() for cid, r in (collect_results or {}).items()}
        self._next_line = 0 if log_to_driver else -1  # the job's log, read up to here
        self._next_chunk = 0  # its collected chunks, taken up to here

    def __repr__(self) -> str:
        where = self.client.address
        return f"RemoteJob({self.job_id or self.name!r} on {where}, {self.status.value})"

    @property
    def job_id(self) -> str | None:
        """The JobManager's id for the job (``None`` before it was submitted)."""
        return None if self._info is None else self._info.job_id

    @property
    def info(self) -> JobInfo | None:
        """What the JobManager last said about the job."""
        return self._info

    def _info_ended(self) -> bool:
        """Whether the job is known to have ended (its info then never changes)."""
        return self._info is not None and self._info.ended

    def _id(self) -> str:
        if self._info is None:
            raise JobError(f"job {self.name!r} has not been started")
        return self._info.job_id

    # -- life cycle -------------------------------------------------------------------

    def _submit(self, autostop: bool) -> None:
        if self._info is not None:
            raise JobError(f"job {self.name!r} was already started (as {self._info.job_id})")
        submission = Submission(self.name, self.plan, self._config, self._services, autostop)
        self._info = self.client.submit(submission)
        logger.info(
            "job %s submitted to the JobManager at %s", self._info.job_id, self.client.address
        )

    def start(self) -> RemoteJob:
        """Submit the job and return at once (``submit(autostop=False)``)."""
        self._submit(autostop=False)
        return self

    def run(self) -> None:
        """Submit the job and wait for its end (``submit(autostop=True)``).

        Raises:
            Like :meth:`wait`.
        """
        self._submit(autostop=True)
        self.wait()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ended.

        Returns:
            ``True`` if it ended, ``False`` if ``timeout`` passed first.

        Raises:
            OperatorError: user code failed (names operator, instance and phase).
            JobCancelledError: the job was cancelled.
            JobError: the job failed otherwise, or the JobManager cannot be reached.
        """
        if not self._info_ended():
            self._follow(timeout)
        assert self._info is not None
        if not self._info.ended:
            return False
        if self._info.error is not None:
            raise rebuild_error(self._info.error)
        return True

    def _follow(self, timeout: float | None) -> None:
        """Take the job's output (lines, collected records) until it ended or ``timeout``
        seconds passed; :attr:`info` is then up to date."""
        job_id = self._id()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = MAX_WAIT_S if deadline is None else deadline - time.monotonic()
            page = self.client.output(
                job_id, self._next_line, self._next_chunk, wait=max(min(left, MAX_WAIT_S), 0.0)
            )
            self._take(job_id, page)
            if page.info.ended:
                if page.chunks:  # say they were taken, so the JobManager lets them go
                    self.client.output(job_id, self._next_line, self._next_chunk)
                return
            if deadline is not None and time.monotonic() >= deadline:
                return

    def _take(self, job_id: str, page: OutputPage) -> None:
        """Echo the page's lines, add its records to their results, move the indexes on."""
        self._info = page.info
        first = page.next_line - len(page.entries)
        if self._log_to_driver:  # else it asked for no lines (-1)
            if first > self._next_line:
                sys.stderr.write(
                    f"(sage) {first - self._next_line} line(s) of job {job_id}'s output were "
                    "dropped: the JobManager keeps the latest lines of a job's log only\n"
                )
            for entry in page.entries:
                if entry.origin is None:  # the JobManager's own line about the job
                    logger.debug("job %s: %s", job_id, entry.text)
                    continue
                echo_line(entry.origin, entry.stream or "stdout", entry.text)
        self._next_line = page.next_line
        for chunk in page.chunks:
            if chunk.seq < self._next_chunk:
                continue  # already taken (a repeated answer)
            if chunk.seq != self._next_chunk:
                raise JobError(
                    f"job {job_id}: collected chunk {chunk.seq} came while {self._next_chunk} "
                    "was expected; records would be missing, so the job's results are incomplete"
                )
            records = self.client.records(job_id, chunk)
            target = self._results.get(chunk.collector)
            if target is None:
                raise JobError(
                    f"job {job_id}: records came for an unknown collect {chunk.collector!r}"
                )
            target.extend(records)
            self._next_chunk = chunk.seq + 1

    def stop(self, timeout: float | None = None) -> bool:
        """End the job gracefully (sources stop, records in flight reach the sinks) and
        wait for it; returns and raises like :meth:`wait`."""
        self._info = self.client.stop(self._id())
        return self.wait(timeout)

    def cancel(self) -> None:
        """End the job now, dropping records in flight; ``wait`` then raises
        ``JobCancelledError``."""
        self._info = self.client.cancel(self._id())

    def close(self) -> None:
        """Cancel the job if it still runs, then release the connection; never raises."""
        try:
            if self._info is not None and not self._info.ended:
                self._info = self.client.cancel(self._info.job_id)
                self._info = self.client.wait(self._info.job_id, _CLOSE_GRACE_S)
        except Exception as exc:  # close() runs on error paths: never mask the first error
            logger.warning("job %s: could not cancel it on close: %s", self.job_id, exc)
        finally:
            self._closed = True
            self.client.close()

    # -- observation ------------------------------------------------------------------

    @property
    def status(self) -> JobStatus:
        """The job's state (asks the JobManager until the job has ended; after
        :meth:`close`, the last state known).

        Raises:
            JobError: the JobManager cannot be reached.
        """
        if self._info is None:
            return JobStatus.CREATED
        if not self._info.ended and not self._closed:
            self._info = self.client.info(self._info.job_id)
        return JobStatus(self._info.status)

    def metrics(self) -> JobMetrics:
        """Per-operator and per-task metrics, as the JobManager reports them."""
        return metrics_from_dict(self.client.metrics(self._id()))

    def logs(self, since: int = 0) -> LogPage:
        """The job's log on the JobManager (submission, start, end, errors with traceback)."""
        return self.client.logs(self._id(), since)

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """Records kept by ``on_error="dead_letter"``, fetched from the JobManager (each
        record as JSON, or its ``repr`` where it is not JSON); empty before the start."""
        if self._info is None:
            return []
        return [DeadLetter(**letter) for letter in self.client.dead_letters(self._info.job_id)]
