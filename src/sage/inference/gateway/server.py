"""``UnifiedAPIServer``: the OpenAI-compatible gateway in front of SAGE's engine servers.

Routes:

* ``POST /v1/chat/completions``, ``POST /v1/completions``, ``POST /v1/embeddings`` — sent to a
  healthy instance serving the requested model (the one with the most capacity left). When
  every one is at ``max_concurrent_requests`` the request waits in the gateway's dispatcher,
  which lets waiting requests go in the order of the scheduling policy
  (:mod:`~sage.inference.control_plane.dispatcher`). Bodies pass through as
  bytes; streamed answers are relayed event by event.
* ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text), ``GET /openapi.json``
  (the OpenAPI document of these routes, :mod:`~sage.inference.gateway.openapi`).
* ``GET|POST /v1/management/instances``, ``DELETE /v1/management/instances/<id>``,
  ``GET|PUT /v1/management/policy``, ``GET /v1/management/metrics`` (JSON).

The gateway reads ``model``, ``stream``, the scheduling fields (``priority``, ``slo_ms``, or the
headers ``x-sage-priority``, ``x-sage-slo-ms``; ``x-sage-class`` names the request's class in
the metrics) and the sizes it predicts from; an unknown model gets 404, invalid JSON or a bad
scheduling field 400. The engine validates the rest and its 4xx answer is passed on. An
instance that cannot be reached or times out leaves the rotation (health checks bring it
back), and a request whose answer had not started reaching the client (every non-streamed
request, and a streamed one before its first byte) runs again on another instance of the
model, at the head of the queue; when none is left it gets 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from time import perf_counter
from typing import Any, ClassVar
from urllib.parse import unquote

import orjson
from pydantic import ValidationError

from sage.common.concurrency import run_loop
from sage.common.errors import ConfigError
from sage.common.http import (
    BackendUnavailable,
    HttpError,
    HttpServer,
    Request,
    Response,
    StreamResponse,
    json_response,
)
from sage.common.observability.prometheus import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE
from sage.common.observability.prometheus import Column, MetricFamily, columns, render
from sage.inference.config import (
    BackendInstanceConfig,
    SchedulingPolicyType,
    UnifiedServerConfig,
)
from sage.inference.control_plane.batching import (
    batch_key,
    merge_inputs,
    split_answer,
    texts_of,
)
from sage.inference.control_plane.dispatcher import (
    Dispatcher,
    NoInstance,
    QueueFull,
    Ticket,
    settle_riders,
)
from sage.inference.control_plane.instances import Instance, InstanceRegistry
from sage.inference.control_plane.queues import PendingRequest
from sage.inference.gateway.openapi import openapi_json
from sage.inference.protocol import (
    InstanceSpec,
    ModelCard,
    ModelList,
    error_from_validation,
    openai_error,
)

__all__ = ["UnifiedAPIServer"]

logger = logging.getLogger(__name__)


def _error(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> HttpError:
    return HttpError(status, message, openai_error(status, message, param, code), headers)


_SCHEDULING = ("priority", "slo_ms")
_PROBE_TIMEOUT_S = 2.0


_PRIORITY_BOUND = 2**63  # priorities are 64-bit integers (a larger one overflows a float)


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError("priority")
    try:
        priority = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError("priority") from None
    if not -_PRIORITY_BOUND <= priority < _PRIORITY_BOUND:
        raise ValueError("priority")
    return priority


def _as_slo(value: Any) -> float:
    try:
        slo = float(value)
    except (TypeError, ValueError):
        raise ValueError("slo_ms") from None
    if isinstance(value, bool) or not 0 < slo < math.inf:
        raise ValueError("slo_ms")
    return slo


def _tokens(kind: str, body: dict[str, Any]) -> int:
    """Tokens whose cost predicts the request's service time.

    For generation, the tokens to decode (``max_tokens``; the engine's 256 when absent):
    decoding dominates, and a prompt token costs a small fraction of a generated one, so
    counting prompt tokens too would make long prompts look many times slower than they
    are. For embeddings, the input tokens (about 4 characters a token).
    """
    if kind == "embedding":
        return sum(len(text) for text in texts_of(body) or ()) // 4 + 1
    limit = body.get("max_tokens", body.get("max_completion_tokens"))
    return limit if isinstance(limit, int) and limit > 0 else 256


def _split(status: int, answer: bytes, counts: list[int]) -> list[bytes] | None:
    """A batched call's answer per member, or ``None`` if it is not a good one."""
    if status != 200:
        return None
    try:
        return split_answer(answer, counts)
    except (ValueError, orjson.JSONDecodeError, AttributeError, TypeError):
        logger.warning("a batched embedding answer could not be split; members go alone")
        return None


_KIND_OF_PATH = {
    "/v1/chat/completions": "llm",
    "/v1/completions": "llm",
    "/v1/embeddings": "embedding",
}


class _Relay:
    """A streamed answer passed on from an instance chunk by chunk (an async iterator).

    It holds the request's slot on the instance until the stream ends or :meth:`aclose`,
    which also works before the first chunk was asked for (a client that left while its
    request waited): an async generator's ``finally`` never runs if it never started, so the
    slot would stay taken and the instance look busy for good.

    Args:
        chunks: The instance's streamed body.
        settle: Called once, with whether the stream failed and when its first chunk came.
        timeout_s: Longest to wait for the instance's first chunk when closing unstarted.
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        settle: Callable[[bool, float | None], None],
        timeout_s: float,
    ) -> None:
        self._chunks = chunks
        self._settle = settle
        self._timeout_s = timeout_s
        self._started = False
        self._first: float | None = None
        self._closed = False

    def __aiter__(self) -> _Relay:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        self._started = True
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            await self._close(failed=False)
            raise
        except BaseException:
            await self._close(failed=True)
            raise
        if self._first is None:
            self._first = perf_counter()
        return chunk

    async def aclose(self) -> None:
        """Stop relaying (the client went away): give the slot and the connection back."""
        await self._close(failed=True)

    async def _close(self, failed: bool) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if not self._started:
                # The upstream body is a generator too: start it so that closing it releases
                # its connection (it was answering, so its first chunk is on the way).
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(anext(self._chunks), self._timeout_s)
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self._settle(failed, self._first)


class UnifiedAPIServer:
    """The gateway; see the module docstring.

    Example:
        >>> from sage.inference import UnifiedServerConfig
        >>> server = UnifiedAPIServer(UnifiedServerConfig(port=0))  # start() blocks

    Args:
        config: Listening address, instances, policy and limits.
    """

    # Gateways listening in this process, by port: lets code that runs ``start()`` on a thread
    # (or did not build the server itself) wait for it without polling the port.
    _listening_ports: ClassVar[dict[int, UnifiedAPIServer]] = {}
    _listening_changed: ClassVar[threading.Condition] = threading.Condition()

    def __init__(self, config: UnifiedServerConfig | None = None) -> None:
        self.config = config or UnifiedServerConfig()
        self._keys = accepted_keys(self.config)
        self.registry: InstanceRegistry | None = None
        self.dispatcher: Dispatcher | None = None
        self.port: int | None = None
        self._http: HttpServer | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None
        self._run_owns_shutdown = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.requests = 0
        self.rejected = 0

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Serve until interrupted or :meth:`stop` (blocks).

        Inside an event loop use :meth:`run_async` or :meth:`start_async` instead. To serve in
        the background, run ``start`` on a thread and :meth:`wait_ready` for the port.
        """
        run_loop(self.run_async())

    async def run_async(self, ready: asyncio.Event | None = None) -> None:
        """Start, signal ``ready``, and serve until :meth:`stop_async`."""
        await self.start_async()
        self._run_owns_shutdown = True
        if ready is not None:
            ready.set()
        assert self._stopping is not None
        await self._stopping.wait()
        await self._shutdown()

    def wait_ready(self, timeout: float | None = None) -> int:
        """Block until the server listens (``start`` running on another thread); the port.

        Raises:
            TimeoutError: it did not start within ``timeout`` seconds.
        """
        with self._listening_changed:
            if not self._listening_changed.wait_for(
                lambda: self in self._listening_ports.values(), timeout
            ):
                raise TimeoutError(f"the gateway did not start listening within {timeout} s")
        assert self.port is not None
        return self.port

    @classmethod
    def wait_listening(cls, port: int, timeout: float | None = None) -> UnifiedAPIServer:
        """The gateway of this process listening on ``port``, once it listens.

        For a ``start()`` running on another thread when the caller does not hold the
        server object.

        Raises:
            TimeoutError: none listened on ``port`` within ``timeout`` seconds.
        """
        with cls._listening_changed:
            if not cls._listening_changed.wait_for(lambda: port in cls._listening_ports, timeout):
                raise TimeoutError(f"no gateway of this process listened on port {port}")
            return cls._listening_ports[port]

    def stop(self) -> None:
        """Stop serving; safe from any thread (a ``start`` running elsewhere returns)."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopping.set)

    async def start_async(self) -> int:
        """Listen and start health checks; return the port.

        Raises:
            OSError: the port is taken.
        """
        config = self.config
        self.registry = InstanceRegistry()
        for backend in [*config.llm_backends, *config.embedding_backends]:
            self.registry.add(backend)
        self.dispatcher = Dispatcher(
            self.registry,
            config.scheduling_policy if config.enable_control_plane else "fifo",
            aging_s=config.priority_aging_s,
            batch_max_texts=config.embedding_batch_max_texts,
            batch_wait_s=config.embedding_batch_wait_ms / 1000,
            max_queued=config.max_queued_requests,
        )
        http = HttpServer(
            "sage-gateway", max_body=self.config.max_body_bytes, error_body=_error_body
        )
        for path in _KIND_OF_PATH:
            http.route("POST", path, self._forward)
        http.route("GET", "/v1/models", self._models)
        http.route("GET", "/health", self._health)
        http.route("GET", "/metrics", self._metrics)
        http.route("GET", "/v1/management/instances", self._list_instances)
        http.route("POST", "/v1/management/instances", self._add_instance)
        http.route("DELETE", "/v1/management/instances/", self._remove_instance, prefix=True)
        http.route("GET", "/v1/management/policy", self._get_policy)
        http.route("PUT", "/v1/management/policy", self._set_policy)
        http.route("GET", "/v1/management/metrics", self._management_metrics)
        http.route("GET", "/openapi.json", self._openapi)
        self._http = http
        self._stopping = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.port = await http.start(self.config.host, self.config.port)
        await self._check_all()  # start with every instance's health known
        self._health_task = self._loop.create_task(self._health_loop())
        with self._listening_changed:
            self._listening_ports[self.port] = self
            self._listening_changed.notify_all()
        logger.info("gateway listening on %s:%s", self.config.host, self.port)
        return self.port

    async def stop_async(self) -> None:
        """Stop serving: finish requests in progress (briefly), close connections."""
        if self._stopping is None or self._stopping.is_set():
            return
        self._stopping.set()
        if not self._run_owns_shutdown:  # started with start_async(): shut down here
            await self._shutdown()

    async def _shutdown(self) -> None:
        with self._listening_changed:
            if self.port is not None and self._listening_ports.get(self.port) is self:
                del self._listening_ports[self.port]
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
            self._health_task = None
        if self._http is not None:
            await self._http.close(self.config.shutdown_grace_s)
            self._http = None
        if self.registry is not None:
            for instance in self.registry.all():
                await instance.close()

    # -- auth -------------------------------------------------------------------------------------

    def _check_key(self, request: Request) -> None:
        keys = self._keys
        if not keys:
            return
        given = request.headers.get("authorization", "")
        token = (given[7:] if given.startswith("Bearer ") else "").encode()
        if not any([hmac.compare_digest(token, key) for key in keys]):  # every key compared
            raise _error(
                401,
                "missing or invalid API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )

    # -- the API -------------------------------------------------------------------------------

    def _schedule(
        self, request: Request, kind: str, model: str, body: dict[str, Any]
    ) -> tuple[PendingRequest, bytes]:
        """The request as the dispatcher sees it, and the body to send on.

        Priority and SLO come from the body (``priority``, ``slo_ms``), else the headers
        (``x-sage-priority``, ``x-sage-slo-ms``), else the defaults of the caller's API key,
        of the model, of the gateway. The body fields are removed before forwarding (an
        engine such as vLLM may refuse a priority it does not schedule by).
        """
        config, dispatcher = self.config, self.dispatcher
        assert dispatcher is not None
        priority: Any = body.get("priority", request.headers.get("x-sage-priority"))
        slo_ms: Any = body.get("slo_ms", request.headers.get("x-sage-slo-ms"))
        defaults = []
        if config.api_key_defaults:
            given = request.headers.get("authorization", "")
            if given.startswith("Bearer ") and given[7:] in config.api_key_defaults:
                defaults.append(config.api_key_defaults[given[7:]])
        if model in config.model_defaults:
            defaults.append(config.model_defaults[model])
        for default in defaults:
            priority = default.priority if priority is None else priority
            slo_ms = default.slo_ms if slo_ms is None else slo_ms
        try:
            priority = config.default_priority if priority is None else _as_int(priority)
            slo_ms = config.default_slo_ms if slo_ms is None else _as_slo(slo_ms)
        except ValueError as exc:
            name = str(exc)
            raise _error(
                400,
                f"{name!r} must be "
                f"{'a 64-bit integer' if name == 'priority' else 'a finite number > 0'}"
                f" (body field {name!r} or header 'x-sage-{name.replace('_', '-')}')",
                param=name,
            ) from None
        payload = request.body
        if "priority" in body or "slo_ms" in body:
            payload = orjson.dumps({k: v for k, v in body.items() if k not in _SCHEDULING})
        return (
            PendingRequest(
                arrival=dispatcher.clock(),
                kind=kind,
                model=model,
                priority=priority,
                slo_ms=slo_ms,
                tokens=_tokens(kind, body),
            ),
            payload,
        )

    async def _forward(self, request: Request) -> Response | StreamResponse:
        self._check_key(request)
        registry, dispatcher = self.registry, self.dispatcher
        assert registry is not None and dispatcher is not None
        kind = _KIND_OF_PATH[request.path]
        body = request.json()
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str) or not model:
            raise _error(400, "'model' is required and must be a string", param="model")
        if not registry.serves(kind, model):
            served = ", ".join(registry.models(kind)) or "(none)"
            raise _error(
                404,
                f"model {model!r} is not served here; {kind} models: {served}",
                param="model",
                code="model_not_found",
            )
        assert isinstance(body, dict)
        limit = self.config.max_tokens_limit
        if limit is not None and kind == "llm":
            for field_name in ("max_tokens", "max_completion_tokens"):
                asked = body.get(field_name)
                if isinstance(asked, int) and not isinstance(asked, bool) and asked > limit:
                    raise _error(
                        400,
                        f"'{field_name}'={asked} is more than this gateway allows ({limit}); "
                        f"ask for at most {limit}",
                        param=field_name,
                        code="max_tokens_too_large",
                    )
        pending, payload = self._schedule(request, kind, model, body)
        class_name = request.headers.get("x-sage-class") or None
        stream = kind == "llm" and body.get("stream") is True
        key = batch_key(body) if kind == "embedding" else None
        texts = len(texts_of(body) or ()) if kind == "embedding" else 1
        self.requests += 1
        arrived = perf_counter()
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            ticket = Ticket(loop.create_future(), body, key, max(texts, 1))
            try:
                grant = await dispatcher.admit(pending, ticket, retry=failures > 0)
            except NoInstance:
                dispatcher.record(pending, perf_counter() - arrived, 0.0, True, class_name)
                raise _error(
                    503,
                    f"no healthy instance serves {model!r} now; retry later",
                    code="unavailable",
                ) from None
            except QueueFull as full:
                raise _error(
                    429,
                    f"the gateway's queue for {model!r} is full ({full}); retry after "
                    f"{full.retry_after_s} s",
                    code="queue_full",
                    headers={"retry-after": str(full.retry_after_s)},
                ) from None
            if grant.instance is None:  # riding on another request's batched call
                assert grant.outcome is not None
                outcome = await grant.outcome
                if outcome is None:  # the call failed: go again, alone
                    failures += 1
                    key = None
                    continue
                status, answer = outcome
                elapsed = perf_counter() - arrived
                dispatcher.record(pending, elapsed, elapsed, status >= 500, class_name)
                return Response(status=status, body=answer, content_type="application/json")
            instance = grant.instance
            send = payload
            if grant.riders:
                send, counts = merge_inputs([body, *(r.payload.body for r in grant.riders)])
            dispatched = perf_counter()
            try:
                result = await asyncio.wait_for(
                    instance.pool.request(
                        "POST", instance.path(request.path), send, instance.headers, stream=stream
                    ),
                    self.config.request_timeout_s,
                )
            except (BackendUnavailable, TimeoutError) as exc:
                # Nothing reached the client yet, so the request can run again elsewhere.
                dispatcher.finish(pending, instance, dispatched, failed=True)
                registry.mark(instance, False, str(exc) or type(exc).__name__)
                settle_riders(grant.riders, None)
                logger.warning("instance %s failed: %s", instance.id, exc)
                failures += 1
                if failures <= len(registry.of_model(kind, model)) and registry.has_healthy(
                    kind, model
                ):
                    continue
                dispatcher.record(pending, perf_counter() - arrived, 0.0, True, class_name)
                raise _error(
                    503, f"instance {instance.id} failed: {exc}", code="unavailable"
                ) from None
            content_type = result.headers.get("content-type", "application/json")
            if result.chunks is None:
                failed = result.status >= 500
                dispatcher.finish(pending, instance, dispatched, failed=failed)
                answer = result.body
                if grant.riders:
                    parts = _split(result.status, result.body, counts)
                    if parts is not None:
                        answer = parts[0]
                        settle_riders(grant.riders, [(200, part) for part in parts[1:]])
                    else:  # let each go again alone and get its own answer
                        settle_riders(grant.riders, None)
                        if result.status < 500:
                            failures += 1
                            key = None
                            continue
                elapsed = perf_counter() - arrived
                dispatcher.record(pending, elapsed, elapsed, failed, class_name)
                return Response(status=result.status, body=answer, content_type=content_type)
            settle = partial(self._settle, pending, instance, dispatched, arrived, class_name)
            relay = _Relay(result.chunks, settle, self.config.request_timeout_s)
            return StreamResponse(relay, result.status, content_type)

    def _settle(
        self,
        pending: PendingRequest,
        instance: Instance,
        dispatched: float,
        arrived: float,
        class_name: str | None,
        failed: bool,
        first: float | None,
    ) -> None:
        """A streamed request ended: give back its slot and record it."""
        dispatcher = self.dispatcher
        assert dispatcher is not None
        dispatcher.finish(pending, instance, dispatched, failed=failed, first_byte=first)
        end = perf_counter()
        dispatcher.record(pending, end - arrived, (first or end) - arrived, failed, class_name)

    async def _models(self, request: Request) -> Response:
        self._check_key(request)
        assert self.registry is not None
        cards = [ModelCard(id=name) for name in self.registry.models()]
        return json_response(ModelList(data=cards))

    async def _openapi(self, request: Request) -> Response:
        return Response(body=openapi_json(max_tokens=self.config.max_tokens_limit))

    async def _health(self, request: Request) -> Response:
        assert self.registry is not None
        instances = self.registry.all()
        healthy = sum(1 for i in instances if i.healthy)
        return json_response(
            {
                "status": "ok",
                "instances": len(instances),
                "healthy": healthy,
                "policy": str(self.config.scheduling_policy),
                "active_policy": str(self.dispatcher.active_policy) if self.dispatcher else None,
            }
        )

    async def _metrics(self, request: Request) -> Response:
        """Prometheus text: gateway totals, per-lane queues, per-class and per-instance figures.

        Per instance, ``sage_instance_queued`` is the queue of its (type, model) lane, the
        same for every instance of the model (requests wait per model, not per instance);
        ``sage_instance_slo_attainment`` is left out for an instance that served no request
        with an SLO.
        """
        assert self.registry is not None and self.dispatcher is not None
        state = self.dispatcher.describe()
        requests = MetricFamily(
            "sage_gateway_requests_total", "counter", "Requests received by the gateway."
        )
        requests.add(self.requests)
        waiting = MetricFamily(
            "sage_gateway_waiting", "gauge", "Requests waiting for a free instance."
        )
        waiting.add(state["queued"])
        retries = MetricFamily(
            "sage_gateway_retries_total",
            "counter",
            "Requests sent again after their instance failed.",
        )
        retries.add(state["retries"])
        policy_active = MetricFamily(
            "sage_gateway_policy_active", "gauge", "1 for the scheduling policy in use now."
        )
        for policy in SchedulingPolicyType:
            if policy is not SchedulingPolicyType.ADAPTIVE:
                policy_active.add(int(policy == self.dispatcher.active_policy), policy=policy)
        queued = MetricFamily("sage_gateway_queued", "gauge", "Requests waiting, per lane.")
        for lane in state["lanes"]:
            queued.add(lane["queued"], type=lane["kind"], model=lane["model"])
        families = [requests, waiting, retries, policy_active, queued]
        per_class: list[Column] = [
            ("sage_class_requests_total", "counter", "Requests answered, per class.", "requests"),
            ("sage_class_errors_total", "counter", "Requests failed, per class.", "errors"),
            ("sage_class_latency_p95_ms", "gauge", "p95 latency incl. queueing (ms).", "p95_ms"),
            ("sage_class_ttft_p95_ms", "gauge", "p95 time to first token (ms).", "ttft_p95_ms"),
            (
                "sage_class_slo_attainment",
                "gauge",
                "Share of requests with an SLO that met it.",
                "slo_attainment",
            ),
        ]
        families += columns(
            per_class, (({"class": name}, figures) for name, figures in state["classes"].items())
        )
        per_instance: list[Column] = [
            (
                "sage_instance_requests_total",
                "counter",
                "Requests an instance finished.",
                "requests",
            ),
            ("sage_instance_errors_total", "counter", "Requests an instance failed.", "errors"),
            ("sage_instance_in_flight", "gauge", "Requests running on an instance.", "in_flight"),
            ("sage_instance_healthy", "gauge", "1 when the instance is in rotation.", "healthy"),
            ("sage_instance_latency_p95_ms", "gauge", "p95 request latency (ms).", "p95_ms"),
            ("sage_instance_ttft_p95_ms", "gauge", "p95 time to first byte (ms).", "ttft_p95_ms"),
            (
                "sage_instance_max_concurrent_requests",
                "gauge",
                "Requests an instance may run at once.",
                "max_concurrent_requests",
            ),
            (
                "sage_instance_queued",
                "gauge",
                "Requests waiting in the gateway for the instance's type and model.",
                "queued",
            ),
            (
                "sage_instance_slo_attainment",
                "gauge",
                "Share of an instance's requests with an SLO that met it.",
                "slo_attainment",
            ),
        ]
        families += columns(
            per_instance,
            (
                (
                    {
                        "instance": described["instance_id"],
                        "model": described["model_name"],
                        "type": described["instance_type"],
                    },
                    described,
                )
                for described in (i.describe() for i in self.registry.all())
            ),
        )
        return Response(body=render(families), content_type=PROMETHEUS_CONTENT_TYPE)

    def metrics_snapshot(self) -> dict[str, Any]:
        """The gateway's state as JSON-ready data (``ControlPlaneVLLMService.get_metrics``,
        ``GET /v1/management/metrics``).

        Keys: ``total_requests``, ``rejected``, ``policy``, ``active_policy``,
        ``policy_switches``, ``queued``, ``lanes`` (per kind and model: queued, P95 ms per
        token), ``classes`` (per request class: requests, errors, latency percentiles, TTFT,
        SLO attainment), ``embedding_batches``, ``batched_requests``, ``retries`` and
        ``instances`` (each instance's ``describe()``).
        """
        instances = self.registry.all() if self.registry is not None else []
        if self.dispatcher is not None:
            state = self.dispatcher.describe()
        else:
            policy = str(self.config.scheduling_policy)
            state = {"policy": policy, "active_policy": policy, "queued": 0}
        return {
            "total_requests": self.requests,
            "rejected": self.rejected,
            **state,
            "instances": [i.describe() for i in instances],
        }

    async def _management_metrics(self, request: Request) -> Response:
        self._check_key(request)
        return json_response(self.metrics_snapshot())

    # -- management -------------------------------------------------------------------------------

    async def _list_instances(self, request: Request) -> Response:
        self._check_key(request)
        assert self.registry is not None
        return json_response({"instances": [i.describe() for i in self.registry.all()]})

    async def _add_instance(self, request: Request) -> Response:
        self._check_key(request)
        assert self.registry is not None
        payload = request.json()
        if not isinstance(payload, dict):
            raise _error(400, "body must be a JSON object with host, port, model_name, ...")
        try:  # checked in full first: a bad field must not get registered and break later
            spec = InstanceSpec.model_validate(payload)
        except ValidationError as exc:
            error = error_from_validation(exc).error
            raise _error(400, f"invalid instance: {error.message}", param=error.param) from None
        try:
            config = BackendInstanceConfig(**spec.model_dump())
            instance = self.registry.add(config)
        except ConfigError as exc:
            raise _error(400, f"invalid instance: {exc}", param="instance_id") from None
        await self._check(instance)
        return json_response(
            {"instance": instance.describe(), "config": asdict(config)}, status=201
        )

    async def _remove_instance(self, request: Request) -> Response:
        self._check_key(request)
        assert self.registry is not None
        # the id as the client wrote it before percent-encoding it into the path
        instance_id = unquote(request.path[len("/v1/management/instances/") :])
        try:
            await self.registry.remove(instance_id)
        except KeyError:
            raise _error(404, f"no instance {instance_id!r}", param="instance_id") from None
        return json_response({"removed": instance_id})

    def _policy_state(self) -> dict[str, str]:
        dispatcher = self.dispatcher
        assert dispatcher is not None
        return {"policy": str(dispatcher.policy), "active_policy": str(dispatcher.active_policy)}

    async def _get_policy(self, request: Request) -> Response:
        self._check_key(request)
        return json_response(self._policy_state())

    async def _set_policy(self, request: Request) -> Response:
        self._check_key(request)
        assert self.dispatcher is not None
        payload = request.json()
        name = payload.get("policy") if isinstance(payload, dict) else None
        if not self.config.enable_control_plane:
            raise _error(
                409,
                "the control plane is off (enable_control_plane=False): requests go in "
                "arrival order; restart the gateway with it on to choose a policy",
                param="policy",
            )
        try:
            policy = SchedulingPolicyType.parse(name)
        except ConfigError as exc:
            raise _error(400, str(exc), param="policy") from None
        self.config.scheduling_policy = self.dispatcher.set_policy(policy)
        return json_response(self._policy_state())

    # -- health ---------------------------------------------------------------------------------

    async def _check(self, instance: Instance) -> None:
        """Health = answering ``GET <base>/models``, which every OpenAI-compatible server has.

        The probe has its own connection, so it never queues behind the instance's requests.
        A probe that times out while the instance has requests in flight (a busy CPU engine
        answers slowly) leaves it in rotation: a hung instance is taken out when those
        requests reach ``request_timeout_s``. A refused connection, an error status, or a
        timeout while idle takes it out at once.
        """
        assert self.registry is not None
        try:
            result = await asyncio.wait_for(
                instance.probe.request("GET", instance.path("/v1/models"), b"", instance.headers),
                _PROBE_TIMEOUT_S,
            )
            ok = result.status == 200
            self.registry.mark(instance, ok, "" if ok else f"health check answered {result.status}")
        except TimeoutError:
            if instance.in_flight:  # busy, not dead: a hung one is caught by request timeouts
                instance.last_error = "health check slow while busy (requests in flight)"
                return
            self.registry.mark(
                instance, False, f"health check timed out after {_PROBE_TIMEOUT_S} s"
            )
        except BackendUnavailable as exc:
            self.registry.mark(instance, False, str(exc))
        except Exception as exc:  # one broken instance must not end every instance's checks
            logger.warning("health check of instance %s failed: %r", instance.id, exc)
            self.registry.mark(instance, False, f"health check failed: {exc!r}")

    async def _check_all(self) -> None:
        assert self.registry is not None
        await asyncio.gather(*(self._check(i) for i in self.registry.all()))

    async def _health_loop(self) -> None:
        assert self._stopping is not None
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):  # the interval passed: check again
                await asyncio.wait_for(self._stopping.wait(), self.config.health_check_interval_s)
            await self._check_all()


def accepted_keys(config: UnifiedServerConfig) -> tuple[bytes, ...]:
    """The API keys the gateway accepts: ``config.api_key``, the lines of
    ``config.api_key_file`` and ``SAGE_API_KEY`` (environment or ``.env``).

    Raises:
        ConfigError: the key file cannot be read, or holds no key.
    """
    from sage.common.config.settings import load_settings

    keys = [config.api_key] if config.api_key else []
    if config.api_key_file is not None:
        try:
            text = Path(config.api_key_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"api_key_file {config.api_key_file!r} cannot be read ({exc.strerror}); "
                "give a file with one API key per line"
            ) from None
        found = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        found = [key for key in found if key]
        if not found:
            raise ConfigError(
                f"api_key_file {config.api_key_file!r} holds no key; put one key per line"
            )
        keys += found
    env_key = load_settings().SAGE_API_KEY
    if env_key:
        keys.append(env_key)
    return tuple(dict.fromkeys(key.encode() for key in keys))


def _error_body(status: int, message: str) -> bytes:
    return openai_error(status, message)
