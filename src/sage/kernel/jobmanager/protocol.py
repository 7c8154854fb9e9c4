"""The JobManager's wire protocol: endpoints, the JSON it answers with, and how errors travel.

Server, client and tests import this one module, so the schema lives in one place.

Every endpoint requires ``Authorization: Bearer <token>`` (see :mod:`.token`); a request
without the token gets ``401`` and nothing it sent is decoded or run.

==========================================  ==========================================
``POST /v1/jobs``                           submit: body is a pickled :class:`Submission`
                                            (``application/octet-stream``); ``201`` +
                                            :class:`JobInfo`
``GET  /v1/jobs``                           :class:`JobList`
``GET  /v1/jobs/{id}``                      :class:`JobInfo`
``GET  /v1/jobs/{id}/wait?timeout=S``       :class:`JobInfo` once the job ended or ``S``
                                            seconds passed (at most :data:`MAX_WAIT_S`)
``POST /v1/jobs/{id}/stop``                 graceful stop (sources end, records in flight
                                            drain); :class:`JobInfo`
``POST /v1/jobs/{id}/cancel``               cancel now; :class:`JobInfo`
``GET  /v1/jobs/{id}/metrics``              ``JobMetrics.to_dict()``
``GET  /v1/jobs/{id}/dead_letters``         ``{"dead_letters": [DeadLetter.to_json()...]}``
                                            (records as JSON, or their ``repr``)
``GET  /v1/jobs/{id}/logs?since=N&wait=S``  :class:`LogPage`: lines ``N...``; with ``wait``,
                                            blocks until there are new lines or the job ended
``GET  /v1/jobs/{id}/output?line=N&chunk=M  :class:`OutputPage`: lines ``N...`` (none for
&wait=S``                                   ``N=-1``) and collected chunks ``M...`` (those
                                            before ``M`` are dropped: taken); with ``wait``,
                                            blocks until there is something new or the job
                                            ended
``GET  /v1/health``                         :class:`Health`
==========================================  ==========================================

A job's log holds the JobManager's own lines about it (submitted, started, failed...) and
what its functions printed and logged, each such line naming its operator instance
(:class:`LogLine`). The records of its ``collect()`` operators wait on the JobManager in
:class:`Chunk` objects until the submitter takes them (``output``), a few at a time: the
job waits while they are not taken (backpressure).

Errors are ``{"error": {"message": ..., "type": ...}}`` (:func:`error_body`). A failed job's
error is an :class:`ErrorInfo` that :func:`rebuild_error` turns back into the same
:mod:`sage.common.errors` class on the client. The submission is pickled, and only the
server unpickles it (after checking the token). Collected records travel pickled too, each
chunk signed with an HMAC keyed by the token (:func:`chunk_mac`): the client unpickles a
chunk only after checking it, so only a holder of the token (the JobManager) can have the
client unpickle anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel

from sage.common import errors
from sage.common.errors import JobError, OperatorError, SageError
from sage.kernel.graph.plan import PhysicalPlan
from sage.kernel.runtime.metrics import JobMetrics, OperatorMetrics, TaskMetrics
from sage.kernel.services.metrics import ServiceMetrics
from sage.kernel.services.spec import ServiceSpec

__all__ = [
    "ENDED",
    "HEALTH_PATH",
    "JOBS_PATH",
    "JOB_ACTIONS",
    "MAX_WAIT_S",
    "METRICS_PATH",
    "SUBMISSION_CONTENT_TYPE",
    "Chunk",
    "ErrorInfo",
    "Health",
    "JobInfo",
    "JobList",
    "LogLine",
    "LogPage",
    "OutputPage",
    "Status",
    "Submission",
    "bearer",
    "chunk_mac",
    "error_body",
    "error_info",
    "job_path",
    "metrics_from_dict",
    "rebuild_error",
]

HEALTH_PATH = "/v1/health"
JOBS_PATH = "/v1/jobs"
METRICS_PATH = "/metrics"  # Prometheus text; like every route, it wants the token
SUBMISSION_CONTENT_TYPE = "application/octet-stream"
MAX_WAIT_S = 60.0
"""Longest a ``wait`` or ``logs`` long-poll is held open; clients poll again after it."""

Status = Literal["running", "stopping", "finished", "failed", "cancelled"]
ENDED: frozenset[str] = frozenset({"finished", "failed", "cancelled"})
"""The statuses of a job that has ended."""

# Actions under /v1/jobs/{id}/ and the method each answers to ("" is the job itself).
JOB_ACTIONS: dict[str, str] = {
    "": "GET",
    "wait": "GET",
    "metrics": "GET",
    "dead_letters": "GET",
    "logs": "GET",
    "output": "GET",
    "stop": "POST",
    "cancel": "POST",
}


@dataclass(frozen=True)
class Submission:
    """What a client sends to run a job (pickled with :mod:`.pickling`).

    Attributes:
        name: The environment's name (the job id starts with it).
        plan: The compiled pipeline.
        config: The environment's ``config`` mapping as given (``JobConfig.from_mapping``
            validates it again on the server).
        services: The services registered on the environment.
        autostop: Whether the client blocks until the job ends (``submit(autostop=True)``).
            The server runs every job to its end either way.
    """

    name: str
    plan: PhysicalPlan
    config: dict[str, Any]
    services: list[ServiceSpec]
    autostop: bool = True


class ErrorInfo(BaseModel):
    """Why a job failed: the error's class name and message (plus, for an ``OperatorError``,
    where it happened)."""

    type: str
    message: str
    operator: str | None = None
    instance: int | None = None
    parallelism: int | None = None
    phase: str | None = None


class JobInfo(BaseModel):
    """One job as the JobManager reports it.

    Attributes:
        job_id: ``<name>-<6 hex digits>``.
        name: The submitting environment's name.
        status: ``running``, ``stopping``, ``finished``, ``failed`` or ``cancelled``.
        submitted_at: Unix time of submission.
        ended_at: Unix time the job ended, or ``None`` while it runs.
        elapsed_s: Seconds from submission to its end (or to now).
        error: Why it failed or was cancelled, else ``None``.
    """

    job_id: str
    name: str
    status: Status
    submitted_at: float
    ended_at: float | None = None
    elapsed_s: float
    error: ErrorInfo | None = None

    @property
    def ended(self) -> bool:
        """Whether the job has ended (finished, failed or cancelled)."""
        return self.status in ENDED


class JobList(BaseModel):
    """``GET /v1/jobs``: every job the JobManager remembers, oldest first."""

    jobs: list[JobInfo]


class LogLine(BaseModel):
    """One line of a job's log.

    Attributes:
        time: When it was written (seconds since the epoch).
        text: The line.
        origin: The operator instance whose function wrote it (``"sink 'print' 1/1"``), or
            ``None`` for the JobManager's own lines about the job.
        stream: Where the function wrote it: ``"stdout"``, or ``"stderr"`` (log records and
            warnings too); ``None`` for the JobManager's lines.
    """

    time: float
    text: str
    origin: str | None = None
    stream: Literal["stdout", "stderr"] | None = None

    def __str__(self) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.time))
        return f"{stamp} ({self.origin}) {self.text}" if self.origin else f"{stamp} {self.text}"


class LogPage(BaseModel):
    """``GET /v1/jobs/{id}/logs``: lines ``since...`` and the index to ask for next.

    Attributes:
        entries: The lines, oldest first (lines dropped from the bounded log are skipped).
        next: Pass as ``since`` to get only newer lines.
        status: The job's status when the page was read (a follower stops once it ended).
    """

    entries: list[LogLine]
    next: int
    status: Status

    @property
    def lines(self) -> list[str]:
        """The lines as ``sage job logs`` prints them: time, ``(operator)``, text."""
        return [str(entry) for entry in self.entries]


class Chunk(BaseModel):
    """Records of one ``collect()``, in the order it received them, as the wire carries them.

    Attributes:
        seq: Its place among the job's chunks (0, 1, 2...).
        collector: The collect they belong to.
        count: How many records.
        data: The pickled list of records, in base64.
        mac: :func:`chunk_mac` of it: check it before unpickling ``data``.
    """

    seq: int
    collector: str
    count: int
    data: str
    mac: str


class OutputPage(BaseModel):
    """``GET /v1/jobs/{id}/output``: what the job's submitter follows while it waits.

    Attributes:
        info: The job, read before the rest: if it has ended, the page holds everything the
            job wrote and collected after the indexes asked for.
        entries: Lines from the index asked for (as in :class:`LogPage`).
        next_line: Pass as ``line`` next time (``-1`` if ``-1`` was asked: no lines).
        chunks: Collected chunks from the index asked for.
        next_chunk: Pass as ``chunk`` next time (which also frees the ones taken).
    """

    info: JobInfo
    entries: list[LogLine]
    next_line: int
    chunks: list[Chunk]
    next_chunk: int


class Health(BaseModel):
    """``GET /v1/health``."""

    status: Literal["ok"] = "ok"
    jobs: int
    runtime: str


def job_path(job_id: str, action: str = "") -> str:
    """``/v1/jobs/{id}`` or ``/v1/jobs/{id}/{action}``."""
    return f"{JOBS_PATH}/{job_id}" + (f"/{action}" if action else "")


def chunk_mac(token: str, job_id: str, seq: int, collector: str, payload: bytes) -> str:
    """HMAC-SHA256 of a collected chunk, keyed by the JobManager's token: the JobManager
    signs each chunk with it, and the client checks it before it unpickles the records."""
    head = f"{job_id}\n{seq}\n{collector}\n".encode()
    return hmac.new(token.encode(), head + payload, hashlib.sha256).hexdigest()


def bearer(token: str | None) -> dict[str, str]:
    """The ``Authorization`` header for ``token`` (none without one)."""
    return {"authorization": f"Bearer {token}"} if token else {}


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    503: "unavailable_error",
}


def error_body(status: int, message: str) -> bytes:
    """``{"error": {"message": ..., "type": ...}}`` for an HTTP error ``status``."""
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps({"error": {"message": message, "type": kind}})


def error_info(exc: BaseException) -> ErrorInfo:
    """Encode a job's error (an ``OperatorError`` keeps where it happened)."""
    if isinstance(exc, OperatorError):
        return ErrorInfo(
            type=type(exc).__name__,
            message=str(exc),
            operator=exc.operator,
            instance=exc.instance,
            parallelism=exc.parallelism,
            phase=exc.phase,
        )
    return ErrorInfo(type=type(exc).__name__, message=str(exc) or type(exc).__name__)


