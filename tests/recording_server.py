"""A loopback OpenAI-style server that records what each request carried.

For the tests of the scheduling fields (which headers reached the server) and of the
client's retries (when each try arrived). Chat (streamed or not), completions and
embeddings answer at once with fixed content; :meth:`RecordingServer.refuse` makes the next
requests get an error status (with a ``Retry-After`` if given) instead.

Example:
    >>> with RecordingServer() as server:                     # doctest: +SKIP
    ...     server.refuse((429, "2"))
    ...     ...                                               # the first request gets 429
    ...     server.fields()                                   # [(priority, slo_ms), ...]
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson

from sage.common.concurrency import LoopThread
from sage.common.http import HttpError, HttpServer, Request, Response, StreamResponse

__all__ = ["EMBEDDING", "LLM", "RecordingServer", "Seen"]

LLM, EMBEDDING = "rec-llm", "rec-emb"
ANSWER = "recorded"


@dataclass(frozen=True)
class Seen:
    """One request as it arrived."""

    path: str
    priority: str | None  # the x-sage-priority header
    slo_ms: str | None  # the x-sage-slo-ms header
    body: dict[str, Any]
    at: float  # time.monotonic() on arrival
    answered: int  # the status it got


def _error(status: int, retry_after: str | None) -> HttpError:
    body = orjson.dumps({"error": {"message": f"refused with {status}", "type": "test"}})
    return HttpError(status, "refused", body, {"retry-after": retry_after} if retry_after else {})


class RecordingServer:
    """The server, on its own event-loop thread at ``127.0.0.1`` (a context manager)."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._refusals: deque[tuple[int, str | None]] = deque()
        self._lock = threading.Lock()
        self._loop: LoopThread | None = None
        self._http: HttpServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The ``/v1`` base URL."""
        return f"http://127.0.0.1:{self.port}/v1"

    def refuse(self, *answers: tuple[int, str | None]) -> None:
        """Answer the next requests with these ``(status, Retry-After or None)``, in order."""
        with self._lock:
            self._refusals.extend(answers)

    def fields(self, path: str | None = None) -> list[tuple[str | None, str | None]]:
        """``(x-sage-priority, x-sage-slo-ms)`` of each request (to ``path``), in order."""
        with self._lock:
            return [(s.priority, s.slo_ms) for s in self.seen if path is None or s.path == path]

    def _arrived(self, request: Request) -> tuple[dict[str, Any], HttpError | None]:
        body = request.json()
        with self._lock:
            refusal = self._refusals.popleft() if self._refusals else None
            self.seen.append(
                Seen(
                    request.path,
                    request.headers.get("x-sage-priority"),
                    request.headers.get("x-sage-slo-ms"),
                    body,
                    time.monotonic(),
                    200 if refusal is None else refusal[0],
                )
            )
        return body, None if refusal is None else _error(*refusal)

    async def _chat(self, request: Request) -> Response | StreamResponse:
        body, refusal = self._arrived(request)
        if refusal is not None:
            raise refusal
        if body.get("stream"):

            async def events() -> Any:
                for word in ANSWER.split():
                    chunk = {
                        "id": "chatcmpl-rec",
                        "model": LLM,
                        "choices": [{"index": 0, "delta": {"content": word}}],
                    }
                    yield b"data: " + orjson.dumps(chunk) + b"\n\n"
                yield b"data: [DONE]\n\n"

            return StreamResponse(events())
        message = {"role": "assistant", "content": ANSWER}
        answer = {"model": LLM, "choices": [{"index": 0, "message": message}]}
        return Response(status=200, body=orjson.dumps(answer))

    async def _completion(self, request: Request) -> Response:
        _, refusal = self._arrived(request)
        if refusal is not None:
            raise refusal
        answer = {"model": LLM, "choices": [{"index": 0, "text": ANSWER}]}
        return Response(status=200, body=orjson.dumps(answer))

    async def _embeddings(self, request: Request) -> Response:
        body, refusal = self._arrived(request)
        if refusal is not None:
            raise refusal
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"index": i, "embedding": [float(len(t)), 1.0]} for i, t in enumerate(texts)]
        return Response(status=200, body=orjson.dumps({"model": EMBEDDING, "data": data}))

    def start(self) -> RecordingServer:
        """Listen on a free loopback port."""
        loop = LoopThread("test-recording-server")
        http = HttpServer("test-recording-server")
        http.route("POST", "/v1/chat/completions", self._chat)
        http.route("POST", "/v1/completions", self._completion)
        http.route("POST", "/v1/embeddings", self._embeddings)
        self.port = loop.call(http.start("127.0.0.1", 0))
        self._loop, self._http = loop, http
        return self

    def stop(self) -> None:
        """Stop listening and end the loop thread."""
        if self._loop is not None and self._http is not None:
            self._loop.call(self._http.close())
            self._loop.stop()
        self._loop = self._http = None

    def __enter__(self) -> RecordingServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
