"""The instances behind the gateway: connections, load, health, and per-instance metrics."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from time import perf_counter

from sage.common.components.sage_llm.config import BackendInstanceConfig
from sage.common.errors import ConfigError
from sage.common.http import HttpPool
from sage.common.stats import LatencyRing, quantiles_ms

__all__ = ["Instance", "InstanceRegistry"]


class Instance:
    """One engine server: its connection pool, requests in flight, health and counters."""

    def __init__(self, config: BackendInstanceConfig) -> None:
        self.config = config
        self.id = config.id
        self.pool = HttpPool(
            config.host,
            config.port,
            limit=config.max_concurrent_requests,
            ssl=ssl.create_default_context() if config.tls else None,
        )
        self.in_flight = 0
        self.healthy = True
        self.requests = 0
        self.errors = 0
        self.latency = LatencyRing(1024)
        self.last_error = ""
        self.headers = {"content-type": "application/json"}
        if config.api_key:
            self.headers["authorization"] = f"Bearer {config.api_key}"

    @property
    def capacity_left(self) -> int:
        """Requests it can still take now."""
        return self.config.max_concurrent_requests - self.in_flight

    def path(self, api_path: str) -> str:
        """``/v1/chat/completions`` under the instance's base path."""
        return self.config.base_path + api_path[3:] if api_path.startswith("/v1") else api_path

    def describe(self) -> dict[str, object]:
        """JSON-ready state (for management routes and ``sage llm status``)."""
        p50, p95, p99 = quantiles_ms(self.latency.values())
        return {
            "instance_id": self.id,
            "host": self.config.host,
            "port": self.config.port,
            "model_name": self.config.model_name,
            "instance_type": self.config.instance_type,
            "max_concurrent_requests": self.config.max_concurrent_requests,
            "healthy": self.healthy,
            "in_flight": self.in_flight,
            "requests": self.requests,
            "errors": self.errors,
            "p50_ms": p50,
            "p95_ms": p95,
            "p99_ms": p99,
            "last_error": self.last_error,
        }


class InstanceRegistry:
    """Instances by (type, model), and the wait for a free one.

    A request takes a slot on the healthy instance of its model with the most capacity
    left; when every one is full it waits (first come, first served) for a slot to free.
    """

    def __init__(self) -> None:
        self._by_id: dict[str, Instance] = {}
        self._by_model: dict[tuple[str, str], list[Instance]] = {}
        self._changed = asyncio.Condition()
        self._waiting = 0  # requests waiting for a free instance (the slow path)

    def add(self, config: BackendInstanceConfig) -> Instance:
        """Register an instance (its id must be new).

        Raises:
            ConfigError: an instance with that id exists.
        """
        if config.id in self._by_id:
            raise ConfigError(f"instance {config.id!r} is already registered")
        instance = Instance(config)
        self._by_id[instance.id] = instance
        key = (config.instance_type, config.model_name)
        self._by_model[key] = [*self._by_model.get(key, []), instance]
        self._wake()
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
        await instance.pool.close()
        return instance

    def get(self, instance_id: str) -> Instance | None:
        """The instance with that id."""
        return self._by_id.get(instance_id)

    def all(self) -> list[Instance]:
        """Every instance, in registration order."""
        return list(self._by_id.values())

    def models(self, kind: str | None = None) -> list[str]:
        """Model names served (of one type)."""
        return sorted({m for k, m in self._by_model if kind is None or k == kind})

    def serves(self, kind: str, model: str) -> bool:
        """Whether any instance of ``kind`` serves ``model``."""
        return (kind, model) in self._by_model

    def _pick(self, kind: str, model: str, exclude: Instance | None) -> Instance | None:
        best = None
        for instance in self._by_model.get((kind, model), ()):
            if (
                instance.healthy
                and instance is not exclude
                and instance.capacity_left > 0
                and (best is None or instance.capacity_left > best.capacity_left)
            ):
                best = instance
        return best

    def has_healthy(self, kind: str, model: str, exclude: Instance | None = None) -> bool:
        """Whether a healthy instance (other than ``exclude``) serves the model."""
        return any(i.healthy and i is not exclude for i in self._by_model.get((kind, model), ()))

    async def acquire(self, kind: str, model: str, exclude: Instance | None = None) -> Instance:
        """A slot on the best instance for ``model``, waiting for one to free if needed.

        Raises:
            LookupError: no healthy instance serves the model (now or after a change).
        """
        instance = self._pick(kind, model, exclude)
        if instance is None:
            async with self._changed:
                self._waiting += 1
                try:
                    while (instance := self._pick(kind, model, exclude)) is None:
                        if not self.has_healthy(kind, model, exclude):
                            raise LookupError(model)
                        await self._changed.wait()
                finally:
                    self._waiting -= 1
        instance.in_flight += 1
        return instance

    def release(self, instance: Instance, started: float, failed: bool) -> None:
        """Give back the slot of a request that started at ``started`` (perf_counter)."""
        instance.in_flight -= 1
        instance.requests += 1
        instance.latency.add(perf_counter() - started)
        if failed:
            instance.errors += 1
        if self._waiting:
            self._wake()

    def _wake(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        with contextlib.suppress(RuntimeError):  # no loop yet: nobody can be waiting
            asyncio.get_running_loop().create_task(notify())

    @property
    def waiting(self) -> int:
        """Requests waiting for a free instance now."""
        return self._waiting

    def mark(self, instance: Instance, healthy: bool, error: str = "") -> None:
        """Record a health observation (waiters re-check when it changes)."""
        if instance.healthy != healthy:
            instance.healthy = healthy
            self._wake()
        if error:
            instance.last_error = error
