"""``UnifiedAPIServer``: the OpenAI-compatible gateway in front of SAGE's engine servers.

Routes:

* ``POST /v1/chat/completions``, ``POST /v1/completions``, ``POST /v1/embeddings`` — sent to a
  healthy instance serving the requested model (the one with the most capacity left; when all
  are at ``max_concurrent_requests`` the request waits in the gateway). Bodies pass through as
  bytes; streamed answers are relayed event by event.
* ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus text).
* ``GET|POST /v1/management/instances``, ``DELETE /v1/management/instances/<id>``,
  ``GET|PUT /v1/management/policy``.

The gateway reads only ``model`` and ``stream`` from a request (an unknown model gets 404,
invalid JSON 400); the engine validates the rest and its 4xx answer is passed on. An instance
that cannot be reached leaves the rotation (health checks bring it back) and the request is
retried once on another instance of the model, else answered with 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import threading
from dataclasses import asdict
from time import perf_counter
from typing import Any, ClassVar

import orjson

from sage.common.components.sage_llm.config import (
    BackendInstanceConfig,
    SchedulingPolicyType,
    UnifiedServerConfig,
)
from sage.common.components.sage_llm.control_plane.instances import Instance, InstanceRegistry
from sage.common.components.sage_llm.protocol import ModelCard, ModelList
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

__all__ = ["UnifiedAPIServer", "openai_error"]

logger = logging.getLogger(__name__)


def openai_error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> bytes:
    """An OpenAI-style error body."""
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "invalid_request_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
    }.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps(
        {"error": {"message": message, "type": kind, "param": param, "code": code or str(status)}}
    )


def _error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> HttpError:
    return HttpError(status, message, openai_error(status, message, param, code))


_KIND_OF_PATH = {
    "/v1/chat/completions": "llm",
    "/v1/completions": "llm",
    "/v1/embeddings": "embedding",
}


class UnifiedAPIServer:
    """The gateway; see the module docstring.

    Example:
        >>> from sage.common.components.sage_llm import UnifiedServerConfig
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
        self.registry: InstanceRegistry | None = None
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
        try:
            import uvloop

            uvloop.run(self.run_async())
        except ImportError:  # pragma: no cover - uvloop is installed on Linux
            asyncio.run(self.run_async())

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
        self.registry = InstanceRegistry()
        for backend in [*self.config.llm_backends, *self.config.embedding_backends]:
            self.registry.add(backend)
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
            self._health_task = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self.registry is not None:
            for instance in self.registry.all():
                await instance.pool.close()

    # -- auth -------------------------------------------------------------------------------------

    def _check_key(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.startswith("Bearer ") else ""
        if not hmac.compare_digest(token.encode(), key.encode()):
            raise _error(
                401,
                "missing or invalid API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )

    # -- the API -------------------------------------------------------------------------------

    async def _forward(self, request: Request) -> Response | StreamResponse:
        self._check_key(request)
        registry = self.registry
        assert registry is not None
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
        stream = kind == "llm" and body.get("stream") is True
        self.requests += 1
        tried: Instance | None = None
        for attempt in (0, 1):
            try:
                instance = await registry.acquire(kind, model, exclude=tried)
            except LookupError:
                raise _error(
                    503,
                    f"no healthy instance serves {model!r} now; retry later",
                    code="unavailable",
                ) from None
            started = perf_counter()
            try:
                result = await asyncio.wait_for(
                    instance.pool.request(
                        "POST",
                        instance.path(request.path),
                        request.body,
                        instance.headers,
                        stream=stream,
                    ),
                    self.config.request_timeout_s,
                )
            except (BackendUnavailable, TimeoutError) as exc:
                registry.release(instance, started, failed=True)
                registry.mark(instance, False, str(exc))
                logger.warning("instance %s failed: %s", instance.id, exc)
                tried = instance
                if attempt == 0 and registry.has_healthy(kind, model, exclude=instance):
                    continue  # nothing was streamed yet: retry on another instance
                raise _error(
                    503, f"instance {instance.id} failed: {exc}", code="unavailable"
                ) from None
            content_type = result.headers.get("content-type", "application/json")
            if result.chunks is None:
                registry.release(instance, started, failed=result.status >= 500)
                return Response(status=result.status, body=result.body, content_type=content_type)
            return StreamResponse(
                self._relay(result.chunks, instance, started), result.status, content_type
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _relay(self, chunks: Any, instance: Instance, started: float) -> Any:
        assert self.registry is not None
        failed = True
        try:
            async for chunk in chunks:
                yield chunk
            failed = False
        finally:
            self.registry.release(instance, started, failed=failed)
            await chunks.aclose()

    async def _models(self, request: Request) -> Response:
        self._check_key(request)
        assert self.registry is not None
        cards = [ModelCard(id=name) for name in self.registry.models()]
        return json_response(ModelList(data=cards))

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
            }
        )

    async def _metrics(self, request: Request) -> Response:
        assert self.registry is not None
        lines = [
            "# HELP sage_gateway_requests_total Requests received by the gateway.",
            "# TYPE sage_gateway_requests_total counter",
            f"sage_gateway_requests_total {self.requests}",
            "# HELP sage_gateway_waiting Requests waiting for a free instance.",
            "# TYPE sage_gateway_waiting gauge",
            f"sage_gateway_waiting {self.registry.waiting}",
        ]
        metrics = {
            "sage_instance_requests_total": (
                "counter",
                "Requests an instance finished.",
                "requests",
            ),
            "sage_instance_errors_total": ("counter", "Requests an instance failed.", "errors"),
            "sage_instance_in_flight": ("gauge", "Requests running on an instance.", "in_flight"),
            "sage_instance_healthy": ("gauge", "1 when the instance is in rotation.", "healthy"),
            "sage_instance_latency_p95_ms": ("gauge", "p95 request latency (ms).", "p95_ms"),
        }
        states = [i.describe() for i in self.registry.all()]
        for name, (kind, help_text, key) in metrics.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            for state in states:
                labels = (
                    f'instance="{state["instance_id"]}",model="{state["model_name"]}",'
                    f'type="{state["instance_type"]}"'
                )
                lines.append(f"{name}{{{labels}}} {float(state[key])}")  # type: ignore[arg-type]
        body = ("\n".join(lines) + "\n").encode()
        return Response(body=body, content_type="text/plain; version=0.0.4")

    def metrics_snapshot(self) -> dict[str, Any]:
        """The gateway's state as JSON-ready data (``ControlPlaneVLLMService.get_metrics``,
        ``GET /v1/management/metrics``).

        Keys: ``total_requests``, ``rejected``, ``policy``, ``active_policy``, ``queued``,
        ``instances`` (each instance's ``describe()``).
        """
        instances = self.registry.all() if self.registry is not None else []
        return {
            "total_requests": self.requests,
            "rejected": self.rejected,
            "policy": str(self.config.scheduling_policy),
            "active_policy": str(self.config.scheduling_policy),
            "queued": self.registry.waiting if self.registry is not None else 0,
            "instances": [i.describe() for i in instances],
        }

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
        try:
            config = BackendInstanceConfig(**payload)
            instance = self.registry.add(config)
        except (TypeError, ConfigError) as exc:
            raise _error(400, f"invalid instance: {exc}") from None
        await self._check(instance)
        return json_response(
            {"instance": instance.describe(), "config": asdict(config)}, status=201
        )

    async def _remove_instance(self, request: Request) -> Response:
        self._check_key(request)
        assert self.registry is not None
        instance_id = request.path.rsplit("/", 1)[-1]
        try:
            await self.registry.remove(instance_id)
        except KeyError:
            raise _error(404, f"no instance {instance_id!r}", param="instance_id") from None
        return json_response({"removed": instance_id})

    async def _get_policy(self, request: Request) -> Response:
        self._check_key(request)
        return json_response({"policy": str(self.config.scheduling_policy)})

    async def _set_policy(self, request: Request) -> Response:
        self._check_key(request)
        payload = request.json()
        name = payload.get("policy") if isinstance(payload, dict) else None
        try:
            self.config.scheduling_policy = SchedulingPolicyType.parse(name)
        except ConfigError as exc:
            raise _error(400, str(exc), param="policy") from None
        return json_response({"policy": str(self.config.scheduling_policy)})

    # -- health ---------------------------------------------------------------------------------

    async def _check(self, instance: Instance) -> None:
        """Health = answering ``GET <base>/models``, which every OpenAI-compatible server has."""
        assert self.registry is not None
        try:
            result = await asyncio.wait_for(
                instance.pool.request("GET", instance.path("/v1/models"), b"", instance.headers),
                2.0,
            )
            ok = result.status == 200
            self.registry.mark(instance, ok, "" if ok else f"health check answered {result.status}")
        except (BackendUnavailable, TimeoutError) as exc:
            self.registry.mark(instance, False, str(exc))

    async def _check_all(self) -> None:
        assert self.registry is not None
        await asyncio.gather(*(self._check(i) for i in self.registry.all()))

    async def _health_loop(self) -> None:
        assert self._stopping is not None
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):  # the interval passed: check again
                await asyncio.wait_for(self._stopping.wait(), self.config.health_check_interval_s)
            await self._check_all()


def _error_body(status: int, message: str) -> bytes:
    return openai_error(status, message)
