"""The instances behind the gateway: connections, load, health, and per-instance metrics.

A *draining* instance (:meth:`InstanceRegistry.drain`) is given no new request (its
``capacity_left`` is 0, so neither the router nor the dispatcher picks it; requests waiting
for its model go to the others) while those in flight finish; :meth:`InstanceRegistry.idle`
waits for that on an event set when its ``in_flight`` reaches 0.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from functools import partial
from time import perf_counter

from sage.common.errors import ConfigError
from sage.common.http import HttpPool
from sage.common.stats import REQUEST_BUCKETS, LatencyRing, latency_figures
from sage.inference.config import BackendInstanceConfig

__all__ = ["Instance", "InstanceRegistry"]


class Instance:
    """One engine server: its connection pool, requests in flight, health and counters."""

    def __init__(
        self, config: BackendInstanceConfig, queued: Callable[[], int] | None = None
    ) -> None:
        self.config = config
        self.id = config.id
        context = ssl.create_default_context() if config.tls else None
        self.pool = HttpPool(
            config.host, config.port, limit=config.max_concurrent_requests, ssl=context
        )
        # health checks get their own connection: never queued behind requests
        self.probe = HttpPool(config.host, config.port, limit=1, ssl=context)
        self._in_flight = 0
        self._idle: asyncio.Event | None = None  # set when in_flight reaches 0 (a drain waits)
        self.draining = False
        self.healthy = True
        self.requests = 0
        self.errors = 0
        self.slo_total = 0  # requests it finished that carried an SLO
        self.slo_met = 0  # ... and met it (answered in time, no error)
        self.cost = 0.0  # cost served: tokens x cost_per_1k_tokens / 1000 (see .costs)
        self._queued = queued
        # service time (dispatch to last byte), and dispatch to the answer's first byte
        self.latency = LatencyRing(1024, REQUEST_BUCKETS)
        self.ttft = LatencyRing(1024, REQUEST_BUCKETS)
        self.last_error = ""
        self.headers = {"content-type": "application/json"}
        if config.api_key:
            self.headers["authorization"] = f"Bearer {config.api_key}"

    async def close(self) -> None:
        """Close its idle connections."""
        await self.pool.close()
        await self.probe.close()

    @property
    def in_flight(self) -> int:
        """Requests granted to it and not finished yet."""
        return self._in_flight

    @in_flight.setter
    def in_flight(self, value: int) -> None:
        self._in_flight = value
        if value == 0 and self._idle is not None:
            self._idle.set()

    @property
    def capacity_left(self) -> int:
        """Requests it can still take now (none while it drains)."""
        if self.draining:
            return 0
        return self.config.max_concurrent_requests - self._in_flight

    @property
    def queued(self) -> int:
        """Requests waiting in the gateway for an instance of its kind and model.

        The queue is per (kind, model), not per instance: every instance of the model
        shows the same figure (0 without a dispatcher).
        """
        return self._queued() if self._queued is not None else 0

    @property
    def slo_attainment(self) -> float | None:
        """Share of its requests carrying an SLO that met it (``None``: it served none)."""
        return self.slo_met / self.slo_total if self.slo_total else None

    def path(self, api_path: str) -> str:
        """``/v1/chat/completions`` under the instance's base path."""
        return self.config.base_path + api_path[3:] if api_path.startswith("/v1") else api_path

    def describe(self) -> dict[str, object]:
        """JSON-ready state (for management routes and ``sage llm status``)."""
        return {
            "instance_id": self.id,
            "host": self.config.host,
            "port": self.config.port,
            "model_name": self.config.model_name,
            "instance_type": self.config.instance_type,
            "max_concurrent_requests": self.config.max_concurrent_requests,
            "healthy": self.healthy,
            "draining": self.draining,
            "in_flight": self.in_flight,
            "queued": self.queued,
            "requests": self.requests,
            "errors": self.errors,
            **latency_figures(self.latency, self.ttft),
            "slo_requests": self.slo_total,
            "slo_attainment": self.slo_attainment,
            "cost_per_1k_tokens": self.config.cost_per_1k_tokens,
            "cost": self.cost if self.config.cost_per_1k_tokens is not None else None,
            "last_error": self.last_error,
        }


