"""Pooled keep-alive HTTP/1.1 connections to one server, on asyncio and httptools.

The gateway forwards each request to a backend over a connection from this pool: no TCP
handshake per request, no re-serialisation (bodies pass through as bytes), and streamed
responses handed on chunk by chunk.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httptools

__all__ = ["BackendTimeout", "BackendUnavailable", "HttpPool", "HttpResult"]


class BackendUnavailable(ConnectionError):
    """The server could not be reached, or closed the connection mid-response."""


class BackendTimeout(BackendUnavailable, TimeoutError):
    """The server did not answer within the request's timeout (the connection is closed)."""


@dataclass
class HttpResult:
    """A response: status, lower-cased headers, and the body (whole or streamed)."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    chunks: AsyncIterator[bytes] | None = None


class _Connection(asyncio.Protocol):
    def __init__(self, pool: HttpPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.deadline = 0.0  # loop time by which the pending answer must arrive (timed ones)
        self._reset()

    def _reset(self) -> None:
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.head_done: asyncio.Future[int] = self.pool.loop.create_future()
        self.done: asyncio.Future[bool] = self.pool.loop.create_future()
        self.stream: asyncio.Queue[bytes | None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(
            BackendUnavailable(f"{self.pool.address}: connection closed ({exc or 'by peer'})")
        )
        if self.stream is not None:
            self.stream.put_nowait(None)

    def expire(self, timeout_s: float) -> None:
        """Its deadline passed: fail the request waiting on it and close the connection."""
        self._fail(BackendTimeout(f"{self.pool.address}: no answer within {timeout_s:g} s"))
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: BackendUnavailable) -> None:
        """Fail whichever of the two futures is pending; the caller awaits only the first."""
        pending = [f for f in (self.head_done, self.done) if not f.done()]
        for future in pending:
            future.set_exception(error)
        if self.done in pending:
            # Marks it retrieved: whoever awaits ``done`` still gets the error, and a reader
            # that stopped early (or the head's waiter, reporting it) leaves no warning behind.
            self.done.exception()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BackendUnavailable(f"{self.pool.address}: malformed response: {exc}"))
            if self.transport is not None:
                self.transport.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if not self.head_done.done():
            self.head_done.set_result(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        if self.stream is not None:
            self.stream.put_nowait(body)
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.stream is not None:
            self.stream.put_nowait(None)
        if not self.done.done():
            self.done.set_result(self.parser.should_keep_alive())


class HttpPool:
    """Keep-alive connections to ``host:port``.

    Args:
        host: Server host.
        port: Server port.
        limit: Most connections open at once (callers wait beyond it).
        connect_timeout_s: Seconds to wait for a connection.
        ssl: A TLS context for HTTPS servers (remote endpoints), or None.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        limit: int = 256,
        connect_timeout_s: float = 2.0,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.address = f"{host}:{port}"
        self.loop = asyncio.get_running_loop()
        self._idle: deque[_Connection] = deque()
        self._slots = asyncio.Semaphore(limit)
        self._connect_timeout = connect_timeout_s
        self._ssl = ssl
        self._host_header = f"host: {host}:{port}\r\n".encode()
        # Connections waiting for a timed answer, by connection: its timeout. One sweeper
        # task expires them, so a timeout costs a timestamp per request, not a timer.
        self._timed: dict[_Connection, float] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._tick = 0.5

    async def _connection(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.lost:
                connection._reset()
                return connection
        try:
            _, protocol = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self._ssl
                ),
                self._connect_timeout,
            )
        except (OSError, TimeoutError) as exc:
            raise BackendUnavailable(f"{self.address}: cannot connect: {exc}") from exc
        return protocol

    def _request_bytes(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
        head = [b"%s %s HTTP/1.1\r\n" % (method.encode(), path.encode()), self._host_header]
        for name, value in headers.items():
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        head.append(b"content-length: %d\r\n\r\n" % len(body))
        return b"".join(head) + body

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        stream: bool = False,
        timeout_s: float | None = None,
    ) -> HttpResult:
        """Send a request; return the whole response, or (``stream``) its body as chunks.

        A streamed result keeps its connection until the chunks are consumed (or closed).
        ``timeout_s`` bounds the wait for the whole response (a stream: for its head), once
        a connection is at hand; ``None``: no bound.

        Raises:
            BackendUnavailable: the server is unreachable or dropped the connection.
            BackendTimeout: (a ``BackendUnavailable`` and a ``TimeoutError``) no answer
                within ``timeout_s``.
        """
        await self._slots.acquire()
        connection: _Connection | None = None
        timed = self._timed
        try:
            connection = await self._connection()
            if timeout_s is not None:
                self._time(connection, timeout_s)
            if stream:
                connection.stream = asyncio.Queue()
            assert connection.transport is not None
            connection.transport.write(self._request_bytes(method, path, body, headers or {}))
            status = await connection.head_done
        except BaseException:
            self._slots.release()
            if connection is not None:
                timed.pop(connection, None)
            self._discard(connection)  # cancelled or failed mid-request: the connection is spent
            raise
        if stream:
            timed.pop(connection, None)
            return HttpResult(status, connection.headers, chunks=self._chunks(connection))
        try:
            keep_alive = await connection.done
        except BaseException:
            self._discard(connection)
            raise
        finally:
            timed.pop(connection, None)
            self._slots.release()
        self._recycle(connection, keep_alive)
        return HttpResult(status, connection.headers, b"".join(connection.body))

    def _time(self, connection: _Connection, timeout_s: float) -> None:
        """Give ``connection``'s answer ``timeout_s`` seconds (the sweeper enforces it)."""
        connection.deadline = self.loop.time() + timeout_s
        self._timed[connection] = timeout_s
        if timeout_s / 10 < self._tick:
            self._tick = max(timeout_s / 10, 0.005)
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = self.loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        """While answers are awaited, expire those past their deadline every tick (a
        timeout fires at most one tick, a tenth of it, late); ends when none are."""
        timed = self._timed
        while timed:
            await asyncio.sleep(self._tick)
            now = self.loop.time()
            for connection, timeout_s in list(timed.items()):
                if now >= connection.deadline:
                    del timed[connection]
                    connection.expire(timeout_s)

    async def _chunks(self, connection: _Connection) -> AsyncIterator[bytes]:
        queue = connection.stream
        assert queue is not None
        complete = False
        try:
            while True:
                chunk = await queue.get()
                if chunk is None:
                    break
                yield chunk
            keep_alive = await connection.done
            complete = True
            self._recycle(connection, keep_alive)
        finally:
            self._slots.release()
            if not complete:
                self._discard(connection)  # abandoned mid-stream: the connection is spent

    @staticmethod
    def _discard(connection: _Connection | None) -> None:
        if connection is not None and connection.transport is not None:
            connection.transport.close()

    def _recycle(self, connection: _Connection, keep_alive: bool) -> None:
        if keep_alive and not connection.lost:
            connection.stream = None
            self._idle.append(connection)
        elif connection.transport is not None:
            connection.transport.close()

    async def close(self) -> None:
        """Close the idle connections (and stop timing answers)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        while self._idle:
            connection = self._idle.pop()
            if connection.transport is not None:
                connection.transport.close()
