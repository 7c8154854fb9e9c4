"""What runs the JobManager's jobs: a *job factory* builds the job of a submission, on Ray
(:class:`RayJobFactory`, the default) or on threads of the JobManager's process
(:class:`LocalJobFactory`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from sage.kernel.config import JobConfig
from sage.kernel.jobmanager.protocol import (
    Submission,
)
from sage.kernel.runtime.output import OutputSink

if TYPE_CHECKING:
    from sage.kernel.api.base_environment import Job

__all__ = ["JobFactory", "LocalJobFactory", "LogFn", "RayJobFactory"]

logger = logging.getLogger(__name__)

LogFn = Callable[[str], None]
"""Appends one line to a job's log (what ``sage job logs`` shows)."""


_SHUTDOWN_GRACE_S = 30.0  # for the cluster connection's thread to end


class JobFactory(Protocol):
    """Builds (does not start) the job for a submission.

    The JobManager then calls, from its own threads: ``start()``; ``wait()`` (blocks until
    the end, raising the job's error); ``stop(0)`` to request a graceful stop without waiting;
    ``cancel()`` (or ``close()`` when the job has none) to end it now; ``metrics()``; and
    ``close()`` once it ended. For a pipeline that ends in ``collect()``, the job must have
    ``collected(max_records, timeout)`` (see ``LocalJob.collected``), which the JobManager
    calls from a thread of its own until it returns ``None``.

    ``log`` appends a line to the job's log; ``output`` appends the lines its functions
    printed and logged (the job's runtime catches them where they run).

    A factory may have a ``description`` attribute (a string): what ``/v1/health`` reports
    as the runtime; and a ``close()`` method, called once when the JobManager shuts down.
    """

    def __call__(self, submission: Submission, log: LogFn, output: OutputSink) -> Job: ...


class LocalJobFactory:
    """Runs jobs on threads of the JobManager's own process (no Ray).

    For tests and benchmarks of the JobManager, and for single-machine use: the functions
    run where the JobManager runs, and share its interpreter lock.
    """

    description = "local (threads of the JobManager process)"

    def __call__(self, submission: Submission, log: LogFn, output: OutputSink) -> Job:
        from sage.kernel.runtime.local.executor import LocalJob

        # the dashboard reads this JobManager's jobs from it, not from a publisher
        return LocalJob(
            submission.plan,
            JobConfig.from_mapping(submission.config),
            submission.services,
            publish=False,
            output=output,
        )


class RayJobFactory:
    """Runs jobs on a Ray cluster: tasks and services as actors (the default).

    Ray is imported, and the cluster joined, when the first job arrives, so a JobManager
    starts in a moment and one that never runs a job never starts Ray.

    Args:
        address: The cluster to join (``"auto"``, ``"ray://head:10001"``...). ``None``: the
            ``ray.address`` of the first submission's config, else a new local cluster.
    """

    def __init__(self, address: str | None = None) -> None:
        self.address = address
        self._connected: str | None = None
        self._lock = threading.Lock()
        self._owner: threading.Thread | None = None
        self._release = threading.Event()

    @property
    def description(self) -> str:
        """The cluster, once joined; before that, where it will connect."""
        if self._connected is not None:
            return self._connected
        target = self.address or "its ray.address, else to a new local cluster"
        return f"ray (not connected yet: the first job connects to {target})"

    def _connect(self, address: str | None) -> str:
        """Join the cluster from a thread that lives until :meth:`close`.

        Not from the job's thread: a local cluster's processes (GCS, raylet) are started
        with ``PR_SET_PDEATHSIG``, which Linux delivers when the *thread* that started them
        exits, so they would die with the first job.
        """
        import ray

        from sage.kernel.runtime.ray.cluster import connect, disconnect

        outcome: list[str | BaseException] = []
        connected = threading.Event()
        joined_here = not ray.is_initialized()  # else this process's owner disconnects

        def own() -> None:
            try:
                outcome.append(str(connect(address)))
            except BaseException as exc:  # handed to the job that asked
                outcome.append(exc)
                return
            finally:
                connected.set()
            self._release.wait()
            if joined_here:
                disconnect()

        self._owner = threading.Thread(target=own, name="sage-jobmanager-ray", daemon=True)
        self._owner.start()
        connected.wait()
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    def close(self) -> None:
        """Leave the cluster if this factory joined it (and stop the local one, if it
        started it)."""
        with self._lock:
            if self._owner is not None:
                self._release.set()
                self._owner.join(_SHUTDOWN_GRACE_S)
                self._owner = None
                self._connected = None

    def __call__(self, submission: Submission, log: LogFn, output: OutputSink) -> Job:
        with self._lock:
            if self._connected is None:
                ray = submission.config.get("ray")
                address = self.address or (ray.get("address") if isinstance(ray, dict) else None)
                log(f"connecting to Ray ({address or 'a new local cluster'})")
                self._connected = self._connect(address)
                log(f"connected: {self._connected}")
        from sage.kernel.runtime.ray.executor import RayJob

        job: Job = RayJob(
            submission.plan,
            JobConfig.from_mapping(submission.config),
            submission.services,
            log=log,
            output=output,
        )
        return job
