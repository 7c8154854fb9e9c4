"""Send a trace to a gateway, open loop, and record what happened to every request.

Open loop: each request leaves at its scheduled offset whatever the earlier ones are doing
(waiting on the event loop's timer until then is the load generator's job), so a slow
policy shows as growing latency instead of a lower sending rate. Latency is counted from
the *scheduled* arrival, so a late send (a busy client) is charged, not hidden.

LLM requests are streamed (server-sent events) to measure the time to the first token; the
usage event gives the token counts. Every request is sent over
:class:`~sage.common.http.HttpPool` (keep-alive connections, one per request in flight).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import orjson

from sage.benchmark.control_plane.config import tenant_key
from sage.benchmark.control_plane.workload import TraceRequest
from sage.common.errors import ConfigError, GatewayError
from sage.common.http import BackendUnavailable, HttpPool

__all__ = [
    "DriveResult",
    "Endpoint",
    "RequestRecord",
    "TimedAction",
    "drive",
    "management",
    "measure_capacity",
]

logger = logging.getLogger(__name__)

_HEADERS = {"content-type": "application/json"}
_PATHS = {"llm": "/chat/completions", "embedding": "/embeddings"}


@dataclass(frozen=True)
class Endpoint:
    """Where an OpenAI-compatible server listens: ``http://host:port/v1``."""

    host: str
    port: int
    base_path: str = "/v1"
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """``http://127.0.0.1:8000`` or ``.../v1``.

        Raises:
            ConfigError: not an http(s) URL with a host.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{url!r} is not an http(s) URL; use e.g. http://127.0.0.1:8000")
        tls = parts.scheme == "https"
        path = parts.path.rstrip("/")
        host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
        return cls(host, parts.port or (443 if tls else 80), path or "/v1", tls)

    @property
    def url(self) -> str:
        """The base URL (``http://host:port/v1``)."""
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}{self.base_path}"

    def pool(self, limit: int) -> HttpPool:
        """A connection pool to this server (call inside the event loop)."""
        context = ssl.create_default_context() if self.tls else None
        return HttpPool(self.host, self.port, limit=limit, connect_timeout_s=10.0, ssl=context)

    def path(self, api_path: str) -> str:
        """``/chat/completions`` under the base path."""
        return self.base_path + api_path


@dataclass
class RequestRecord:
    """What happened to one request; times in seconds from the start of the trace.

    Attributes:
        index: The request's index in the trace.
        kind: ``"llm"`` or ``"embedding"``.
        request_class: Name of its class.
        priority: Its priority.
        slo_ms: Its latency objective.
        idempotent: Whether the gateway may retry it elsewhere (embeddings, unstreamed chats).
        scheduled_s: When it was due to be sent.
        sent_s: When it was sent.
        first_token_s: When the first generated text arrived (streamed LLM requests).
        finished_s: When the answer was complete (or the request failed).
        prompt_tokens: Prompt tokens (as the server counted them; else the trace's words).
        output_tokens: Generated tokens (usage, else content events counted).
        texts: Texts embedded.
        status: HTTP status (0: no answer).
        error: Why it failed (``None`` when it succeeded).
        tenant: The tenant that sent it (empty: no tenants).
    """

    index: int
    kind: str
    request_class: str
    priority: int
    slo_ms: float
    idempotent: bool
    scheduled_s: float
    sent_s: float = 0.0
    first_token_s: float | None = None
    finished_s: float = 0.0
    prompt_tokens: int = 0
    output_tokens: int = 0
    texts: int = 0
    status: int = 0
    error: str | None = None
    tenant: str = ""

    @property
    def ok(self) -> bool:
        """Whether it succeeded."""
        return self.error is None

    @property
    def latency_s(self) -> float:
        """Seconds from its scheduled arrival to its complete answer."""
        return self.finished_s - self.scheduled_s

    @property
    def ttft_s(self) -> float | None:
        """Seconds from its scheduled arrival to its first token (streamed LLM requests)."""
        return None if self.first_token_s is None else self.first_token_s - self.scheduled_s

    @property
    def slo_met(self) -> bool:
        """Succeeded within its SLO."""
        return self.ok and self.latency_s * 1000.0 <= self.slo_ms


@dataclass(frozen=True)
class TimedAction:
    """Something to do at an offset into the trace (kill an instance, say)."""

    at_s: float
    label: str
    run: Callable[[], str]


@dataclass
class DriveResult:
    """Records in trace order, and the timed actions that ran (``{"at_s", "event"}``)."""

    records: list[RequestRecord]
    events: list[dict[str, Any]] = field(default_factory=list)


