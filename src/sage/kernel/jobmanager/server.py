"""The JobManager: a long-running server that runs the jobs of ``RemoteEnvironment`` clients.

Three layers, each usable alone:

* :class:`JobManager` keeps the jobs: one thread per job starts it, waits for its end and
  records the outcome; per-job logs in a bounded ring (the JobManager's lines about the job
  and what its functions print and log); the records of its ``collect()`` operators until
  the submitter takes them (:mod:`.collected`); a bounded history of ended jobs. It
  runs each job through a *job factory*: :class:`RayJobFactory` (the default: tasks and
  services as Ray actors) or :class:`LocalJobFactory` (threads of this process; for tests,
  benchmarks and single-machine use).
* :class:`JobManagerServer` serves a ``JobManager`` over HTTP (the endpoints of
  :mod:`.protocol`) on SAGE's small asyncio server, in a background thread
  (``start``/``stop``, a context manager) or on the caller's loop (``start_async``).
  Every request must carry the token, checked from the request's head: the body of a
  request without it is not even read.
* :func:`serve` runs a server until SIGTERM/SIGINT, with a state file in
  ``$SAGE_HOME/jobmanager/`` (``sage jobmanager start`` runs it as a process:
  ``python -m sage.kernel.jobmanager``).

Example:
    >>> with JobManagerServer(job_factory=LocalJobFactory(), port=0) as server:  # doctest: +SKIP
    ...     env = RemoteEnvironment("job", port=server.port)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast
from urllib.parse import parse_qs

from sage.common.concurrency import BackgroundServer, run_loop
from sage.common.config.paths import sage_home
from sage.common.config.ports import SagePorts
from sage.common.errors import ConfigError, JobCancelledError, JobError
from sage.common.http.server import HttpError, HttpServer, Request, Response, json_response
from sage.common.observability import prometheus
from sage.common.observability.prometheus import MetricFamily
from sage.common.processes import serve_until_signalled
from sage.kernel.config import JobConfig
from sage.kernel.jobmanager import protocol
from sage.kernel.jobmanager.collected import ChunkStore, pump
from sage.kernel.jobmanager.pickling import loads_submission
from sage.kernel.jobmanager.protocol import (
    ENDED,
    HEALTH_PATH,
    JOBS_PATH,
    MAX_WAIT_S,
    METRICS_PATH,
    Chunk,
    Health,
    JobInfo,
    JobList,
    LogLine,
    LogPage,
    OutputPage,
    Status,
    Submission,
)
from sage.kernel.jobmanager.token import server_token, token_matches
from sage.kernel.runtime.collect import collecting_tasks
from sage.kernel.runtime.exposition import job_families
from sage.kernel.runtime.metrics import JobMetrics
from sage.kernel.runtime.output import OutputLine, OutputSink
from sage.kernel.runtime.status import JobStatus

if TYPE_CHECKING:
    from sage.kernel.api.base_environment import Job

__all__ = [
    "JobFactory",
    "JobManager",
    "JobManagerServer",
    "LocalJobFactory",
    "LogFn",
    "ManagedJob",
    "RayJobFactory",
    "log_file",
    "read_state",
    "serve",
    "state_file",
]

logger = logging.getLogger(__name__)

LogFn = Callable[[str], None]
"""Appends one line to a job's log (what ``sage job logs`` shows)."""

