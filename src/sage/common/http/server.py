"""A small, fast HTTP/1.1 server on asyncio (uvloop when installed) and httptools.

Why not a framework: the gateway's job is to pass requests through with as little added
latency as possible, and a general ASGI stack costs several times the work of the request
itself (a FastAPI + httpx pass-through manages ~600 requests/s on two cores, this ~10x that).
This module does only what SAGE's servers need:

* keep-alive connections, requests handled one after another per connection; an idle
  connection is closed after ``idle_timeout_s``, one whose request head does not arrive
  within ``header_timeout_s`` (or whose body stalls for ``read_timeout_s``) gets 408 and
  is closed, so slow or stuck clients cannot hold connections for ever. Each connection
  keeps one deadline (a timestamp: nothing to create per request); one sweeper task per
  server, ticking at a quarter of the shortest timeout (at most once a second), closes
  the connections past theirs;
* routes by method and path, with path parameters (``/v1/jobs/{job_id}``, in
  ``request.params``, percent-decoded);
* a request id: ``x-request-id`` as the client sent it (or a new one), in ``request.id``
  and on the answer;
* optional CORS (``cors_origins``): preflight ``OPTIONS`` answered, allowed origins named
  on every answer;
* JSON responses written in one ``write`` call, with ``Content-Length``;
* streamed responses (server-sent events) with chunked encoding and write backpressure;
* a body limit: a larger body is read and discarded, then answered with 413, so the client
  gets the error instead of a reset connection; malformed HTTP gets 400 and a closed
  connection. Handlers' exceptions become 500s; the server keeps serving;
* an optional ``authorize`` hook that sees each request's head before any of its body is
  read: a refused request is answered (401...) without reading its body, and when it
  announced one the connection half-closes after the answer (what the peer still sends is
  discarded as it arrives, never parsed or kept);
* a draining close: requests in progress finish, later ones get 503 and ``Retry-After``;
* a client that disconnects cancels its request's handler at once, whatever it awaits (a
  place in a queue, a backend's answer, a stream's next chunk), so that work nobody will
  read stops there: the gateway's queued request leaves its queue, a forwarded one closes
  its upstream connection, an engine frees the request's slot before its next step. Routes
  whose handler must finish whatever the client does (a change it asked for) are
  registered with ``cancellable=False``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import httptools
import orjson

from sage.common.errors import SageError

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
REQUEST_ID = "x-request-id"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")  # what a client's id may be


_ID_PREFIX = uuid.uuid4().hex[:16]  # this process's: ids are unique across processes
_ID_COUNTER = itertools.count()


def request_id(headers: Mapping[str, str]) -> str:
    """The id a client gave its request in ``x-request-id`` (if it is a sane one: up to
    128 printable characters, no spaces), else a new one (32 hex digits: a random prefix
    of this process and a counter, cheaper than a UUID per request)."""
    given = headers.get(REQUEST_ID)
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


class Request:
    """One HTTP request: method, path, query, lower-cased header names, body bytes, its
    path parameters (``params``) and its id (``id``: ``x-request-id``, sent or made)."""

    __slots__ = ("body", "headers", "id", "keep_alive", "method", "params", "path", "query")

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
        self.params: dict[str, str] = {}
        self.id = request_id(headers)

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


class HttpError(SageError):
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
        self.closed_after_answer = False  # a pipelined request stalled: close after this one
        self.busy = False
        self.task: asyncio.Task[None] | None = None  # handling the current request
        self.left = False  # the client disconnected while a request was being handled
        self.idle = asyncio.Event()  # set while no request is being handled
        self.idle.set()
        self.closed = False
        self.can_write = asyncio.Event()
        self.can_write.set()
        # The connection's one deadline (loop time; None: none) and what passing it means;
        # the server's sweeper calls ``expire`` once the deadline has passed.
        self.deadline: float | None = None
        self.expire: Callable[[], None] = self._idle_expired
        self._reset()

    # -- deadlines: re-set as the connection moves between reading, handling and idle ------

    def _arm(self, seconds: float | None, expire: Callable[[], None]) -> None:
        if seconds is None or self.closed:
            self.deadline = None
        else:
            self.deadline = self.server._loop.time() + seconds
            self.expire = expire

    def _disarm(self) -> None:
        self.deadline = None

    def _idle_expired(self) -> None:
        """Nothing came on a kept-alive connection for ``idle_timeout_s``: close it."""
        if self.transport is not None and not self.busy and not self.closed:
            self.transport.close()

    def _read_expired(self) -> None:
        """A request's head (or its body) did not arrive in time: 408, then close."""
        if not self.busy:
            self._fail(408, "the request did not arrive in time; send it whole, without pauses")
        else:  # answering an earlier request: close once it is out
            self.closed_after_answer = True

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
        self._arm(self.server.idle_timeout_s, self._idle_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._disarm()
        self.can_write.set()
        if not self.busy:
            self.idle.set()
        elif self.task is not None and not self.task.done():
            # Nobody will read the answer: stop what the handler awaits now, not when its
            # next chunk would have found the connection closed (see ``_handle``).
            self.left = True
            self.task.cancel()
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
        self._arm(self.server.header_timeout_s, self._read_expired)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        parsed = httptools.parse_url(self.url)
        self.path = parsed.path.decode("latin-1")
        self.query = (parsed.query or b"").decode("latin-1")
        self._arm(self.server.read_timeout_s, self._read_expired)  # until the body is in
        authorize = self.server.authorize
        method = self.parser.get_method().decode()
        if authorize is None or self.server.is_preflight(method, self.headers):
            return  # a CORS preflight carries no credentials: it is answered without them
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
        if self.deadline is not None:  # the body is still coming: it has read_timeout_s again
            self._arm(self.server.read_timeout_s, self._read_expired)
        self.size += len(body)
        if self.size <= self.server.max_body:
            self.body.append(body)
        elif self.size > _DISCARD_LIMIT:
            self._fail(413, f"request body over {self.server.max_body} bytes")

    def on_message_complete(self) -> None:
        self._disarm()
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
            self.task = self.server._loop.create_task(self._handle(*self.pending.popleft()))
        else:
            self.busy = False
            self.idle.set()
            if self.deadline is None:  # no request being read: the connection is idle
                self._arm(self.server.idle_timeout_s, self._idle_expired)

    async def _handle(self, request: Request, refusal: HttpError | None) -> None:
        """Answer ``request``, then go on to the next one.

        When the client disconnects meanwhile, ``connection_lost`` cancels this task: the
        ``CancelledError`` comes out of whatever the handler (or the stream's producer)
        awaits, whose ``finally`` clauses release what it holds, and ends here.
        """
        try:
            await self._answer(request, refusal)
        except asyncio.CancelledError:
            if not self.left:
                raise  # cancelled from outside (the loop is shutting down): pass it on
            logger.debug(
                "%s %s: the client left; its handler was cancelled (request %s)",
                request.method,
                request.path,
                request.id,
            )
        finally:
            self._next()

    async def _answer(self, request: Request, refusal: HttpError | None) -> None:
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
            logger.exception("%s %s failed (request %s)", request.method, request.path, request.id)
            response = Response(status=500, body=server.error_body(500, f"internal error: {exc}"))
        response.headers[REQUEST_ID] = request.id
        server.add_cors(request, response.headers)
        if server.draining or self.closed_after_answer:
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
                if self._gone():  # (a route that is not cancellable: see ``route``)
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
        self._disarm()
        if self.transport is not None and not self.closed:
            body = self.server.error_body(status, message)
            self._write(Response(status=status, body=body), keep_alive=False)
            self.transport.close()
        self.closed = True


def _finishing(handler: Handler) -> Handler:
    """``handler``, run to its end even when the client leaves (its task is cancelled)."""

    async def finish(request: Request) -> Response | StreamResponse:
        running = asyncio.ensure_future(handler(request))
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            running.add_done_callback(_drop_answer)
            raise

    return finish


def _drop_answer(done: asyncio.Future[Response | StreamResponse]) -> None:
    """A finished handler's answer that no client will read: close a stream's producer
    (it may hold an instance's slot); a failure is logged, not raised."""
    if done.cancelled():
        return
    error = done.exception()
    if error is not None:
        if not isinstance(error, HttpError):
            logger.warning("a handler whose client had left failed: %r", error)
        return
    answer = done.result()
    aclose = getattr(answer.chunks, "aclose", None) if isinstance(answer, StreamResponse) else None
    if aclose is not None:
        closing = asyncio.ensure_future(aclose())
        _CLOSING.add(closing)  # the loop keeps only a weak reference to a task
        closing.add_done_callback(_CLOSING.discard)


_CLOSING: set[asyncio.Future[None]] = set()


_PARAMETER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _pattern(path: str) -> re.Pattern[str] | None:
    """The regular expression of a route with ``{name}`` segments (``None``: a plain path)."""
    if "{" not in path:
        return None
    parts = _PARAMETER.split(path)  # text, name, text, name, ..., text
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)" for i, part in enumerate(parts)
    )
    return re.compile(f"^{regex}$")