def _error_text(status: int, body: bytes) -> str:
    try:
        message = orjson.loads(body)["error"]["message"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        message = body.decode(errors="replace").strip()
    return f"HTTP {status}: {str(message)[:200]}"


class _Sender:
    """Sends requests of a trace and fills in their records."""

    def __init__(
        self,
        pool: HttpPool,
        endpoint: Endpoint,
        models: dict[str, str],
        stream: bool,
        timeout_s: float,
    ) -> None:
        self.pool, self.endpoint, self.models = pool, endpoint, models
        self.stream, self.timeout_s = stream, timeout_s
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()

    def body(self, request: TraceRequest) -> bytes:
        """The request's JSON body."""
        return orjson.dumps(request.body(self.models[request.kind], self.stream))

    async def send(self, request: TraceRequest, body: bytes) -> RequestRecord:
        """Send one request now; its record (failures are recorded, never raised)."""
        stream = self.stream and request.kind == "llm"
        record = RequestRecord(
            request.index,
            request.kind,
            request.request_class,
            request.priority,
            request.slo_ms,
            idempotent=not stream,
            scheduled_s=request.at_s,
            sent_s=self.loop.time() - self.t0,
            prompt_tokens=request.prompt_tokens * max(1, request.texts),
            texts=request.texts,
            tenant=request.tenant,
        )
        headers = _HEADERS
        if request.tenant:  # its tenant's key: the gateway tells tenants apart by key
            headers = {**_HEADERS, "authorization": f"Bearer {tenant_key(request.tenant)}"}
        try:
            async with asyncio.timeout(self.timeout_s):
                path = self.endpoint.path(_PATHS[request.kind])
                result = await self.pool.request("POST", path, body, headers, stream=stream)
                record.status = result.status
                if result.chunks is not None:
                    chunks = cast(AsyncGenerator[bytes, None], result.chunks)
                    async with contextlib.aclosing(chunks):  # frees the connection
                        if result.status != 200:
                            record.error = _error_text(
                                result.status, b"".join([c async for c in chunks])
                            )
                        else:
                            await self._read_events(chunks, record)
                elif result.status != 200:
                    record.error = _error_text(result.status, result.body)
                else:
                    self._read_answer(result.body, record)
        except TimeoutError:
            record.error = f"no complete answer within {self.timeout_s:g} s"
        except BackendUnavailable as exc:
            record.error = f"connection failed: {exc}"
        record.finished_s = self.loop.time() - self.t0
        return record

    async def _read_events(self, chunks: AsyncIterator[bytes], record: RequestRecord) -> None:
        buffer, done, counted = b"", False, 0
        async for chunk in chunks:
            buffer += chunk
            while (end := buffer.find(b"\n\n")) >= 0:
                event, buffer = buffer[:end], buffer[end + 2 :]
                if not event.startswith(b"data: "):
                    continue
                data = event[6:]
                if data == b"[DONE]":
                    done = True
                    continue
                payload = orjson.loads(data)
                if "error" in payload:
                    record.error = f"error event: {str(payload['error'])[:200]}"
                    return
                for choice in payload.get("choices") or ():
                    if (choice.get("delta") or {}).get("content"):
                        counted += 1
                        if record.first_token_s is None:
                            record.first_token_s = self.loop.time() - self.t0
                usage = payload.get("usage")
                if usage:
                    record.prompt_tokens = int(usage.get("prompt_tokens", record.prompt_tokens))
                    record.output_tokens = int(usage.get("completion_tokens", counted))
        if not done:
            record.error = "the stream ended before [DONE]"
        elif not record.output_tokens:
            record.output_tokens = counted

    def _read_answer(self, body: bytes, record: RequestRecord) -> None:
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            record.error = "the answer is not JSON"
            return
        usage = payload.get("usage") or {}
        record.prompt_tokens = int(usage.get("prompt_tokens", record.prompt_tokens))
        if record.kind == "llm":
            record.output_tokens = int(usage.get("completion_tokens", 0))
        else:
            record.texts = len(payload.get("data") or ())


async def drive(
    url: str,
    trace: Sequence[TraceRequest],
    models: dict[str, str],
    *,
    stream: bool = True,
    timeout_s: float = 600.0,
    warmup: Sequence[TraceRequest] = (),
    on_done: Callable[[RequestRecord], None] | None = None,
    actions: Sequence[TimedAction] = (),
    after_warmup: Callable[[], Awaitable[object]] | None = None,
) -> DriveResult:
    """Send ``warmup`` (all at once, awaited), then ``trace`` open loop; record each request.

    Args:
        url: Base URL of the gateway (``http://host:port`` or ``.../v1``).
        trace: Requests with their offsets.
        models: Model to request per kind (``{"llm": ..., "embedding": ...}``).
        stream: Stream LLM answers (for TTFT).
        timeout_s: Per request.
        warmup: Requests sent before the trace starts, not recorded.
        on_done: Called with each record as its request ends (progress bars).
        actions: Run at their offsets into the trace (on the event loop: keep them short).
        after_warmup: Awaited once the warm-up is answered, before the trace starts (to read
            the gateway's figures that the trace's are counted from).

    Raises:
        GatewayError: a warm-up request failed (the gateway is unreachable, or does not
            serve the models): nothing would succeed, so the trace is not sent.
    """
    endpoint = Endpoint.parse(url)
    loop = asyncio.get_running_loop()
    pool = endpoint.pool(limit=max(64, len(trace) + len(warmup)))
    handles: list[asyncio.TimerHandle] = []
    events: list[dict[str, Any]] = []
    try:
        sender = _Sender(pool, endpoint, models, stream, timeout_s)
        if warmup:
            done = await asyncio.gather(*(sender.send(r, sender.body(r)) for r in warmup))
            failed = [r for r in done if not r.ok]
            if failed:
                raise GatewayError(
                    f"warm-up requests to {endpoint.url} failed ({failed[0].error}); check that "
                    "the gateway runs there and serves the models "
                    f"{', '.join(sorted(set(models.values())))}"
                )
        if after_warmup is not None:
            await after_warmup()
        bodies = [sender.body(r) for r in trace]
        sender.t0 = t0 = loop.time() + 0.01

        def run_action(action: TimedAction) -> None:
            at = loop.time() - t0
            try:
                events.append({"at_s": at, "event": action.run()})
            except Exception as exc:  # a failed action is reported, the run goes on
                logger.exception("%s failed", action.label)
                events.append({"at_s": at, "event": f"{action.label} failed: {exc}"})

        handles = [loop.call_at(t0 + a.at_s, run_action, a) for a in actions]

        async def one(request: TraceRequest, body: bytes) -> RequestRecord:
            record = await sender.send(request, body)
            if on_done is not None:
                on_done(record)
            return record

        tasks = []
        for request, body in zip(trace, bodies, strict=True):
            delay = t0 + request.at_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(one(request, body)))
        records = list(await asyncio.gather(*tasks))
    finally:
        for handle in handles:
            handle.cancel()
        await pool.close()
    return DriveResult(records, events)


