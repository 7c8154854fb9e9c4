"""A small, fast HTTP/1.1 server on asyncio (uvloop when installed) and httptools.

Why not a framework: the gateway's job is to pass requests through with as little added
latency as possible, and a general ASGI stack costs several times the work of the request
itself (a FastAPI + httpx pass-through manages ~600 requests/s on two cores, this ~10x that).
This module does only what SAGE's servers need:

* keep-alive connections, requests handled one after another per connection;
* routes by method and path (exact, or a prefix for ``/v1/management/instances/<id>``);
* JSON responses written in one ``write`` call, with ``Content-Length``;
* streamed responses (server-sent events) with chunked encoding and write backpressure;
* a body limit: a larger body is read and discarded, then answered with 413, so the client
  gets the error instead of a reset connection; malformed HTTP gets 400 and a closed
  connection. Handlers' exceptions become 500s; the server keeps serving;
* an optional ``authorize`` hook that sees each request's head before any of its body is
  read: a refused request is answered (401...) without reading its body, and when it
  announced one the connection half-closes after the answer (what the peer still sends is
  discarded as it arrives, never parsed or kept);
* a draining close: requests in progress finish, later ones get 503 and ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import httptools
import orjson

__all__ = [
    "Authorizer",
    "HttpError",
    "HttpServer",
    "Request",
    "Response",
    "StreamResponse",
    "json_response",
]

logger = logging.getLogger(__name__)

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_DISCARD_LIMIT = 64 * 1024 * 1024  # beyond this a too-large or refused body is cut off, not drained


class Request:
    """One HTTP request: method, path, query, lower-cased header names, body bytes."""

    __slots__ = ("body", "headers", "keep_alive", "method", "path", "query")

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: bytes,
        keep_alive: bool,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive

    def json(self) -> Any:
        """The body parsed as JSON.

        Raises:
            HttpError: 400 when the body is not valid JSON.
        """
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            raise HttpError(400, f"request body is not valid JSON: {exc}") from None


@dataclass
class Response:
    """A complete response."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamResponse:
    """A response whose body is produced piece by piece (sent with chunked encoding)."""

    chunks: AsyncIterator[bytes]
    status: int = 200
    content_type: str = "text/event-stream"
    headers: dict[str, str] = field(default_factory=dict)


class HttpError(Exception):
    """Raised by a handler (or the server) to answer with ``status`` and a JSON body."""

    def __init__(
        self,
        status: int,
        message: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.headers = headers or {}


def json_response(payload: Any, status: int = 200) -> Response:
    """A JSON response (pydantic models, dicts, lists...)."""
    if hasattr(payload, "model_dump"):
        payload = payload.model_dump(exclude_none=False)
    return Response(status=status, body=orjson.dumps(payload))


Handler = Callable[[Request], Awaitable[Response | StreamResponse]]
ErrorBody = Callable[[int, str], bytes]
Authorizer = Callable[[str, str, Mapping[str, str]], HttpError | None]
"""Decides from a request's head whether its body may be read: ``(method, path, headers)``
(header names lower-cased) -> ``None`` to let the request through, or the :class:`HttpError`
to answer instead (its ``body`` if set, else the server's ``error_body``). Raising the error
works too; any other exception refuses the request with a 500. It runs on the event loop
while the request is parsed, for every request (unknown routes too): keep it quick and
non-blocking."""


def _default_error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "http_error", "code": str(status)}})


class _Refused(Exception):
    """Stops the parser at the head of a refused request: its body is not to be read."""