def rebuild_error(info: ErrorInfo) -> SageError:
    """The client-side exception for a job's error.

    A class of :mod:`sage.common.errors` comes back as itself, carrying the server's message
    (an ``OperatorError`` with ``operator``, ``instance``, ``parallelism`` and ``phase`` set,
    but no ``record`` or ``cause``: those stay on the server, in the job's log). Any other
    error becomes a ``JobError`` whose message names the original class.
    """
    cls = getattr(errors, info.type, None)
    if not (isinstance(cls, type) and issubclass(cls, SageError)):
        return JobError(f"{info.type}: {info.message}")
    # Built without __init__: the server already formatted the message, and some classes'
    # constructors take other arguments (OperatorError wants the original exception).
    error: SageError = cls.__new__(cls)
    Exception.__init__(error, info.message)
    if isinstance(error, OperatorError):
        error.operator = info.operator or "?"
        error.instance = info.instance or 0
        error.parallelism = info.parallelism or 1
        error.phase = info.phase or "execute"
        error.record = None
        error.cause = None  # type: ignore[assignment]
    return error


def _rows(cls: type[Any], rows: Any, tuples: tuple[str, ...] = ()) -> tuple[Any, ...]:
    """Dataclass instances of ``cls`` from JSON objects (unknown keys ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return tuple(
        cls(**{k: tuple(v) if k in tuples else v for k, v in row.items() if k in names})
        for row in rows or ()
    )


def metrics_from_dict(data: dict[str, Any]) -> JobMetrics:
    """Rebuild the :class:`JobMetrics` that ``JobMetrics.to_dict()`` gave (the inverse)."""
    return JobMetrics(
        job=data["job"],
        status=data["status"],
        elapsed_s=data["elapsed_s"],
        operators=_rows(OperatorMetrics, data.get("operators"), tuples=("latency_buckets",)),
        tasks=_rows(TaskMetrics, data.get("tasks"), tuples=("operators",)),
        instances=_rows(OperatorMetrics, data.get("instances"), tuples=("latency_buckets",)),
        dead_letters=data.get("dead_letters", 0),
        services=_rows(ServiceMetrics, data.get("services"), tuples=("latency_buckets",)),
        edges=tuple((int(a), int(b)) for a, b in data.get("edges") or ()),
    )