class InstanceRegistry:
    """Instances by (type, model), their health, and where a request should go.

    The registry only places and counts; waiting for a free instance is the dispatcher's
    job, which it learns about through ``on_change`` (called when an instance is added,
    removed, or changes health).
    """

    def __init__(self) -> None:
        self._by_id: dict[str, Instance] = {}
        self._by_model: dict[tuple[str, str], list[Instance]] = {}
        self.on_change: Callable[[], None] | None = None
        # Requests waiting per (kind, model): set by the dispatcher, read by Instance.queued.
        self.waiting: Callable[[str, str], int] | None = None

    def add(self, config: BackendInstanceConfig) -> Instance:
        """Register an instance (its id must be new).

        Raises:
            ConfigError: an instance with that id exists.
        """
        if config.id in self._by_id:
            raise ConfigError(f"instance {config.id!r} is already registered")
        key = (config.instance_type, config.model_name)
        instance = Instance(config, queued=partial(self._waiting, *key))
        self._by_id[instance.id] = instance
        self._by_model[key] = [*self._by_model.get(key, []), instance]
        self._changed()
        return instance

    async def remove(self, instance_id: str) -> Instance:
        """Unregister an instance and close its idle connections.

        Raises:
            KeyError: unknown id.
        """
        instance = self._by_id.pop(instance_id, None)
        if instance is None:
            raise KeyError(instance_id)
        key = (instance.config.instance_type, instance.config.model_name)
        remaining = [i for i in self._by_model.get(key, []) if i is not instance]
        if remaining:
            self._by_model[key] = remaining
        else:
            self._by_model.pop(key, None)
        if instance._idle is not None:  # a drain waiting on it: it is gone, stop waiting
            instance._idle.set()
        self._changed()
        await instance.close()
        return instance

    def drain(self, instance: Instance, draining: bool = True) -> None:
        """Give ``instance`` no new request from now on (``draining=False``: back in rotation).

        Requests in flight on it finish; those waiting for its model go to the others (the
        dispatcher re-plans). :meth:`idle` waits until its last one is done.
        """
        if instance.draining != draining:
            instance.draining = draining
            self._changed()

    async def idle(self, instance: Instance, timeout_s: float) -> bool:
        """Wait until ``instance`` has no request in flight (or was removed meanwhile), on an
        event its ``in_flight`` sets when it reaches 0; whether it did within ``timeout_s``.
        """
        if instance.in_flight == 0:
            return True
        event = instance._idle
        if event is None or event.is_set():  # (set: by an earlier drain, or a removal)
            event = instance._idle = asyncio.Event()
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def get(self, instance_id: str) -> Instance | None:
        """The instance with that id."""
        return self._by_id.get(instance_id)

    def all(self) -> list[Instance]:
        """Every instance, in registration order."""
        return list(self._by_id.values())

    def of_model(self, kind: str, model: str) -> list[Instance]:
        """The instances of ``kind`` serving ``model``."""
        return self._by_model.get((kind, model), [])

    def models(self, kind: str | None = None) -> list[str]:
        """Model names served (of one type)."""
        return sorted({m for k, m in self._by_model if kind is None or k == kind})

    def serves(self, kind: str, model: str) -> bool:
        """Whether any instance of ``kind`` serves ``model``."""
        return (kind, model) in self._by_model

    def has_free_slot(self, kind: str, model: str) -> bool:
        """Whether a healthy instance of the model can take a request now."""
        return any(i.healthy and i.capacity_left > 0 for i in self._by_model.get((kind, model), ()))

    def has_healthy(self, kind: str, model: str) -> bool:
        """Whether a healthy instance serves the model."""
        return any(i.healthy for i in self._by_model.get((kind, model), ()))

    def capacity(self, kind: str, model: str) -> int:
        """Requests the model's healthy instances (not draining) can hold at once."""
        return sum(
            i.config.max_concurrent_requests
            for i in self._by_model.get((kind, model), ())
            if i.healthy and not i.draining
        )

    def take(self, instance: Instance) -> None:
        """Count a request dispatched to ``instance``."""
        instance.in_flight += 1

    def release(
        self,
        instance: Instance,
        started: float,
        failed: bool,
        first_byte: float | None = None,
        *,
        slo_met: bool | None = None,
    ) -> None:
        """Give back the slot of a request dispatched at ``started`` (perf_counter).

        ``slo_met`` is ``None`` for a request without an SLO, else whether it met it; it
        feeds the instance's SLO attainment.
        """
        now = perf_counter()
        instance.in_flight -= 1
        instance.requests += 1
        instance.latency.add(now - started)
        instance.ttft.add((first_byte or now) - started)
        if failed:
            instance.errors += 1
        if slo_met is not None:
            instance.slo_total += 1
            instance.slo_met += int(slo_met)

    def _waiting(self, kind: str, model: str) -> int:
        return self.waiting(kind, model) if self.waiting is not None else 0

    def mark(self, instance: Instance, healthy: bool, error: str = "") -> None:
        """Record a health observation (the dispatcher re-plans when it changes)."""
        if error:
            instance.last_error = error
        if instance.healthy != healthy:
            instance.healthy = healthy
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