async def measure_capacity(
    targets: Sequence[tuple[str, Sequence[TraceRequest]]],
    models: dict[str, str],
    timeout_s: float = 600.0,
) -> float:
    """Requests per second completed when each target gets its requests all at once.

    A short closed measurement of what instances can do (for engines without a timing
    model): fill every instance's batch once and time until the last answer.

    Args:
        targets: ``(base URL, requests)`` pairs, all sent at the same moment.
        models: Model per kind.
        timeout_s: Per request.

    Raises:
        GatewayError: a request failed (the figure would be meaningless).
    """
    loop = asyncio.get_running_loop()
    pools: list[HttpPool] = []
    try:
        jobs = []
        for url, requests in targets:
            endpoint = Endpoint.parse(url)
            pool = endpoint.pool(limit=max(1, len(requests)))
            pools.append(pool)
            sender = _Sender(pool, endpoint, models, stream=False, timeout_s=timeout_s)
            jobs += [sender.send(r, sender.body(r)) for r in requests]
        started = loop.time()
        records = await asyncio.gather(*jobs)
        elapsed = loop.time() - started
    finally:
        for pool in pools:
            await pool.close()
    failed = [r for r in records if not r.ok]
    if failed:
        raise GatewayError(f"capacity measurement failed: {failed[0].error}")
    return len(records) / max(elapsed, 1e-6)


async def management(
    url: str, method: str, path: str, payload: Any = None, api_key: str | None = None
) -> Any:
    """Call a gateway management route (``/v1/management/...``) with ``api_key`` (if the
    gateway wants one); its JSON answer.

    Raises:
        GatewayError: unreachable, or an answer other than 200.
    """
    endpoint = Endpoint.parse(url)
    pool = endpoint.pool(limit=1)
    body = b"" if payload is None else orjson.dumps(payload)
    headers = {**_HEADERS, "authorization": f"Bearer {api_key}"} if api_key else _HEADERS
    try:
        result = await asyncio.wait_for(
            pool.request(method, endpoint.path(path), body, headers), 30.0
        )
    except (BackendUnavailable, TimeoutError) as exc:
        raise GatewayError(f"the gateway at {endpoint.url} did not answer: {exc}") from exc
    finally:
        await pool.close()
    if result.status != 200:
        raise GatewayError(
            f"{method} {endpoint.path(path)}: {_error_text(result.status, result.body)}",
            status=result.status,
        )
    return orjson.loads(result.body)