class _Connection(asyncio.Protocol):
    """One client connection: parse requests, run handlers in order, write responses."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        # requests in arrival order, each with the error to answer instead of running it
        self.pending: deque[tuple[Request, HttpError | None]] = deque()
        self.dropping = False  # a refused body follows: nothing more is parsed, only dropped
        self.busy = False
        self.idle = asyncio.Event()  # set while no request is being handled
        self.idle.set()
        self.closed = False
        self.can_write = asyncio.Event()
        self.can_write.set()
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.path = ""
        self.query = ""
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.size = 0
        self.refusal: HttpError | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.can_write.set()
        if not self.busy:
            self.idle.set()
        self.server._connections.discard(self)

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        if self.dropping:
            self._drop(len(data))
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            if not self.dropping:  # else on_headers_complete stopped the parser (_Refused)
                self._fail(400, f"malformed HTTP request: {exc}")

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        parsed = httptools.parse_url(self.url)
        self.path = parsed.path.decode("latin-1")
        self.query = (parsed.query or b"").decode("latin-1")
        authorize = self.server.authorize
        if authorize is None:
            return
        method = self.parser.get_method().decode()
        try:
            self.refusal = authorize(method, self.path, self.headers)
        except HttpError as exc:
            self.refusal = exc
        except Exception as exc:  # fail closed
            logger.exception("%s: authorizing %s %s failed", self.server.name, method, self.path)
            self.refusal = HttpError(500, f"internal error: {exc}")
        if self.refusal is not None and self._body_announced():
            # Answer without reading the body: parse nothing more, read nothing more until
            # the answer is out, then half-close (``_end``).
            self.dropping = True
            if self.transport is not None and not self.closed:
                self.transport.pause_reading()
            self._enqueue(self._request(b"", keep_alive=False), self.refusal)
            raise _Refused

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size <= self.server.max_body:
            self.body.append(body)
        elif self.size > _DISCARD_LIMIT:
            self._fail(413, f"request body over {self.server.max_body} bytes")

    def on_message_complete(self) -> None:
        if self.closed:
            return
        max_body = self.server.max_body
        if self.size > max_body:
            request = self._request(b"", keep_alive=False)
            self._enqueue(request, HttpError(413, f"request body is larger than {max_body} bytes"))
        else:
            request = self._request(b"".join(self.body), self.parser.should_keep_alive())
            self._enqueue(request, self.refusal)

    # -- handling ----------------------------------------------------------------------------

    def _request(self, body: bytes, keep_alive: bool) -> Request:
        method = self.parser.get_method().decode()
        return Request(method, self.path, self.query, self.headers, body, keep_alive)

    def _body_announced(self) -> bool:
        """Whether the request being parsed says a body follows its head."""
        if "transfer-encoding" in self.headers:
            return True
        length = self.headers.get("content-length", "0").strip()
        return not length.isdigit() or int(length) > 0

    def _enqueue(self, request: Request, refusal: HttpError | None) -> None:
        self.pending.append((request, refusal))
        if not self.busy:
            self._next()

    def _next(self) -> None:
        if self.pending and not self.closed:
            self.busy = True
            self.idle.clear()
            self.server._loop.create_task(self._handle(*self.pending.popleft()))
        else:
            self.busy = False
            self.idle.set()

    async def _handle(self, request: Request, refusal: HttpError | None) -> None:
        server = self.server
        response: Response | StreamResponse
        try:
            if refusal is not None:  # answered without reaching a handler
                response = self._error_response(refusal)
            elif server.draining:  # arrived after close() began: refuse, close the connection
                request.keep_alive = False
                raise HttpError(
                    503,
                    "the server is shutting down; retry the request on another instance",
                    headers={"retry-after": "1"},
                )
            else:
                response = await server._dispatch(request)
        except HttpError as exc:
            response = self._error_response(exc)
        except Exception as exc:  # a handler bug must not take the server down
            logger.exception("%s %s failed", request.method, request.path)
            response = Response(status=500, body=server.error_body(500, f"internal error: {exc}"))
        if server.draining:
            request.keep_alive = False  # the answer is the connection's last
        try:
            if isinstance(response, StreamResponse):
                try:
                    await self._stream(response, request.keep_alive)
                except Exception as exc:  # the producer failed after the head was sent
                    logger.warning(
                        "%s %s: stream broken mid-answer (%s: %s); closing the connection",
                        request.method,
                        request.path,
                        type(exc).__name__,
                        exc,
                    )
                    request.keep_alive = False  # the client sees the answer cut, not a hang
            else:
                self._write(response, request.keep_alive)
        finally:
            if not request.keep_alive and self.transport is not None:
                self._end()
            self._next()

    def _error_response(self, error: HttpError) -> Response:
        body = error.body or self.server.error_body(error.status, str(error))
        return Response(status=error.status, body=body, headers=error.headers)

    def _end(self) -> None:
        """Close the connection once the answer just written is sent.

        While a refused body may still be coming, half-close instead: the peer gets the
        answer and then the end of the stream, and what it still sends is dropped unread
        until it closes. Closing with unread data would reset the connection, and a reset
        can destroy the answer before the peer reads it.
        """
        transport = self.transport
        assert transport is not None
        if self.dropping and not self.closed and transport.can_write_eof():
            transport.write_eof()
            transport.resume_reading()
            self.closed = True  # nothing more is parsed or answered on it
        else:
            transport.close()

    def _drop(self, size: int) -> None:
        """Drop ``size`` bytes of a refused body; past ``_DISCARD_LIMIT``, cut the peer off."""
        self.size += size
        if self.size > _DISCARD_LIMIT and self.transport is not None:
            self.transport.close()

    def _head(
        self, status: int, content_type: str, headers: dict[str, str], keep_alive: bool
    ) -> bytes:
        lines = [
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\n"
            % (status, _REASONS.get(status, b"Unknown"), content_type.encode()),
        ]
        for name, value in headers.items():
            lines.append(f"{name}: {value}\r\n".encode("latin-1"))
        if not keep_alive:
            lines.append(b"connection: close\r\n")
        return b"".join(lines)

    def _write(self, response: Response, keep_alive: bool) -> None:
        if self.closed or self.transport is None:
            return
        head = self._head(response.status, response.content_type, response.headers, keep_alive)
        self.transport.write(
            head + b"content-length: %d\r\n\r\n" % len(response.body) + response.body
        )

    async def _stream(self, response: StreamResponse, keep_alive: bool) -> None:
        transport = self.transport
        if self.closed or transport is None:
            # the client left before the answer began: let the producer release what it
            # holds (a gateway's instance slot) instead of waiting for a reader forever
            aclose = getattr(response.chunks, "aclose", None)
            if aclose is not None:
                await aclose()
            return
        head = self._head(response.status, response.content_type, response.headers, keep_alive)
        transport.write(head + b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n")
        chunks = response.chunks
        try:
            async for chunk in chunks:
                if self._gone():
                    break  # the client went away: stop producing
                if chunk:
                    transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    if not self.can_write.is_set():
                        await self.can_write.wait()
            if not self._gone():
                transport.write(b"0\r\n\r\n")
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    def _gone(self) -> bool:
        """Whether the client has disconnected (re-read after every await)."""
        return self.closed

    def _fail(self, status: int, message: str) -> None:
        if self.transport is not None and not self.closed:
            body = self.server.error_body(status, message)
            self._write(Response(status=status, body=body), keep_alive=False)
            self.transport.close()
        self.closed = True


class HttpServer:
    """Routes requests to async handlers; see the module docstring.

    Args:
        name: For logs.
        max_body: Largest request body accepted, in bytes (larger: 413).
        error_body: Builds the JSON body of an error from (status, message).
        authorize: Sees each request's head before its body is read, and may refuse it
            (see :data:`Authorizer`); ``None``: every request goes to its handler.
    """

    def __init__(
        self,
        name: str = "sage-http",
        *,
        max_body: int = 8 * 1024 * 1024,
        error_body: ErrorBody = _default_error_body,
        authorize: Authorizer | None = None,
    ) -> None:
        self.name = name
        self.max_body = max_body
        self.error_body = error_body
        self.authorize = authorize
        self._routes: dict[tuple[str, str], Handler] = {}
        self._prefixes: list[tuple[str, str, Handler]] = []
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self.draining = False  # close() began: requests in progress finish, new ones get 503
        self._loop: asyncio.AbstractEventLoop  # the loop ``start`` runs on (set there)

    def route(self, method: str, path: str, handler: Handler, *, prefix: bool = False) -> None:
        """Send ``method path`` (or, with ``prefix``, every path under it) to ``handler``."""
        if prefix:
            self._prefixes.append((method, path, handler))
            self._prefixes.sort(key=lambda r: -len(r[1]))
        else:
            self._routes[(method, path)] = handler

    async def _dispatch(self, request: Request) -> Response | StreamResponse:
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            for method, prefix, candidate in self._prefixes:
                if request.method == method and request.path.startswith(prefix):
                    handler = candidate
                    break
        if handler is None:
            if any(p == request.path for _, p in self._routes) or any(
                request.path.startswith(p) for _, p, _ in self._prefixes
            ):
                raise HttpError(405, f"method {request.method} is not allowed on {request.path}")
            raise HttpError(404, f"no route {request.method} {request.path}")
        return await handler(request)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0: any free port); return the port.

        Raises:
            OSError: the port is taken (the message names it).
        """
        self._loop = loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: _Connection(self), host, port, reuse_address=True, backlog=2048
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"{self.name}: cannot listen on {host}:{port}: {exc.strerror}"
            ) from exc
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        """Open client connections."""
        return len(self._connections)

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop accepting; wait up to ``grace_s`` for requests in progress, then close.

        While it waits, a request that arrives on an open connection gets 503 with
        ``Retry-After`` and the connection closes: a client retries elsewhere instead of
        losing the request with a reset connection.
        """
        if self._server is None:
            return
        self.draining = True
        self._server.close()
        busy = [c.idle.wait() for c in self._connections if c.busy]
        if busy:
            await asyncio.wait([asyncio.ensure_future(w) for w in busy], timeout=grace_s)
        for connection in list(self._connections):
            if connection.transport is not None:
                connection.transport.close()
        await self._server.wait_closed()
        self._server = None
