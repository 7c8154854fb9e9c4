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
  ``DELETE /v1/management/instances/<id>?drain=true&timeout_s=60`` removes an instance
  without losing a request: it gets no new ones, and the call waits for those in flight
  (refused with 409 for a model's last healthy instance unless ``force=true``; see
  :mod:`~sage.inference.gateway.management`).

The gateway reads ``model``, ``stream``, the scheduling fields (``priority``, ``slo_ms``, or the
headers ``x-sage-priority``, ``x-sage-slo-ms``; ``x-sage-class`` names the request's class in
the metrics) and the sizes it predicts from; an unknown model gets 404, invalid JSON or a bad
scheduling field 400. The engine validates the rest and its 4xx answer is passed on. An
instance that cannot be reached or times out leaves the rotation (health checks bring it
back), and a request whose answer had not started reaching the client (every non-streamed
request, and a streamed one before its first byte) runs again on another instance of the
model, at the head of the queue; when none is left it gets 503.

With ``tenants`` configured, a request's API key names its tenant: its rate limits answer 429
with ``Retry-After`` and ``x-ratelimit-*`` headers (:mod:`~sage.inference.gateway.tenants`),
and tenants waiting for a model are served by weighted fair share
(:mod:`~sage.inference.control_plane.fairness`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any, ClassVar

from sage.common.concurrency import LoopThread, run_loop
from sage.common.http import HttpServer, Request, Response, json_response
from sage.common.http.server import Handler
from sage.common.observability.prometheus import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE
from sage.common.observability.prometheus import Collector, MetricFamily, exposition
from sage.inference.config import UnifiedServerConfig
from sage.inference.control_plane.dispatcher import Dispatcher
from sage.inference.control_plane.instances import InstanceRegistry
from sage.inference.control_plane.routing import Router
from sage.inference.gateway.auth import KeyCheck, accepted_keys
from sage.inference.gateway.errors import error_body
from sage.inference.gateway.forwarding import Forwarder
from sage.inference.gateway.health import HealthChecks
from sage.inference.gateway.management import Management
from sage.inference.gateway.metrics import gateway_families, snapshot
from sage.inference.gateway.openapi import openapi_json
from sage.inference.gateway.routes import ROUTES
from sage.inference.gateway.tenants import Tenants
from sage.inference.protocol import GatewayHealth, ModelCard, ModelList

__all__ = ["UnifiedAPIServer"]

logger = logging.getLogger(__name__)


class UnifiedAPIServer:
    """The gateway; see the module docstring.

    The API routes are :class:`~.forwarding.Forwarder`'s, the management routes
    :class:`~.management.Management`'s; this class owns the life cycle and the route table.

    Example:
        >>> from sage.inference import UnifiedServerConfig
        >>> server = UnifiedAPIServer(UnifiedServerConfig(port=0))
        >>> # server.start() serves until stop(); server.start(block=False) in the background

    Args:
        config: Listening address, instances, policy and limits.

    Raises:
        ConfigError: the API key file cannot be read or holds no key.
    """

    # Gateways listening in this process, by port: lets code that runs ``start()`` on a thread
    # (or did not build the server itself) wait for it without polling the port.
    _listening_ports: ClassVar[dict[int, UnifiedAPIServer]] = {}
    _listening_changed: ClassVar[threading.Condition] = threading.Condition()

    def __init__(self, config: UnifiedServerConfig | None = None) -> None:
        self.config = config or UnifiedServerConfig()
        self._check_key = KeyCheck(accepted_keys(self.config))
        self.registry: InstanceRegistry | None = None
        self.dispatcher: Dispatcher | None = None
        self.tenants: Tenants | None = None
        self.health: HealthChecks | None = None
        self.port: int | None = None
        self._forwarder: Forwarder | None = None
        self._http: HttpServer | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None
        self._run_owns_shutdown = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._background: LoopThread | None = None  # start(block=False)'s event loop
        self.collector = Collector(self.families)
        """A ``prometheus_client`` collector of :meth:`families` (what ``GET /metrics`` serves)."""

    @property
    def requests(self) -> int:
        """API requests received so far."""
        return 0 if self._forwarder is None else self._forwarder.requests

    # -- life cycle -------------------------------------------------------------------------

    def start(self, block: bool = True) -> None:
        """Serve: in this thread until stopped (``block=True``), or in the background.

        ``block=True`` returns when :meth:`stop` is called from another thread (or raises
        ``KeyboardInterrupt`` on Ctrl-C, after closing the gateway). ``block=False`` serves
        on a daemon thread of its own and returns once the gateway listens and knows its
        instances' health; :meth:`stop` then stops it and waits for that thread.

        Inside an event loop use :meth:`run_async` or :meth:`start_async` instead.

        Raises:
            RuntimeError: the gateway is already running; :meth:`stop` it first.
            OSError: (``block=False``) the port is taken, or another error that stopped the
                gateway before it listened.
        """
        if self.is_running() or self._background is not None:
            raise RuntimeError("the gateway is already running; stop() it before start()")
        if block:
            run_loop(self.run_async())
            return
        background = LoopThread("sage-gateway")
        try:
            background.call(self.start_async())  # returns once it listens, or raises
        except BaseException:
            background.stop()
            raise
        self._background = background

    async def run_async(self, ready: asyncio.Event | None = None) -> None:
        """Start, signal ``ready``, and serve until :meth:`stop_async` (or cancelled: the
        gateway is closed either way)."""
        await self.start_async()
        self._run_owns_shutdown = True
        if ready is not None:
            ready.set()
        assert self._stopping is not None
        try:
            await self._stopping.wait()
        finally:
            await self._shutdown()

    def _listed(self) -> bool:
        """Whether this gateway is among those listening in this process."""
        return self.port is not None and self._listening_ports.get(self.port) is self

    def is_running(self) -> bool:
        """Whether the gateway listens and has not been told to stop."""
        stopping = self._stopping
        return self._listed() and stopping is not None and not stopping.is_set()

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
        """Stop serving; safe from any thread (a ``start`` running elsewhere returns).

        After ``start(block=False)`` this waits until the gateway has closed (requests in
        progress get ``shutdown_grace_s`` to finish); otherwise it only asks it to stop.
        """
        background = self._background
        if background is not None and threading.current_thread() is not background.thread:
            self._background = None
            background.call(self.stop_async())
            background.stop()
            return
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopping.set)

    def get_status(self, timeout: float = 10.0) -> dict[str, Any]:
        """The gateway's state as JSON-ready data; callable from any thread.

        Keys: ``running``, ``host``, ``port`` (the bound one once started), ``url`` (where
        clients reach it; loopback for a wildcard host), ``base_url`` (the same, the SAGE
        reference's name), ``health`` (what ``GET /health`` answers; ``None`` before the
        first start) and those of :meth:`metrics_snapshot` (``GET
        /v1/management/metrics``: ``instances``, ``policy``, queues, tenants...).

        Raises:
            TimeoutError: the gateway's loop did not answer within ``timeout`` seconds.
        """
        loop = self._loop
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if loop is None or on_loop or not loop.is_running():
            state = self._state()
        else:  # read the registry and queues on the loop that changes them
            state = asyncio.run_coroutine_threadsafe(self._state_async(), loop).result(timeout)
        host = self.config.host
        port = self.port if self.port is not None else self.config.port
        reach = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        url = f"http://{f'[{reach}]' if ':' in reach else reach}:{port}"
        return {
            "running": self.is_running(),
            "host": host,
            "port": port,
            "url": url,
            "base_url": url,
            **state,
        }

    async def _state_async(self) -> dict[str, Any]:
        return self._state()

    def _state(self) -> dict[str, Any]:
        """The health and the management figures (:meth:`get_status`'s shared part)."""
        health = self._health_state()
        return {
            "health": None if health is None else health.model_dump(mode="json"),
            **self.metrics_snapshot(),
        }

    async def start_async(self) -> int:
        """Listen and start health checks; return the port.

        Raises:
            OSError: the port is taken.
        """
        config = self.config
        self._run_owns_shutdown = False  # run_async() sets it once started
        if config.log_level is not None:  # checked by the config: debug/info/warning/error
            logging.getLogger("sage.inference").setLevel(config.log_level.upper())
        registry = self.registry = InstanceRegistry()
        for backend in [*config.llm_backends, *config.embedding_backends]:
            registry.add(backend)
        tenants = self.tenants = Tenants(config, time.monotonic)
        dispatcher = self.dispatcher = Dispatcher(
            registry,
            config.scheduling_policy if config.enable_control_plane else "fifo",
            aging_s=config.priority_aging_s,
            batch_max_texts=config.embedding_batch_max_texts,
            batch_wait_s=config.embedding_batch_wait_ms / 1000,
            max_queued=config.max_queued_requests,
            router=Router(
                registry,
                config.routing_policy,
                balance_slack=config.routing_balance_slack,
                block_chars=config.prefix_block_chars,
                cache_tokens=config.prefix_cache_tokens,
            ),
            tenant_weights=tenants.weights,
        )
        health = self.health = HealthChecks(registry, config.health_check_interval_s)
        forward = self._forwarder = Forwarder(
            config, registry, dispatcher, self._check_key, tenants
        )
        manage = Management(
            config, registry, dispatcher, health, self._check_key, self.metrics_snapshot
        )
        http = HttpServer(
            "sage-gateway",
            max_body=config.max_body_bytes,
            error_body=error_body,
            header_timeout_s=config.header_timeout_s,
            idle_timeout_s=config.idle_timeout_s,
            cors_origins=config.cors_origins if config.enable_cors else None,
        )
        handlers: dict[str, Handler] = {
            "forward": forward,
            "models": self._models,
            "health": self._health,
            "metrics": self._metrics,
            "openapi": self._openapi,
            "list_instances": manage.list_instances,
            "add_instance": manage.add_instance,
            "remove_instance": manage.remove_instance,
            "get_policy": manage.get_policy,
            "set_policy": manage.set_policy,
            "management_metrics": manage.metrics,
        }
        for route in ROUTES:  # the table the OpenAPI document is made from
            http.route(
                route.method, route.path, handlers[route.name], cancellable=route.cancellable
            )
        self._http = http
        self._stopping = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.port = await http.start(config.host, config.port)
        await health.check_all()  # start with every instance's health known
        self._health_task = self._loop.create_task(health.run(self._stopping))
        with self._listening_changed:
            self._listening_ports[self.port] = self
            self._listening_changed.notify_all()
        logger.info("gateway listening on %s:%s", config.host, self.port)
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

    # -- the routes of the gateway itself -------------------------------------------------------

    async def _models(self, request: Request) -> Response:
        self._check_key(request)
        assert self.registry is not None
        cards = [ModelCard(id=name) for name in self.registry.models()]
        return json_response(ModelList(data=cards))

    async def _openapi(self, request: Request) -> Response:
        return Response(body=openapi_json(max_tokens=self.config.max_tokens_limit))

    async def _health(self, request: Request) -> Response:
        health = self._health_state()
        assert health is not None
        return json_response(health)

    def _health_state(self) -> GatewayHealth | None:
        """What ``GET /health`` answers (``None`` before the gateway first started)."""
        if self.registry is None:
            return None
        instances = self.registry.all()
        healthy = sum(1 for i in instances if i.healthy)
        active = self.dispatcher.active_policy if self.dispatcher else None
        return GatewayHealth(
            status="ok",
            instances=len(instances),
            healthy=healthy,
            policy=self.config.scheduling_policy,  # type: ignore[arg-type]
            active_policy=active,  # type: ignore[arg-type]
        )

    async def _metrics(self, request: Request) -> Response:
        """Prometheus text of :attr:`collector`."""
        return Response(body=exposition(self.collector), content_type=PROMETHEUS_CONTENT_TYPE)

    def families(self) -> list[MetricFamily]:
        """The gateway's Prometheus families now (:func:`~.metrics.gateway_families`); read
        them on the gateway's loop."""
        assert self.registry is not None and self.dispatcher is not None
        return gateway_families(self.requests, self.registry, self.dispatcher, self.tenants)

    def metrics_snapshot(self) -> dict[str, Any]:
        """The gateway's state as JSON-ready data (``ControlPlaneVLLMService.get_metrics``,
        ``GET /v1/management/metrics``); see :func:`~.metrics.snapshot`."""
        return snapshot(self.requests, self.registry, self.dispatcher, self.config, self.tenants)
