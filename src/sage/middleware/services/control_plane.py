"""``ControlPlaneVLLMService``: the control plane as one object a program or a job can hold.

The design document (seed 003) configures it with a plain dict and drives it with three calls::

    service = ControlPlaneVLLMService(
        {
            "scheduling_policy": "adaptive",
            "instances": [
                {"instance_id": "llm-1", "host": "localhost", "port": 8001,
                 "model_name": "Qwen/Qwen2.5-7B-Instruct"},
            ],
        }
    )
    service.setup()              # logs "Registered 1 instances"
    service.generate("Hello")    # through the gateway, placed by the policy
    print(service.get_metrics())  # {"total_requests": 1, ...}
    service.cleanup()

The SAGE reference's config keys (``routing_strategy``, ``default_priority``,
``default_slo_deadline_ms``, ``default_max_tokens``: :mod:`.control_plane_config`), calls
(``show_instances()``, ``health_check_all()``, ``process({"task": ...})``:
:mod:`.control_plane_tasks`) and metric keys (:mod:`.control_plane_figures`) work too.

``setup()`` starts an in-process :class:`UnifiedAPIServer` (the gateway, on loopback, port
``gateway_port`` or any free one) over the listed engine servers on a background event-loop
thread, and a :class:`UnifiedInferenceClient` pointed at it. Requests therefore take exactly the
path they take against ``sage llm serve``: HTTP to the gateway, which queues them by the policy
and places them on an instance. The engine servers themselves are not started here; an
instance nobody serves shows as unhealthy in :meth:`~ControlPlaneVLLMService.get_metrics` and a
request for its model fails with a :class:`GatewayError` that names it.

As a dataflow service::

    env.register_service("llm", ControlPlaneVLLMService, config)
    ...
    self.call_service["llm"].generate("Summarise: ...", max_tokens=64)

The job calls ``setup()`` before the first record and ``cleanup()`` after the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import httpx

from sage.common.concurrency import LoopThread
from sage.common.errors import ConfigError, GatewayError, ServiceError
from sage.inference.client.unified import UnifiedInferenceClient
from sage.inference.gateway.server import UnifiedAPIServer
from sage.kernel.services.base_service import BaseService
from sage.middleware.services.control_plane_config import (
    GATEWAY_HOST,
    TOP_KEYS,
    ControlPlaneServiceConfig,
    parse_service_config,
)
from sage.middleware.services.control_plane_errors import (
    as_gateway_error,
    explain,
    wants_states,
)
from sage.middleware.services.control_plane_figures import (
    instance_rows,
    instance_table,
    log_health,
    probe_all,
    read_figures,
    reference_metrics,
)
from sage.middleware.services.control_plane_tasks import run_task

__all__ = ["ControlPlaneServiceConfig", "ControlPlaneVLLMService", "parse_service_config"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Longest setup()/cleanup() waits for the gateway to start or stop (health checks of
# unreachable instances are bounded by the gateway's own 2 s probe timeout).
_LIFECYCLE_TIMEOUT_S = 60.0


async def _read_snapshot(gateway: UnifiedAPIServer) -> dict[str, Any]:
    return gateway.metrics_snapshot()


@dataclass
class _Running:
    """What ``setup()`` started; ``cleanup()`` stops it."""

    loop: LoopThread
    gateway: UnifiedAPIServer
    client: UnifiedInferenceClient | None
    url: str
    started: float = 0.0  # time.monotonic() once the gateway listens


class ControlPlaneVLLMService(BaseService):
    """An in-process gateway over engine servers, with generation calls through it.

    Thread-safe: operators of a parallel job may call it at once (requests queue in the
    gateway by the policy, not here), hence the high :attr:`max_concurrency`. Registered with
    ``replicas=n``, each replica runs its own gateway: leave ``gateway_port`` at 0 then.

    A sync call returns what :class:`UnifiedInferenceClient` returns; the async twins run
    their requests on the service's own loop, so coroutines on any event loop may await them.

    Args:
        config: The seed's dict (see :func:`parse_service_config`).
        **options: The same keys as keyword arguments; they override ``config``.

    Raises:
        ConfigError: the configuration is invalid (checked here, before anything starts).
    """

    max_concurrency: ClassVar[int] = 64

    def __init__(self, config: Mapping[str, Any] | None = None, **options: Any) -> None:
        if config is not None and not isinstance(config, Mapping):
            raise ConfigError(
                f"ControlPlaneVLLMService config is {type(config).__name__}; pass a dict with "
                f"{', '.join(TOP_KEYS)}"
            )
        super().__init__()
        self.config = parse_service_config({**(config or {}), **options})
        self._lock = threading.Lock()
        self._running: _Running | None = None

    # -- service hooks ----------------------------------------------------------------------

    def setup(self) -> None:
        """Start the gateway and the client (idempotent; again after :meth:`cleanup`).

        Instances that do not answer are registered anyway and shown unhealthy; the gateway's
        health checks bring them into rotation once they answer.

        Raises:
            OSError: ``gateway_port`` is taken.
        """
        with self._lock:
            if self._running is not None:
                return
            loop = LoopThread("sage-control-plane")
            gateway = UnifiedAPIServer(self.config.server_config())
            running = _Running(loop, gateway, None, "")
            try:
                port = loop.call(gateway.start_async(), _LIFECYCLE_TIMEOUT_S)
                running.url = f"http://{GATEWAY_HOST}:{port}/v1"
                running.started = time.monotonic()
                running.client = UnifiedInferenceClient.create(
                    control_plane_url=running.url,
                    # the first instance of each type names the default model of requests
                    default_llm_model=self._first_model("llm"),
                    default_embedding_model=self._first_model("embedding"),
                    timeout=self._client_timeout_s,
                    env_file=None,
                )
                instances = self._snapshot(running)["instances"]
            except BaseException:
                self._stop(running)
                raise
            self._running = running
        self.logger.info(
            "Registered %d instances with the control plane at %s (policy %s)",
            len(instances),
            running.url,
            self.config.scheduling_policy,
        )
        for state in instances:
            if state["healthy"]:
                self.logger.info(
                    "instance %s: %s at %s:%s, healthy",
                    state["instance_id"],
                    state["model_name"],
                    state["host"],
                    state["port"],
                )
            else:
                self.logger.warning(
                    "instance %s: %s at %s:%s is not reachable (%s); requests for it fail "
                    "until it answers",
                    state["instance_id"],
                    state["model_name"],
                    state["host"],
                    state["port"],
                    state["last_error"] or "no answer",
                )

    def _first_model(self, kind: str) -> str | None:
        return next((i.model_name for i in self.config.instances if i.instance_type == kind), None)

    def cleanup(self) -> None:
        """Close the client, stop the gateway and its thread (idempotent)."""
        with self._lock:
            running, self._running = self._running, None
        if running is not None:
            self._stop(running)
            self.logger.info("control plane at %s stopped", running.url)

    @staticmethod
    def _stop(running: _Running) -> None:
        try:
            if running.client is not None:
                with contextlib.suppress(Exception):  # the gateway must stop regardless
                    running.loop.call(running.client.aclose(), _LIFECYCLE_TIMEOUT_S)
            running.loop.call(running.gateway.stop_async(), _LIFECYCLE_TIMEOUT_S)
        finally:
            running.loop.stop()

    def __enter__(self) -> ControlPlaneVLLMService:
        self.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- state ----------------------------------------------------------------------------------

    @property
    def gateway_url(self) -> str:
        """``http://127.0.0.1:<port>/v1`` of the running gateway (for any OpenAI client).

        Raises:
            ServiceError: the service is not set up.
        """
        return self._require().url

    def get_metrics(self) -> dict[str, Any]:
        """The gateway's counters: ``total_requests``, ``rejected``, ``policy``,
        ``active_policy``, ``queued``, ``classes`` (per class, e.g. ``llm:p0``),
        ``instances`` (each with ``requests``, ``healthy``, ``in_flight``...), and the
        reference's ``completed_requests``, ``failed_requests``, ``avg_latency_ms``,
        ``slo_compliance_rate``, ``requests_per_second`` (since :meth:`setup`)...: see
        :func:`~.control_plane_figures.reference_metrics`.

        Raises:
            ServiceError: the service is not set up.
        """
        running = self._require()
        snapshot, totals = running.loop.call(read_figures(running.gateway), _LIFECYCLE_TIMEOUT_S)
        uptime_s = time.monotonic() - running.started
        return {**snapshot, **reference_metrics(snapshot, totals, uptime_s)}

    def show_instances(self) -> list[dict[str, Any]]:
        """The instances as the gateway sees them now (``instance_id``, ``host``, ``port``,
        ``model_name``, ``instance_type``, ``healthy``, ``in_flight``, ``requests``...; see
        :func:`~.control_plane_figures.instance_rows`), also logged as a table (INFO).

        Raises:
            ServiceError: the service is not set up.
        """
        running = self._require()
        rows = instance_rows(self._snapshot(running)["instances"])
        self.logger.info(
            "instances of the control plane at %s:\n%s", running.url, instance_table(rows)
        )
        return rows

    def health_check_all(self) -> dict[str, bool]:
        """Probe every instance now (the gateway's health check, at most 2 s each) and
        return ``{instance_id: healthy}``; the answers also move instances in or out of rotation.

        Raises:
            ServiceError: the service is not set up.
        """
        running = self._require()
        health = running.loop.call(probe_all(running.gateway), _LIFECYCLE_TIMEOUT_S)
        log_health(self.logger, health)
        return health

    async def ahealth_check_all(self) -> dict[str, bool]:
        """:meth:`health_check_all` for coroutines (the reference's was a coroutine)."""
        running = self._require()
        future = running.loop.submit(probe_all(running.gateway))
        health: dict[str, bool] = await asyncio.wrap_future(future)
        log_health(self.logger, health)
        return health

    def process(self, payload: Mapping[str, Any]) -> Any:
        """The reference's dataflow entry point: one dict per request, by its ``task``
        (:mod:`.control_plane_tasks`): ``{"task": "generate", "prompt": "Hi"}`` returns
        ``{"text": ...}``; ``chat`` takes ``messages``, ``embed`` ``texts``.

        Raises:
            ConfigError: an unknown task or a missing or wrong-typed field (the message
                names it and the accepted tasks).
            GatewayError: the request failed.
            ServiceError: the service is not set up.
        """
        return run_task(self, payload)

    def get_status(self) -> dict[str, Any]:
        """Whether it runs, where, with which policy and models, and each instance's health."""
        running = self._running
        if running is None:
            return {
                "running": False,
                "gateway_url": None,
                "scheduling_policy": str(self.config.scheduling_policy),
                "instances": [
                    {
                        "instance_id": i.id,
                        "host": i.host,
                        "port": i.port,
                        "model_name": i.model_name,
                        "instance_type": i.instance_type,
                        "healthy": None,
                    }
                    for i in self.config.instances
                ],
            }
        snapshot = self._snapshot(running)
        client = running.client
        assert client is not None
        return {
            "running": True,
            "gateway_url": running.url,
            "scheduling_policy": snapshot["active_policy"],
            "llm_model": client.llm_model,
            "embedding_model": client.embedding_model,
            "healthy_instances": sum(1 for i in snapshot["instances"] if i["healthy"]),
            "instances": snapshot["instances"],
        }

    @property
    def _client_timeout_s(self) -> float:
        """How long the client waits for an answer: as long queued in the gateway as the
        instance may take (``request_timeout_s``), then as long again for the instance."""
        return 2 * self.config.request_timeout_s

    def _require(self) -> _Running:
        running = self._running
        if running is None:
            raise ServiceError(
                "ControlPlaneVLLMService is not running; call setup() first (a job calls it "
                "for services registered with env.register_service)"
            )
        return running

    def _snapshot(self, running: _Running) -> dict[str, Any]:
        """``metrics_snapshot()`` read on the gateway's own loop (no data race with it)."""
        return running.loop.call(_read_snapshot(running.gateway), _LIFECYCLE_TIMEOUT_S)

    # -- requests ---------------------------------------------------------------------------------

    def generate(self, prompt: str, **kwargs: Any) -> Any:
        """A completion of ``prompt`` through the gateway.

        Keyword arguments are those of :meth:`UnifiedInferenceClient.generate` (``model``,
        ``max_tokens``, ``temperature``, ``stream``...); others, such as ``priority`` and
        ``slo_ms``, are sent as request fields for the scheduling policy. Without
        ``max_tokens`` the config's ``default_max_tokens`` applies (when set); without
        ``priority``/``slo_ms`` the gateway gives the config's defaults. The reference's
        spellings work too: ``priority="HIGH"`` (a name of
        :data:`~sage.middleware.services.control_plane_config.PRIORITY_NAMES`) and
        ``slo_deadline_ms=``.

        Returns:
            The text, or with ``stream=True`` an iterator of text pieces.

        Raises:
            GatewayError: the gateway or the instance refused or failed the request (for an
                unreachable instance the message names it and its last error).
            ServiceError: the service is not set up.
        """
        options = self.config.request_options(kwargs)
        return self._call(lambda client: client.generate(prompt, **options))

    def chat(self, messages: Any, **kwargs: Any) -> Any:
        """The assistant's answer to ``messages`` (a string or role/content dicts).

        Keyword arguments as for :meth:`generate`.
        """
        options = self.config.request_options(kwargs)
        return self._call(lambda client: client.chat(messages, **options))

    def embed(self, texts: str | Sequence[str], **kwargs: Any) -> Any:
        """One vector for a text, a list of vectors for a list of texts (``model=`` optional)."""
        return self._call(lambda client: client.embed(texts, **kwargs))

    async def agenerate(self, prompt: str, **kwargs: Any) -> Any:
        """:meth:`generate` for coroutines (``stream=True``: an async iterator of pieces).

        The request runs on the service's own loop, so any caller loop may await it.
        """
        options = self.config.request_options(kwargs)
        return await self._acall(lambda c: c.agenerate(prompt, **options), options)

    async def achat(self, messages: Any, **kwargs: Any) -> Any:
        """:meth:`chat` for coroutines (``stream=True``: an async iterator of pieces)."""
        options = self.config.request_options(kwargs)
        return await self._acall(lambda c: c.achat(messages, **options), options)

    async def aembed(self, texts: str | Sequence[str], **kwargs: Any) -> Any:
        """:meth:`embed` for coroutines."""
        return await self._acall(lambda c: c.aembed(texts, **kwargs), {})

    def _client(self) -> tuple[_Running, UnifiedInferenceClient]:
        running = self._require()
        assert running.client is not None
        return running, running.client

    def _call(self, request: Callable[[UnifiedInferenceClient], Any]) -> Any:
        running, client = self._client()
        try:
            result = request(client)
        except (GatewayError, httpx.HTTPError) as exc:
            error = as_gateway_error(exc, running.url, self._client_timeout_s)
            raise explain(error, self._states(running, error)) from exc
        if isinstance(result, Iterator):  # a stream: errors surface while iterating
            return self._guarded(result, running)
        return result

    def _guarded(self, pieces: Iterator[str], running: _Running) -> Iterator[str]:
        try:
            yield from pieces
        except (GatewayError, httpx.HTTPError) as exc:
            error = as_gateway_error(exc, running.url, self._client_timeout_s)
            raise explain(error, self._states(running, error)) from exc

    async def _acall(
        self,
        request: Callable[[UnifiedInferenceClient], Coroutine[Any, Any, Any]],
        kwargs: Mapping[str, Any],
    ) -> Any:
        running, client = self._client()
        if kwargs.get("stream"):
            return self._abridge(request, running)
        try:
            return await asyncio.wrap_future(running.loop.submit(request(client)))
        except (GatewayError, httpx.HTTPError) as exc:
            error = as_gateway_error(exc, running.url, self._client_timeout_s)
            raise explain(error, await self._astates(running, error)) from exc

    async def _abridge(
        self,
        request: Callable[[UnifiedInferenceClient], Coroutine[Any, Any, Any]],
        running: _Running,
    ) -> AsyncIterator[str]:
        """Relay a stream produced on the service loop to the caller's loop, piece by piece."""
        caller = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | BaseException | None] = asyncio.Queue()

        def put(item: str | BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the caller's loop has closed
                caller.call_soon_threadsafe(pieces.put_nowait, item)

        async def pump() -> None:
            assert running.client is not None
            try:
                stream = await request(running.client)
                async for piece in stream:
                    put(piece)
                put(None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                put(exc)

        future = running.loop.submit(pump())
        try:
            while (item := await pieces.get()) is not None:
                if isinstance(item, GatewayError | httpx.HTTPError):
                    error = as_gateway_error(item, running.url, self._client_timeout_s)
                    raise explain(error, await self._astates(running, error)) from item
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            future.cancel()  # the caller stopped early: stop reading the stream

    def _states(self, running: _Running, exc: GatewayError) -> list[dict[str, Any]]:
        if not wants_states(exc):
            return []
        try:
            return list(self._snapshot(running)["instances"])
        except Exception:  # the gateway is stopping: the original error says enough
            return []

    async def _astates(self, running: _Running, exc: GatewayError) -> list[dict[str, Any]]:
        if not wants_states(exc):
            return []
        try:
            snapshot = await asyncio.wrap_future(
                running.loop.submit(_read_snapshot(running.gateway))
            )
            return list(snapshot["instances"])
        except Exception:  # the gateway is stopping: the original error says enough
            return []
