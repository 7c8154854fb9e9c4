"""``HttpIngestSource``: records POSTed to a running job.

``POST /v1/ingest`` with a JSON value (one record) or a JSON array (several), and
``Authorization: Bearer <token>``. The server appends the records to a journal (a JSON-lines
file) before it answers ``200 {"accepted": n}``, and the source reads the journal with a
:class:`~sage.kernel.connectors.jsonl.LineReader`; its offset is the checkpointed position.
So a record the server accepted is never lost: after a restart the job reads on from the
last checkpoint's offset, and every accepted record counts exactly once.

Backpressure: when ``max_backlog`` accepted records wait to be read, a POST gets ``429`` with
``Retry-After`` (an OpenAI-style error body, as the gateway's), and nothing of it is kept.
The server listens on 127.0.0.1 unless told otherwise; ``GET /v1/health`` answers without a
token.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from sage.common.concurrency import LoopThread
from sage.common.config.ports import SagePorts
from sage.common.errors import ConfigError
from sage.common.http import HttpError, HttpServer, Request, Response, json_response
from sage.kernel.connectors.base import ConnectorSource
from sage.kernel.connectors.jsonl import LineReader

__all__ = ["INGEST_PATH", "TOKEN_ENV", "HttpIngestSource"]

logger = logging.getLogger(__name__)

INGEST_PATH = "/v1/ingest"
TOKEN_ENV = "SAGE_INGEST_TOKEN"


def _error(status: int, message: str, kind: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "code": status}})


class HttpIngestSource(ConnectorSource):
    """Records POSTed over HTTP; see the module docstring.

    Args:
        port: Where to listen (``0``: any free port, logged at start).
        host: The interface (loopback by default; anything else is reachable by others).
        token: The bearer token clients must send; default ``$SAGE_INGEST_TOKEN``, else a
            random one, logged at start.
        journal: The journal file (default: a new file in a temporary directory, kept in
            the checkpoints so a restart reads on in the same file).
        max_backlog: Accepted records not yet read beyond which POSTs get 429.
        max_body: Largest request body in bytes (larger: 413).
        fsync: Flush each accepted batch to disk before answering (survives a machine
            crash, not only a job restart; slower).
        batch: Most records per poll.
        on_listen: Called with the ingest URL once the server listens (where the job runs
            in this process: tests, the demo).
    """

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        token: str | None = None,
        journal: str | os.PathLike[str] | None = None,
        max_backlog: int = 10_000,
        max_body: int = 8 * 1024 * 1024,
        fsync: bool = False,
        batch: int = 1024,
        on_listen: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if port != 0 and not SagePorts.is_port_number(port):
            raise ConfigError(f"port={port!r} is invalid; use 0 (any free port) to 65535")
        if max_backlog < 1:
            raise ConfigError(f"max_backlog={max_backlog!r} is invalid; use an integer >= 1")
        self.port = port
        self.host = host
        self.token = token or os.environ.get(TOKEN_ENV) or None
        self.journal = Path(journal) if journal is not None else None
        self.max_backlog = max_backlog
        self.max_body = max_body
        self.fsync = fsync
        self.batch = batch
        self.on_listen = on_listen
        self.url: str | None = None
        self._reader: LineReader | None = None
        self._cond = threading.Condition()
        self._appended = 0  # records written to the journal by this run
        self._read = 0  # of those, records read back
        self._fd: int | None = None
        self._loop: LoopThread | None = None
        self._http: HttpServer | None = None

    # -- the connector --------------------------------------------------------------------

    def connect(self, position: Any) -> None:
        if position is not None:
            self.journal = Path(position["journal"])
        elif self.journal is None:
            self.journal = Path(tempfile.mkdtemp(prefix="sage-ingest-")) / "journal.jsonl"
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._reader = LineReader(self.journal)
        self._reader.open(None if position is None else position["reader"])
        if self.token is None:
            self.token = secrets.token_urlsafe(24)
            logger.warning("no ingest token given: generated %s (set %s)", self.token, TOKEN_ENV)
        http = HttpServer("sage-ingest", max_body=self.max_body, authorize=self._authorize)
        http.route("POST", INGEST_PATH, self._ingest, cancellable=False)
        http.route("GET", "/v1/health", self._health)
        self._loop = LoopThread("sage-ingest")
        try:
            self.port = self._loop.call(http.start(self.host, self.port))
        except BaseException:
            self._loop.stop()
            self._loop = None
            raise
        self._http = http
        self.url = f"http://{self.host}:{self.port}{INGEST_PATH}"
        logger.info("ingesting records POSTed to %s (journal %s)", self.url, self.journal)
        if self.on_listen is not None:
            self.on_listen(self.url)

    def poll(self, timeout: float) -> list[Any]:
        reader = self._reader
        assert reader is not None, "HttpIngestSource.poll() before connect()"
        with self._cond:
            if self._read >= self._appended:
                self._cond.wait(timeout)
        records = reader.read(self.batch)
        if records:
            with self._cond:
                self._read += len(records)
        return records

    def position(self) -> Any:
        assert self._reader is not None, "HttpIngestSource.position() before connect()"
        return {"journal": str(self.journal), "reader": self._reader.position()}

    def disconnect(self) -> None:
        if self._loop is not None:
            http, self._http = self._http, None
            if http is not None:
                try:
                    self._loop.call(http.close(grace_s=1.0), timeout=10.0)
                except Exception:
                    logger.exception("closing the ingest server failed")
            self._loop.stop()
            self._loop = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._reader is not None:
            self._reader.close()

    # -- the server (its own event loop thread) ---------------------------------------------

    def _authorize(self, method: str, path: str, headers: Any) -> HttpError | None:
        if path == "/v1/health":
            return None
        given = headers.get("authorization", "")
        expected = f"Bearer {self.token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            message = "missing or wrong ingest token; send 'Authorization: Bearer <token>'"
            return HttpError(401, message, _error(401, message, "invalid_request_error"))
        return None

    async def _health(self, request: Request) -> Response:
        with self._cond:
            backlog = max(0, self._appended - self._read)  # a restart reads older records too
        return json_response({"status": "ok", "backlog": backlog})

    async def _ingest(self, request: Request) -> Response:
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError as exc:
            message = f"the body is not JSON ({exc}); send a JSON value or an array of them"
            raise HttpError(400, message, _error(400, message, "invalid_request_error")) from None
        records = body if isinstance(body, list) else [body]
        with self._cond:
            if self._appended - self._read + len(records) > self.max_backlog:
                message = (
                    f"{self._appended - self._read} records wait to be read (max_backlog="
                    f"{self.max_backlog}); retry after a moment"
                )
                raise HttpError(
                    429,
                    message,
                    _error(429, message, "rate_limit_exceeded"),
                    headers={"retry-after": "1"},
                )
            self._appended += len(records)  # reserved: the backlog bound holds under races
        data = b"".join(orjson.dumps(r) + b"\n" for r in records)
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._append, data)
        except BaseException:
            with self._cond:
                self._appended -= len(records)
            raise
        with self._cond:
            self._cond.notify_all()
        return json_response({"accepted": len(records)})

    def _append(self, data: bytes) -> None:
        fd = self._fd
        if fd is None:
            raise HttpError(503, "the source is closing", _error(503, "closing", "server_error"))
        os.write(fd, data)  # O_APPEND: one write, never interleaved with another request's
        if self.fsync:
            os.fsync(fd)
