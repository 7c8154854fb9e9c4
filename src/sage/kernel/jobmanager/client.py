"""``JobManagerClient``: submit and control jobs on a JobManager over HTTP.

Used by ``RemoteEnvironment`` (through :class:`~.remote_job.RemoteJob`) and by the
``sage job`` commands. It speaks JSON, but for two pickles: the submission it sends, and
the collected records it receives, which it unpickles only after checking that the
JobManager signed them with the token (:meth:`JobManagerClient.records`).

Errors map to SAGE's exception tree: no JobManager at the address, or a transport failure,
is a ``JobError`` that says how to start one; a missing or wrong token is a ``ConfigError``
that says where the token comes from; a failed job's error is rebuilt with
:func:`~.protocol.rebuild_error`.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import hmac
import time
from typing import Any, Self

import httpx

from sage.common.config.ports import SagePorts
from sage.common.errors import ConfigError, JobError
from sage.kernel.jobmanager.pickling import dumps_submission
from sage.kernel.jobmanager.protocol import (
    HEALTH_PATH,
    JOBS_PATH,
    MAX_WAIT_S,
    SUBMISSION_CONTENT_TYPE,
    Chunk,
    Health,
    JobInfo,
    JobList,
    LogPage,
    OutputPage,
    Submission,
    bearer,
    chunk_mac,
    job_path,
)
from sage.kernel.jobmanager.token import TOKEN_ENV, client_token, token_file
from sage.kernel.runtime.collect import unpack

__all__ = ["JobManagerClient"]

POLL_S = 30.0
"""How long one ``wait`` long-poll is held open by the server before the client asks again."""
_SLACK_S = 10.0  # on top of a long-poll, before the client gives up on the answer


class JobManagerClient:
    """Talks to the JobManager at ``host:port``.

    Example:
        >>> with JobManagerClient("127.0.0.1", 19001) as jm:  # doctest: +SKIP
        ...     for job in jm.list():
        ...         print(job.job_id, job.status)

    Args:
        host: The JobManager's address.
        port: Its port.
        token: The token to send (default: ``$SAGE_JOBMANAGER_TOKEN``, else the token file
            of this account's ``$SAGE_HOME``, else none, and the JobManager refuses).
        timeout: Seconds to wait for an answer to a call that does not wait for a job.
        transport: An ``httpx`` transport (tests may pass ``httpx.MockTransport``).

    Raises:
        ConfigError: the token file exists but is readable by others, or is empty.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = SagePorts.JOBMANAGER_DEFAULT,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._token = token if token is not None else client_token()
        self._http = httpx.Client(
            base_url=f"http://{host}:{port}",
            headers=bearer(self._token),
            timeout=timeout,
            transport=transport,
        )

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        """Close the connection."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One call; the decoded JSON answer.

        Raises:
            JobError: no JobManager answers, or it answered with an error.
            ConfigError: it refused the token.
        """
        if self._http.is_closed:
            raise JobError(
                f"this client of the JobManager at {self.address} was closed; make a new one"
            )
        try:
            response = self._http.request(
                method,
                path,
                params=params,
                content=content,
                headers=headers,
                timeout=self.timeout if timeout is None else timeout,
            )
        except httpx.ConnectError as exc:
            raise JobError(
                f"no JobManager answers at {self.address} ({exc}); start one with "
                f"`sage jobmanager start --host {self.host} --port {self.port}` (add "
                "`--ray-address ADDRESS` to run jobs on an existing Ray cluster)"
            ) from exc
        except httpx.TimeoutException as exc:
            raise JobError(
                f"the JobManager at {self.address} did not answer {method} {path} in time "
                f"({type(exc).__name__}); check it with `sage jobmanager status`"
            ) from exc
        except httpx.HTTPError as exc:
            raise JobError(
                f"calling the JobManager at {self.address} failed: {type(exc).__name__}: {exc}"
            ) from exc
        if response.status_code == 401:
            raise ConfigError(self._token_problem())
        if response.status_code in (400, 404):  # the server's message says what to do
            raise JobError(f"{_message(response)} (JobManager at {self.address})")
        if response.is_error:
            raise JobError(
                f"the JobManager at {self.address} answered {method} {path} with "
                f"{response.status_code}: {_message(response)}"
            )
        try:
            return response.json()
        except ValueError:
            raise JobError(
                f"the JobManager at {self.address} answered {method} {path} with something "
                f"that is not JSON: {response.text[:200]!r}"
            ) from None

    def _token_problem(self) -> str:
        where = (
            f"${TOKEN_ENV} overrides the token file {token_file()}; "
            f"unset it or set it to the JobManager's token"
        )
        if self._token is None:
            return (
                f"the JobManager at {self.address} requires a token and this client has none: "
                f"{token_file()} does not exist (the JobManager creates it on its first "
                f"start, in its own $SAGE_HOME) and ${TOKEN_ENV} is not set. Run as the "
                f"account that started it, or set ${TOKEN_ENV} to its token"
            )
        return (
            f"the JobManager at {self.address} refused this client's token: it is not the "
            f"one in the JobManager's token file (or its ${TOKEN_ENV}). {where}"
        )

    # -- the API --------------------------------------------------------------------------

    def health(self) -> Health:
        """Whether it serves, how many jobs it keeps, and its runtime."""
        return Health.model_validate(self._request("GET", HEALTH_PATH))

    def submit(self, submission: Submission) -> JobInfo:
        """Send a job; its info (``running``) as soon as the JobManager took it.

        Raises:
            pickle.PicklingError: the pipeline holds something that cannot be pickled.
            JobError: the JobManager could not decode or accept it.
        """
        body = dumps_submission(submission)
        answer = self._request(
            "POST",
            JOBS_PATH,
            content=body,
            headers={"content-type": SUBMISSION_CONTENT_TYPE},
        )
        return JobInfo.model_validate(answer)

    def list(self) -> list[JobInfo]:
        """Every job the JobManager keeps, oldest first."""
        return JobList.model_validate(self._request("GET", JOBS_PATH)).jobs

    def info(self, job_id: str) -> JobInfo:
        """One job.

        Raises:
            JobError: no such job (the message says to look at ``sage job list``).
        """
        return JobInfo.model_validate(self._request("GET", job_path(job_id)))

    def wait(self, job_id: str, timeout: float | None = None) -> JobInfo:
        """Block until the job ended or ``timeout`` seconds passed; its info either way.

        The server holds each request open until the job ends (at most :data:`POLL_S`), so
        an ending job is seen at once; the client asks again until ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            poll = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
            poll = max(min(poll, MAX_WAIT_S), 0.0)
            info = JobInfo.model_validate(
                self._request(
                    "GET",
                    job_path(job_id, "wait"),
                    params={"timeout": poll},
                    timeout=poll + _SLACK_S,
                )
            )
            if info.ended or (deadline is not None and time.monotonic() >= deadline):
                return info

    def stop(self, job_id: str) -> JobInfo:
        """Ask the job to stop gracefully (sources end, records in flight drain); returns at
        once (``wait`` for the end)."""
        return JobInfo.model_validate(self._request("POST", job_path(job_id, "stop")))

    def cancel(self, job_id: str) -> JobInfo:
        """End the job now, dropping records in flight; returns at once."""
        return JobInfo.model_validate(self._request("POST", job_path(job_id, "cancel")))

    def dead_letters(self, job_id: str) -> builtins.list[dict[str, Any]]:
        """The job's dead letters as JSON objects (operator, instance, record, error,
        traceback, timestamp), in arrival order."""
        letters: builtins.list[dict[str, Any]] = self._request(
            "GET", job_path(job_id, "dead_letters")
        )["dead_letters"]
        return letters

    def metrics(self, job_id: str) -> dict[str, Any]:
        """The job's metrics as JSON (``JobMetrics.to_dict()``; see
        :func:`~.protocol.metrics_from_dict`)."""
        return dict(self._request("GET", job_path(job_id, "metrics")))

    def logs(self, job_id: str, since: int = 0, *, wait: float = 0.0) -> LogPage:
        """The job's log lines from index ``since``.

        Args:
            wait: Seconds the server may hold the call until there are lines beyond
                ``since`` or the job ended (for following a log).
        """
        wait = min(max(wait, 0.0), MAX_WAIT_S)
        answer = self._request(
            "GET",
            job_path(job_id, "logs"),
            params={"since": since, "wait": wait},
            timeout=self.timeout + wait,
        )
        return LogPage.model_validate(answer)

    def output(
        self, job_id: str, line: int = 0, chunk: int = 0, *, wait: float = 0.0
    ) -> OutputPage:
        """What the job wrote from log line ``line`` on (``-1``: no lines), and its
        collected chunks from ``chunk`` on (the JobManager drops the earlier ones: this says
        they were taken).

        Args:
            wait: Seconds the server may hold the call until there is something new or the
                job ended.
        """
        wait = min(max(wait, 0.0), MAX_WAIT_S)
        answer = self._request(
            "GET",
            job_path(job_id, "output"),
            params={"line": line, "chunk": chunk, "wait": wait},
            timeout=self.timeout + wait,
        )
        return OutputPage.model_validate(answer)

    def records(self, job_id: str, chunk: Chunk) -> builtins.list[Any]:
        """The records of a collected ``chunk`` of job ``job_id``, unpickled once its
        signature shows it comes from a holder of this client's token.

        Raises:
            JobError: the chunk is not signed with the token (nothing of it was unpickled).
        """
        try:
            payload = base64.b64decode(chunk.data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise JobError(
                f"collected chunk {chunk.seq} of job {job_id} from {self.address} is not "
                f"base64 ({exc}); nothing of it was decoded"
            ) from None
        expected = chunk_mac(self._token or "", job_id, chunk.seq, chunk.collector, payload)
        if self._token is None or not hmac.compare_digest(expected, chunk.mac):
            raise JobError(
                f"collected chunk {chunk.seq} of job {job_id} from {self.address} is not "
                "signed with this client's JobManager token, so it was not unpickled (is the "
                "server at this address the JobManager you submitted to?)"
            )
        return unpack(payload)


def _message(response: httpx.Response) -> str:
    """The ``error.message`` of an error answer (the raw text if it has none)."""
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:500] or response.reason_phrase
