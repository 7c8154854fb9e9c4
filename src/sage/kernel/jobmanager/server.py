"""The JobManager's HTTP server: the endpoints of :mod:`.protocol` over a :class:`JobManager`.

The JobManager is four modules, each usable alone:

* :mod:`.manager`: :class:`~.manager.JobManager` keeps the jobs: one thread per job starts
  it, waits for its end and records the outcome, with each job's state, log and collected
  records in a :class:`~.managed.ManagedJob` (:mod:`.managed`, :mod:`.collected`) and a
  bounded history of ended jobs;
* :mod:`.factories`: what runs a job: :class:`~.factories.RayJobFactory` (the default:
  tasks and services as Ray actors) or :class:`~.factories.LocalJobFactory` (threads of
  this process; for tests, benchmarks and single-machine use);
* this module: :class:`JobManagerServer` serves a ``JobManager`` over HTTP on SAGE's small
  asyncio server, in a background thread (``start``/``stop``, a context manager) or on the
  caller's loop (``start_async``). Every request must carry the token, checked from the
  request's head: the body of a request without it is not even read;
* :mod:`.daemon`: :func:`~.daemon.serve` runs a server until SIGTERM/SIGINT, with a state
  file in ``$SAGE_HOME/jobmanager/`` (``sage jobmanager start`` runs it as a process:
  ``python -m sage.kernel.jobmanager``).

Example:
    >>> with JobManagerServer(job_factory=LocalJobFactory(), port=0) as server:  # doctest: +SKIP
    ...     env = RemoteEnvironment("job", port=server.port)
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from sage.common.concurrency import BackgroundServer
from sage.common.config.ports import SagePorts
from sage.common.http.server import HttpError, HttpServer, Request, Response, json_response
from sage.common.observability import prometheus
from sage.common.observability.prometheus import MetricFamily
from sage.kernel.jobmanager import protocol
from sage.kernel.jobmanager.factories import JobFactory
from sage.kernel.jobmanager.managed import ManagedJob
from sage.kernel.jobmanager.manager import JobManager
from sage.kernel.jobmanager.pickling import loads_submission
from sage.kernel.jobmanager.protocol import (
    HEALTH_PATH,
    JOBS_PATH,
    MAX_WAIT_S,
    METRICS_PATH,
    Chunk,
    Health,
    JobList,
    LogPage,
    OutputPage,
)
from sage.kernel.jobmanager.token import server_token, token_matches
from sage.kernel.runtime.exposition import job_families

if TYPE_CHECKING:
    pass

__all__ = ["JobManagerServer"]

logger = logging.getLogger(__name__)

MAX_SUBMISSION_BYTES = 256 * 1024 * 1024


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
        self.collector = prometheus.Collector(self.families)
        """A ``prometheus_client`` collector of :meth:`families` (``GET /metrics``)."""

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
        body = await asyncio.get_running_loop().run_in_executor(
            None, prometheus.exposition, self.collector
        )
        return Response(body=body, content_type=prometheus.CONTENT_TYPE)

    def families(self) -> list[MetricFamily]:
        """The JobManager's Prometheus families now (what :attr:`collector` collects)."""
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
        return [by_status, *job_families(rows)]

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
