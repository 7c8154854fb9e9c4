"""The services of one job, and the callers functions reach them through.

A :class:`ServiceRegistry` is built from the environment's registrations when a job is
created, started (every replica constructed and set up) before the job's first record, and
closed (running calls finished, every ``cleanup()`` called) after its last.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from sage.common.errors import ServiceError, UnknownServiceError
from sage.kernel.services.deadlines import DeadlineWatcher
from sage.kernel.services.metrics import ServiceMetrics
from sage.kernel.services.pool import ServicePool
from sage.kernel.services.spec import ServiceSpec

__all__ = ["ServiceCallerImpl", "ServiceRegistry"]


class _Methods:
    """``call_service["name"]``: attribute access gives a callable per method (cached)."""

    def __init__(self, pool: ServicePool, asynchronous: bool) -> None:
        self._pool = pool
        self._async = asynchronous

    def __getattr__(self, method: str) -> Any:
        if method.startswith("__"):
            raise AttributeError(method)
        pool = self._pool
        pool.check_method(method)
        if self._async:

            def call_async(*args: Any, **kwargs: Any) -> Future[Any]:
                return pool.submit(method, args, kwargs)

            bound: Any = call_async
        else:

            def call(*args: Any, **kwargs: Any) -> Any:
                return pool.call(method, args, kwargs)

            bound = call
        bound.__name__ = method
        setattr(self, method, bound)  # later accesses skip __getattr__
        return bound

    def __repr__(self) -> str:
        kind = "async " if self._async else ""
        return f"<{kind}service {self._pool.name!r}>"


class ServiceCallerImpl:
    """``self.call_service`` (or ``call_service_async``) of every function in a job."""

    def __init__(self, registry: ServiceRegistry, asynchronous: bool) -> None:
        self._registry = registry
        self._async = asynchronous
        self._proxies: dict[str, _Methods] = {}

    def __getitem__(self, name: str) -> _Methods:
        proxy = self._proxies.get(name)
        if proxy is None:
            proxy = self._proxies[name] = _Methods(self._registry.pool(name), self._async)
        return proxy

    def __call__(
        self,
        name: str,
        *args: Any,
        method: str | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        pool = self._registry.pool(name)
        method = method or pool.default_method()
        pool.check_method(method)
        if self._async:
            return pool.submit(method, args, kwargs, timeout)
        return pool.call(method, args, kwargs, timeout)


class ServiceRegistry:
    """The services of one job.

    Args:
        specs: The environment's registrations.
        job_name: The job (for contexts, logs and thread names).

    Raises:
        ServiceError: a fallback names a service that is not registered, or fallbacks form
            a cycle.
    """

    def __init__(self, specs: Sequence[ServiceSpec], job_name: str) -> None:
        self._job_name = job_name
        self._watcher = DeadlineWatcher(job_name)
        self._specs = {spec.name: spec for spec in specs}
        self._pools: dict[str, ServicePool] = {}
        self._order: list[ServicePool] = []  # fallbacks before the services that use them
        for spec in specs:
            self._build(spec, ())
        self.callers = (ServiceCallerImpl(self, False), ServiceCallerImpl(self, True))
        self._started = False

    def _build(self, spec: ServiceSpec, path: tuple[str, ...]) -> ServicePool:
        if spec.name in self._pools:
            return self._pools[spec.name]
        if spec.name in path:
            raise ServiceError(f"services {' -> '.join((*path, spec.name))} fall back in a cycle")
        fallback = None
        if isinstance(spec.fallback, str):
            target = self._specs.get(spec.fallback)
            if target is None:
                raise ServiceError(
                    f"service {spec.name!r}: fallback {spec.fallback!r} is not registered; "
                    f"registered: {', '.join(sorted(self._specs)) or '(none)'}"
                )
            fallback = self._build(target, (*path, spec.name))
        elif isinstance(spec.fallback, ServiceSpec):
            fallback = self._build(spec.fallback, (*path, spec.name))
        pool = ServicePool(spec, self._job_name, self._watcher, fallback)
        self._pools[spec.name] = pool
        self._order.append(pool)
        return pool

    @property
    def names(self) -> list[str]:
        """The registered service names."""
        return sorted(self._specs)

    def pool(self, name: str) -> ServicePool:
        """The running service ``name``.

        Raises:
            UnknownServiceError: no service of that name (the message lists them).
        """
        pool = self._pools.get(name) if name in self._specs else None
        if pool is None:
            raise UnknownServiceError(
                f"no service named {name!r}; registered: {', '.join(self.names) or '(none)'}. "
                f"Register it with env.register_service({name!r}, ...) before env.submit()"
            )
        return pool

    def start(self) -> None:
        """Build and set up every service (fallbacks first).

        Raises:
            ServiceError: one could not be built or set up (those already up are closed).
        """
        started: list[ServicePool] = []
        try:
            for pool in self._order:
                pool.start()
                started.append(pool)
        except ServiceError:
            for pool in reversed(started):
                with contextlib.suppress(ServiceError):  # the setup failure is the news
                    pool.close()
            self._watcher.close()
            raise
        self._started = True

    def close(self) -> None:
        """Finish running calls and clean up every service (users first, then fallbacks).

        Raises:
            ServiceError: a ``cleanup()`` raised (every service is still closed).
        """
        if not self._started:
            return
        self._started = False
        first: ServiceError | None = None
        self._watcher.close()
        for pool in reversed(self._order):
            try:
                pool.close()
            except ServiceError as exc:
                first = first or exc
        if first is not None:
            raise first

    def metrics(self) -> tuple[ServiceMetrics, ...]:
        """A snapshot per service, in registration order."""
        return tuple(pool.metrics() for pool in self._order)