MAX_HISTORY = 1_000
MAX_LOG_LINES = 10_000
MAX_SUBMISSION_BYTES = 256 * 1024 * 1024
_TRACEBACK_LINES = 40  # of a failed job's traceback, kept in its log
_SHUTDOWN_GRACE_S = 30.0  # for cancelled jobs to end when the server stops
_PUMP_GRACE_S = 30.0  # for an ended job's collected records to be taken from it


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


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "-", name.lower()).strip("-")[:40] or "job"


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ManagedJob:
    """One submitted job: its state, log, collected records and waiters (thread-safe).

    The job's threads write (``log``, ``add_output``, the pump's chunks, ``_finish``); HTTP
    handlers read and wait with :meth:`wait_async`, which parks a future that the writer
    resolves, so no thread blocks for a waiting client.
    """

    def __init__(self, job_id: str, submission: Submission, max_log_lines: int) -> None:
        self.job_id = job_id
        self.submission = submission
        self.name = submission.name
        self.submitted_at = time.time()
        self.ended_at: float | None = None
        self.error: BaseException | None = None
        self.job: Job | None = None
        self.thread: threading.Thread | None = None
        self._submitted_mono = time.monotonic()
        self._ended_mono: float | None = None
        self._status: Status = "running"
        self._started = False
        self._requested: str | None = None  # "stop" or "cancel", before the job started
        self._lock = threading.Lock()
        self._lines: deque[LogLine] = deque(maxlen=max_log_lines)
        self._line_count = 0
        self._waiters: list[asyncio.Future[None]] = []
        self.chunks = ChunkStore(self._lock, self._wake)
        """The collected records the submitter has not taken yet."""
        self.ended = threading.Event()

    # -- written by the job's threads -----------------------------------------------------

    def log(self, line: str) -> None:
        """Append the JobManager's ``line`` about the job to its log; wake followers."""
        now = time.time()
        with self._lock:
            for part in str(line).splitlines() or [""]:
                self._lines.append(LogLine(time=now, text=part))
                self._line_count += 1
            self._wake()

    def add_output(self, lines: Sequence[OutputLine]) -> None:
        """Append lines the job's functions wrote to its log; wake followers."""
        with self._lock:
            for line in lines:
                stream: Literal["stdout", "stderr"] = (
                    "stderr" if line.stream == "stderr" else "stdout"
                )
                self._lines.append(
                    LogLine(time=line.time, text=line.text, origin=line.origin, stream=stream)
                )
                self._line_count += 1
            self._wake()

    def _wake(self) -> None:
        """Resolve every parked future (call with the lock held)."""
        for future in self._waiters:
            with contextlib.suppress(RuntimeError):  # its loop has closed: nobody waits
                future.get_loop().call_soon_threadsafe(_resolve, future)
        self._waiters.clear()

    def _attach(self, job: Job) -> bool:
        """Record the built job; ``False`` if it was cancelled before it could start."""
        with self._lock:
            self.job = job
            return self._requested != "cancel"

    def _mark_started(self) -> str | None:
        """Record that the job runs; the stop or cancel asked for meanwhile, if any."""
        with self._lock:
            self._started = True
            return self._requested

    def _finish(self, error: BaseException | None) -> None:
        with self._lock:
            self.error = error
            self.ended_at = time.time()
            self._ended_mono = time.monotonic()
            self._status = cast("Status", JobStatus.at_end(error).value)
            self.ended.set()
            self._wake()

    # -- read by anyone -----------------------------------------------------------------

    @property
    def status(self) -> Status:
        """``running``, ``stopping``, ``finished``, ``failed`` or ``cancelled``."""
        return self._status

    @property
    def is_ended(self) -> bool:
        """Whether the job has ended."""
        return self._status in ENDED

    def info(self) -> JobInfo:
        """The job as the protocol reports it."""
        with self._lock:
            end = self._ended_mono if self._ended_mono is not None else time.monotonic()
            return JobInfo(
                job_id=self.job_id,
                name=self.name,
                status=self._status,
                submitted_at=self.submitted_at,
                ended_at=self.ended_at,
                elapsed_s=round(end - self._submitted_mono, 6),
                error=None if self.error is None else protocol.error_info(self.error),
            )

    def logs(self, since: int = 0) -> LogPage:
        """Lines from index ``since`` on (those still kept), and the next index."""
        with self._lock:
            first = self._line_count - len(self._lines)
            skip = max(since - first, 0)
            lines = list(self._lines)[skip:] if skip < len(self._lines) else []
            return LogPage(entries=lines, next=self._line_count, status=self._status)

    def _has_lines_after(self, since: int) -> bool:
        return self._line_count > since

    async def wait_async(
        self,
        timeout: float,
        *,
        new_lines_after: int | None = None,
        new_chunks_after: int | None = None,
    ) -> None:
        """Wait (on this event loop, blocking no thread) until the job ended, or, with
        ``new_lines_after``, until its log has more lines than that, or, with
        ``new_chunks_after``, until a chunk numbered that or later came; at most ``timeout``
        seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self._lock:
                if (
                    self.is_ended
                    or (new_lines_after is not None and self._has_lines_after(new_lines_after))
                    or (new_chunks_after is not None and self.chunks.has_after(new_chunks_after))
                ):
                    return
                future: asyncio.Future[None] = loop.create_future()
                self._waiters.append(future)
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    return
                await asyncio.wait_for(future, remaining)
            except TimeoutError:
                return
            finally:
                with self._lock:
                    if future in self._waiters:
                        self._waiters.remove(future)

    # -- control ------------------------------------------------------------------------

    def _request(self, action: str) -> Job | None:
        """Note a stop or cancel request; the job to apply it to now (``None``: the job's
        thread applies it once the job has started, or it has ended)."""
        with self._lock:
            if self.is_ended:
                return None
            if action == "cancel" or self._requested is None:
                self._requested = action
            if action == "stop" and self._status == "running":
                self._status = "stopping"
            return self.job if self._started else None


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


def _query(request: Request, name: str, default: float, *, at_least: float = 0) -> float:
    values = parse_qs(request.query).get(name)
    if not values:
        return default
    try:
        value = float(values[-1])
    except ValueError:
        raise HttpError(400, f"{name}={values[-1]!r} is not a number") from None
    if not math.isfinite(value):
        raise HttpError(400, f"{name}={values[-1]!r} is invalid; use a finite number")
    if value < at_least:
        raise HttpError(400, f"{name}={values[-1]!r} is invalid; use a number >= {at_least:g}")
    return value


class JobManagerServer(BackgroundServer):
    """The JobManager's HTTP server (the endpoints of :mod:`.protocol`).

    Args:
        manager: The jobs to serve (default: a new :class:`JobManager` on ``job_factory``).
        job_factory: For a new manager (default: :class:`RayJobFactory`).
        host: Address to listen on; loopback unless you mean to accept other machines
            (the token is then the only protection, and it travels in plain HTTP).
        port: Port (0: any free one; read :attr:`port` after starting).
        token: The token clients must send (default: :func:`~.token.server_token`, which
            creates ``$SAGE_HOME/jobmanager/token`` on first use).
    """

    thread_name = "sage-jobmanager-http"

    def __init__(
        self,
        manager: JobManager | None = None,
        *,
        job_factory: JobFactory | None = None,
        host: str = "127.0.0.1",
        port: int = SagePorts.JOBMANAGER_DEFAULT,
        token: str | None = None,
    ) -> None:
        self.manager = manager or JobManager(job_factory)
        self.host = host
        self.port = port
        self._token = token
        self._http: HttpServer | None = None

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    # -- life cycle -----------------------------------------------------------------------

    async def start_async(self) -> int:
        """Listen on this event loop; return the port.

        Raises:
            OSError: the port is taken.
            ConfigError: the token file is unusable (readable by others, empty).
        """
        if self._token is None:
            self._token = server_token()
        if not _is_loopback(self.host):
            logger.warning(
                "the JobManager listens on %s: anyone who can reach it and holds the token "
                "can run code here, and the token travels unencrypted; prefer 127.0.0.1 "
                "behind an SSH tunnel or a TLS proxy",
                self.host,
            )
        http = HttpServer(
            "sage-jobmanager",
            max_body=MAX_SUBMISSION_BYTES,
            error_body=protocol.error_body,
            authorize=self._authorize,
        )
        http.route("GET", HEALTH_PATH, self._health)
        http.route("GET", METRICS_PATH, self._metrics)
        http.route("GET", JOBS_PATH, self._list)
        http.route("POST", JOBS_PATH, self._submit)
        http.route("GET", JOBS_PATH + "/{job_id}", self._job_get)
        http.route("GET", JOBS_PATH + "/{job_id}/{action}", self._job_get)
        http.route("POST", JOBS_PATH + "/{job_id}/{action}", self._job_post)
        self.port = await http.start(self.host, self.port)
        self._http = http
        logger.info(
            "JobManager listening on %s:%s (runtime: %s)",
            self.host,
            self.port,
            self.manager.runtime,
        )
        return self.port

    async def stop_async(self) -> None:
        """Refuse new jobs, cancel the running ones (clients waiting on them are answered),
        then stop listening and close connections."""
        if self._http is None:
            return
        await asyncio.get_running_loop().run_in_executor(None, self.manager.shutdown)
        await self._http.close()
        self._http = None

    # -- handlers -------------------------------------------------------------------------

    def _authorize(self, method: str, path: str, headers: Mapping[str, str]) -> HttpError | None:
        """The token check, on every request (``/v1/health`` and unknown paths too), made on
        the request's head: a request without the token is answered 401 and its body is
        not read, let alone decoded."""
        header = headers.get("authorization", "")
        given = header[7:].strip() if header[:7].lower() == "bearer " else None
        assert self._token is not None
        if token_matches(given, self._token):
            return None
        return HttpError(
            401,
            "missing or wrong JobManager token: send 'Authorization: Bearer <token>' "
            "with the token from the JobManager's token file (or its "
            "SAGE_JOBMANAGER_TOKEN)",
        )

    def _entry(self, job_id: str) -> ManagedJob:
        try:
            return self.manager.get(job_id)
        except KeyError:
            raise HttpError(
                404,
                f"no job {job_id!r} on this JobManager (ended jobs beyond the last "
                f"{self.manager.max_history} are forgotten); see `sage job list`",
            ) from None

    async def _health(self, request: Request) -> Response:
        health = Health(jobs=len(self.manager.jobs()), runtime=self.manager.runtime)
        return json_response(health)

    async def _metrics(self, request: Request) -> Response:
        """Prometheus text: jobs by status, then every job's operators and services (the
        names of :mod:`sage.kernel.runtime.exposition`). Scrapers send the token too."""
        body = await asyncio.get_running_loop().run_in_executor(None, self._exposition)
        return Response(body=body, content_type=prometheus.CONTENT_TYPE)

    def _exposition(self) -> bytes:
        entries = self.manager.jobs()
        by_status = MetricFamily("sage_jobmanager_jobs", "gauge", "Jobs known, by status.")
        counts = {status: 0 for status in ("running", "stopping", "finished", "failed")}
        counts["cancelled"] = 0
        rows = []
        for entry in entries:
            info = entry.info()
            counts[str(info.status)] = counts.get(str(info.status), 0) + 1
            try:
                metrics: dict[str, Any] | None = self.manager.metrics(info.job_id)
            except Exception:  # not started yet, or gone meanwhile: its info line only
                metrics = None
            rows.append(
                {
                    "id": info.job_id,
                    "name": info.name,
                    "status": str(info.status),
                    "runtime": self.manager.runtime.split(" ", 1)[0],
                    "metrics": metrics,
                }
            )
        for status, n in counts.items():
            by_status.add(n, status=status)
        return prometheus.render([by_status, *job_families(rows)])

    async def _list(self, request: Request) -> Response:
        return json_response(JobList(jobs=[e.info() for e in self.manager.jobs()]))

    async def _submit(self, request: Request) -> Response:
        loop = asyncio.get_running_loop()
        try:
            submission = await loop.run_in_executor(None, loads_submission, request.body)
        except Exception as exc:
            raise HttpError(
                400,
                f"cannot decode the submission: {type(exc).__name__}: {exc}. Functions and "
                "classes must be importable on the JobManager, or defined outside "
                "site-packages (then they travel by value): install the package they come "
                "from where the JobManager runs",
            ) from None
        try:
            entry = self.manager.submit(submission)
        except RuntimeError as exc:
            raise HttpError(503, str(exc)) from None
        return json_response(entry.info(), status=201)

    @staticmethod
    def _action(request: Request) -> tuple[str, str]:
        """The job id and the action of a request under ``/v1/jobs/{job_id}``."""
        action = request.params.get("action", "")
        if protocol.JOB_ACTIONS.get(action) != request.method:
            raise HttpError(404, f"no route {request.method} {request.path}")
        return request.params["job_id"], action

    async def _job_get(self, request: Request) -> Response:
        job_id, action = self._action(request)
        entry = self._entry(job_id)
        if action == "wait":
            timeout = min(_query(request, "timeout", MAX_WAIT_S), MAX_WAIT_S)
            await entry.wait_async(timeout)
        elif action == "logs":
            since = int(_query(request, "since", 0))
            wait = min(_query(request, "wait", 0), MAX_WAIT_S)
            if wait > 0:
                await entry.wait_async(wait, new_lines_after=since)
            return json_response(entry.logs(since))
        elif action == "output":
            line = int(_query(request, "line", 0, at_least=-1))  # -1: no lines, records only
            chunk = int(_query(request, "chunk", 0))
            wait = min(_query(request, "wait", 0), MAX_WAIT_S)
            entry.chunks.ack(chunk)  # the caller has every chunk before this one
            if wait > 0:
                lines_after = None if line < 0 else line
                await entry.wait_async(wait, new_lines_after=lines_after, new_chunks_after=chunk)
            return json_response(self._output_page(entry, line, chunk))
        elif action in ("metrics", "dead_letters"):
            read = self.manager.metrics if action == "metrics" else self.manager.dead_letters
            loop = asyncio.get_running_loop()
            return json_response(await loop.run_in_executor(None, read, job_id))
        return json_response(entry.info())

    def _output_page(self, entry: ManagedJob, line: int, chunk: int) -> OutputPage:
        """Lines from ``line`` and chunks from ``chunk``, each chunk signed with the token.

        The job's info is read first: if it says the job ended, every line and chunk was
        added before, so the page holds all that is left.
        """
        info = entry.info()
        logs = entry.logs(line) if line >= 0 else LogPage(entries=[], next=-1, status=info.status)
        chunks, next_chunk = entry.chunks.after(chunk)
        assert self._token is not None
        wire = [
            Chunk(
                seq=seq,
                collector=c.collector,
                count=c.count,
                data=base64.b64encode(c.payload).decode("ascii"),
                mac=protocol.chunk_mac(self._token, entry.job_id, seq, c.collector, c.payload),
            )
            for seq, c in chunks
        ]
        return OutputPage(
            info=info,
            entries=logs.entries,
            next_line=logs.next,
            chunks=wire,
            next_chunk=next_chunk,
        )

    async def _job_post(self, request: Request) -> Response:
        job_id, action = self._action(request)
        self._entry(job_id)
        control = self.manager.stop if action == "stop" else self.manager.cancel
        entry = await asyncio.get_running_loop().run_in_executor(None, control, job_id)
        return json_response(entry.info())


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- running as a process ---------------------------------------------------------------------


def state_file() -> Path:
    """``$SAGE_HOME/jobmanager/server.json``: pid, host and port of the running JobManager."""
    return sage_home() / "jobmanager" / "server.json"


def log_file() -> Path:
    """``$SAGE_HOME/jobmanager/jobmanager.log``: where ``sage jobmanager start`` sends its
    output."""
    return sage_home() / "jobmanager" / "jobmanager.log"


def read_state() -> dict[str, Any] | None:
    """What :func:`serve` wrote (``pid``, ``host``, ``port``, ``runtime``...), or ``None``."""
    try:
        return dict(json.loads(state_file().read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _state(host: str, port: int, runtime: str) -> Iterator[None]:
    path = state_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    state = {"pid": os.getpid(), "host": host, "port": port, "runtime": runtime}
    path.write_text(json.dumps({**state, "started_at": time.time()}), encoding="utf-8")
    try:
        yield
    finally:
        current = read_state()
        if current is not None and current.get("pid") == os.getpid():
            path.unlink(missing_ok=True)


async def _serve(server: JobManagerServer, ready_fd: int | None) -> None:
    with contextlib.ExitStack() as state:

        async def start() -> int:
            port = await server.start_async()
            state.enter_context(_state(server.host, port, server.manager.runtime))
            return port

        await serve_until_signalled(start, server.stop_async, ready_fd)


def serve(
    host: str = "127.0.0.1",
    port: int = SagePorts.JOBMANAGER_DEFAULT,
    ray_address: str | None = None,
    *,
    job_factory: JobFactory | None = None,
    ready_fd: int | None = None,
) -> None:
    """Run a JobManager until SIGTERM or SIGINT (blocks).

    While it runs, ``$SAGE_HOME/jobmanager/server.json`` names its pid and port (removed on
    exit). On a signal it stops taking jobs, cancels the running ones, and exits.

    Args:
        host: Address to listen on.
        port: Port to listen on.
        ray_address: Ray cluster for the default factory (see :class:`RayJobFactory`).
        job_factory: Another runtime (e.g. :class:`LocalJobFactory`).
        ready_fd: A pipe to write ``ready <port>`` to once listening (for a parent process).

    Raises:
        OSError: the port is taken.
        ConfigError: the token file is unusable.
    """
    manager = JobManager(job_factory, ray_address=ray_address)
    run_loop(_serve(JobManagerServer(manager, host=host, port=port), ready_fd))


def main(argv: list[str] | None = None) -> None:
    """``python -m sage.kernel.jobmanager``: the process ``sage jobmanager start`` runs."""
    parser = argparse.ArgumentParser(prog="sage-jobmanager")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=SagePorts.JOBMANAGER_DEFAULT)
    parser.add_argument("--ray-address")
    parser.add_argument("--runtime", choices=("ray", "local"), default="ray")
    parser.add_argument("--ready-fd", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(  # force: `sage jobmanager start --foreground` configured it already
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    factory = LocalJobFactory() if args.runtime == "local" else None
    try:
        serve(args.host, args.port, args.ray_address, job_factory=factory, ready_fd=args.ready_fd)
    except (OSError, ConfigError) as exc:
        parser.exit(2, f"sage-jobmanager: {exc}\n")