class HttpServer:
    """Routes requests to async handlers; see the module docstring.

    Args:
        name: For logs.
        max_body: Largest request body accepted, in bytes (larger: 413).
        error_body: Builds the JSON body of an error from (status, message).
        authorize: Sees each request's head before its body is read, and may refuse it
            (see :data:`Authorizer`); ``None``: every request goes to its handler.
        header_timeout_s: A request's head must arrive within this many seconds of its
            first byte (else 408 and the connection closes); ``None``: no limit.
        read_timeout_s: Longest pause while a request's body arrives (else 408).
        idle_timeout_s: A kept-alive connection with no request for this long is closed
            (longer than the 5 s clients such as httpx keep idle connections).
        cors_origins: Origins allowed to call from a browser (``["*"]``: any); ``None``:
            no CORS headers and no preflight answers.
    """

    def __init__(
        self,
        name: str = "sage-http",
        *,
        max_body: int = 8 * 1024 * 1024,
        error_body: ErrorBody = _default_error_body,
        authorize: Authorizer | None = None,
        header_timeout_s: float | None = 10.0,
        read_timeout_s: float | None = 60.0,
        idle_timeout_s: float | None = 75.0,
        cors_origins: Sequence[str] | None = None,
    ) -> None:
        self.name = name
        self.max_body = max_body
        self.error_body = error_body
        self.authorize = authorize
        self.header_timeout_s = header_timeout_s
        self.read_timeout_s = read_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.cors_origins = None if cors_origins is None else frozenset(cors_origins)
        self._routes: dict[tuple[str, str], Handler] = {}
        self._patterns: list[tuple[str, re.Pattern[str], Handler]] = []
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._connections: set[_Connection] = set()
        self.draining = False  # close() began: requests in progress finish, new ones get 503
        self._loop: asyncio.AbstractEventLoop  # the loop ``start`` runs on (set there)

    def route(self, method: str, path: str, handler: Handler, *, cancellable: bool = True) -> None:
        """Send ``method path`` to ``handler``; ``{name}`` segments of ``path`` match one
        path segment each and reach the handler in ``request.params``.

        A client that disconnects cancels its handler (see the module docstring), unless
        ``cancellable`` is false: then the handler runs to its end (a change the client
        asked for is made whole, never half) and its answer is dropped.
        """
        if not cancellable:
            handler = _finishing(handler)
        pattern = _pattern(path)
        if pattern is None:
            self._routes[(method, path)] = handler
        else:
            self._patterns.append((method, pattern, handler))

    def _methods(self, path: str) -> set[str]:
        """The methods some route answers on ``path``."""
        methods = {m for m, p in self._routes if p == path}
        methods.update(m for m, pattern, _ in self._patterns if pattern.match(path))
        return methods

    async def _dispatch(self, request: Request) -> Response | StreamResponse:
        if self.is_preflight(request.method, request.headers):
            return self._preflight(request)
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            for method, pattern, candidate in self._patterns:
                if method == request.method and (found := pattern.match(request.path)):
                    request.params = {k: unquote(v) for k, v in found.groupdict().items()}
                    handler = candidate
                    break
        if handler is None:
            if self._methods(request.path):
                raise HttpError(405, f"method {request.method} is not allowed on {request.path}")
            raise HttpError(404, f"no route {request.method} {request.path}")
        return await handler(request)

    # -- CORS ------------------------------------------------------------------------------

    def is_preflight(self, method: str, headers: Mapping[str, str]) -> bool:
        """Whether a request is a CORS preflight this server answers."""
        return (
            self.cors_origins is not None
            and method == "OPTIONS"
            and "access-control-request-method" in headers
        )

    def _allowed_origin(self, headers: Mapping[str, str]) -> str | None:
        origin = headers.get("origin")
        allowed = self.cors_origins
        if origin is None or allowed is None:
            return None
        if "*" in allowed:
            return "*"
        return origin if origin in allowed else None

    def add_cors(self, request: Request, headers: dict[str, str]) -> None:
        """Name the request's origin on its answer when it is allowed (CORS)."""
        origin = self._allowed_origin(request.headers)
        if origin is not None:
            headers["access-control-allow-origin"] = origin
            headers["access-control-expose-headers"] = REQUEST_ID
            if origin != "*":
                headers["vary"] = "origin"

    def _preflight(self, request: Request) -> Response:
        methods = self._methods(request.path)
        if self._allowed_origin(request.headers) is None or not methods:
            return Response(status=403, body=self.error_body(403, "origin or path not allowed"))
        asked = request.headers.get("access-control-request-headers", "")
        headers = {
            "access-control-allow-methods": ", ".join(sorted(methods)),
            "access-control-allow-headers": asked or "authorization, content-type",
            "access-control-max-age": "600",
        }
        return Response(status=204, headers=headers)

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
        timeouts = [
            t for t in (self.header_timeout_s, self.read_timeout_s, self.idle_timeout_s) if t
        ]
        if timeouts:
            tick = min(max(min(timeouts) / 4, 0.01), 1.0)
            self._sweeper = loop.create_task(self._sweep(tick))
        return int(self._server.sockets[0].getsockname()[1])

    async def _sweep(self, tick: float) -> None:
        """Every ``tick`` seconds, expire the connections past their deadline (one task per
        server: a deadline costs a timestamp, not a timer, on the request path)."""
        loop = self._loop
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for connection in list(self._connections):
                deadline = connection.deadline
                if deadline is not None and now >= deadline:
                    connection.deadline = None
                    connection.expire()

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
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        busy = [c.idle.wait() for c in self._connections if c.busy]
        if busy:
            await asyncio.wait([asyncio.ensure_future(w) for w in busy], timeout=grace_s)
        for connection in list(self._connections):
            if connection.transport is not None:
                connection.transport.close()
        await self._server.wait_closed()
        self._server = None
