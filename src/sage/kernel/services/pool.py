"""``ServicePool``: the replicas of one service and the rules by which calls reach them.

* **Concurrency.** Each replica serves at most ``concurrency`` calls at once; callers beyond
  that wait (in arrival order of wake-up) for a free slot. A replica with concurrency 1 never
  runs two calls at once, so code that is not thread-safe is safe as a service.
* **Replicas** share the calls: a call goes to the replica with the fewest calls running.
* **Sync calls** without a timeout run in the caller's own thread once a slot is free: no
  thread hand-off, so a call costs little more than a method call. **Async calls** and calls
  with a timeout run on the pool's worker threads, so the caller can stop waiting.
* **Fallback.** When a call raises, outlives its timeout, or finds more than ``max_waiting``
  callers already waiting, it is handed to the fallback service, and the caller gets the
  fallback's answer: the pipeline's code does not change.
* **Scheduling fields.** The caller's ``priority`` / ``slo_ms``
  (:func:`~sage.common.core.scheduling.current_scheduling`) are current while the service
  serves its call, on whichever thread it runs (and a Ray replica's proxy sends them along),
  so the LLM and embedding requests the service makes carry them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from time import perf_counter
from typing import Any

from sage.common.core.scheduling import Scheduling, current_scheduling, scheduling_scope
from sage.common.errors import ServiceError, ServiceTimeoutError, UnknownServiceError
from sage.kernel.services.base_service import BaseService, ServiceContext
from sage.kernel.services.deadlines import DeadlineWatcher
from sage.kernel.services.metrics import ServiceMetrics, ServiceStats
from sage.kernel.services.spec import ServiceSpec

__all__ = ["ServicePool", "build_replica", "public_methods"]

logger = logging.getLogger(__name__)


class _Replica:
    __slots__ = ("capacity", "in_flight", "index", "instance")

    def __init__(self, index: int, instance: Any, capacity: int) -> None:
        self.index = index
        self.instance = instance
        self.capacity = capacity
        self.in_flight = 0


def public_methods(instance: Any) -> frozenset[str]:
    """The methods callers may reach: public ones, and ``__call__`` if defined."""
    names = set()
    for name in dir(type(instance)):
        if name.startswith("_") or name in ("setup", "cleanup"):
            continue
        if callable(getattr(type(instance), name, None)):
            names.add(name)
    if callable(instance) and type(instance).__call__ is not object.__call__:
        names.add("__call__")
    return frozenset(names)


def build_replica(spec: ServiceSpec, index: int, job_name: str) -> tuple[Any, int]:
    """Construct replica ``index`` of ``spec``, give it its context, call ``setup()``.

    Returns:
        The instance and the calls it serves at once.

    Raises:
        ServiceError: the constructor or ``setup()`` raised (the message says which).
    """
    what = "constructing"
    try:
        instance = spec.factory()
        if isinstance(instance, BaseService) or not hasattr(instance, "ctx"):
            with contextlib.suppress(AttributeError):  # objects without a __dict__
                instance.ctx = ServiceContext(spec.name, index, spec.replicas, job_name)
        what = "setup() of"
        setup = getattr(instance, "setup", None)
        if callable(setup):
            setup()
    except Exception as exc:
        raise ServiceError(
            f"service {spec.name!r}: {what} {spec.label} (replica {index + 1}"
            f"/{spec.replicas}) failed: {type(exc).__name__}: {exc}"
        ) from exc
    capacity = spec.concurrency or int(getattr(instance, "max_concurrency", 1) or 1)
    return instance, max(1, capacity)


def _forward(source: Future[Any], target: Future[Any]) -> None:
    """When ``source`` completes, complete ``target`` the same way (if still pending)."""

    def done(f: Future[Any]) -> None:
        try:
            exc = f.exception()
            if exc is None:
                target.set_result(f.result())
            else:
                target.set_exception(exc)
        except InvalidStateError:
            pass

    source.add_done_callback(done)


class _Call:
    """One async call: the caller's future, settled once by whichever comes first."""

    __slots__ = ("_claim", "args", "future", "kwargs", "method", "scheduling")

    def __init__(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        scheduling: Scheduling | None,
    ) -> None:
        self.method, self.args, self.kwargs = method, args, kwargs
        self.scheduling = scheduling  # the caller's, for the worker and any fallback
        self.future: Future[Any] = Future()
        self._claim = threading.Lock()

    def claim(self) -> bool:
        """True for the first of completion and timeout to get here, False afterwards."""
        return self._claim.acquire(blocking=False)


class ServicePool:
    """The running replicas of one service (see the module docstring).

    Args:
        spec: The registration.
        job_name: The job, for contexts and thread names.
        watcher: Fires call timeouts.
        fallback: The pool that takes calls this one cannot serve, if any.
    """

    def __init__(
        self,
        spec: ServiceSpec,
        job_name: str,
        watcher: DeadlineWatcher,
        fallback: ServicePool | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.fallback = fallback
        self.stats = ServiceStats()
        self._job_name = job_name
        self._watcher = watcher
        self._replicas: list[_Replica] = []
        self._cond = threading.Condition()
        self._waiting = 0  # callers blocked for a free slot
        self._queued = 0  # async calls not yet picked up by a worker thread
        self._executor: ThreadPoolExecutor | None = None
        self._methods: frozenset[str] = frozenset()
        self._slots = 0
        self._started = False

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Build every replica and call its ``setup()``.

        Raises:
            ServiceError: a constructor or ``setup()`` raised (instances already set up are
                cleaned up first).
        """
        try:
            for index in range(self.spec.replicas):
                instance, capacity = build_replica(self.spec, index, self._job_name)
                self._replicas.append(_Replica(index, instance, capacity))
        except ServiceError:
            self._cleanup_replicas()
            raise
        self._methods = public_methods(self._replicas[0].instance)
        self._slots = sum(r.capacity for r in self._replicas)
        self._started = True

    def close(self) -> None:
        """Finish every call made so far (queued async ones too: a fire-and-forget write must
        not be lost), stop the worker threads, then call every ``cleanup()``.

        Raises:
            ServiceError: a ``cleanup()`` raised (every replica is still cleaned up).
        """
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        with self._cond:
            while any(r.in_flight for r in self._replicas):
                self._cond.wait()
        self._started = False
        self._cleanup_replicas(raise_errors=True)

    def _cleanup_replicas(self, raise_errors: bool = False) -> None:
        failures = []
        for replica in self._replicas:
            cleanup = getattr(replica.instance, "cleanup", None)
            if callable(cleanup):
                try:
                    cleanup()
                except Exception as exc:
                    failures.append((replica.index, exc))
        self._replicas = []
        if failures and raise_errors:
            index, first = failures[0]
            raise ServiceError(
                f"service {self.name!r}: cleanup() of replica {index + 1}/{self.spec.replicas} "
                f"failed: {type(first).__name__}: {first}"
            ) from first

    # -- introspection ----------------------------------------------------------------------

    def check_method(self, method: str) -> None:
        """Raise :class:`UnknownServiceError` unless the service has a public ``method``."""
        if method in self._methods:
            return
        import difflib

        known = sorted(m for m in self._methods if m != "__call__")
        close = difflib.get_close_matches(method, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise UnknownServiceError(
            f"service {self.name!r} ({self.spec.label}) has no method {method!r}{hint} "
            f"Its methods: {', '.join(known) or '(none)'}"
        )

    def default_method(self) -> str:
        """The method the call form uses when none is named: ``process``, else ``__call__``."""
        for method in ("process", "__call__"):
            if method in self._methods:
                return method
        raise UnknownServiceError(
            f"service {self.name!r} has no default method (process or __call__); name one: "
            f"call_service({self.name!r}, ..., method='...')"
        )

    def metrics(self) -> ServiceMetrics:
        """A snapshot of this service's metrics."""
        return ServiceMetrics.of(
            self.name,
            self.stats,
            replicas=self.spec.replicas,
            slots=self._slots,
            in_flight=sum(r.in_flight for r in self._replicas),
            waiting=self._waiting + self._queued,
        )

    # -- dispatch -----------------------------------------------------------------------------

    def _saturated(self) -> bool:
        """Every slot is busy and at least ``max_waiting`` callers already wait."""
        limit = self.spec.max_waiting
        if limit is None:
            return False
        with self._cond:
            if any(r.in_flight < r.capacity for r in self._replicas):
                return False
            return self._waiting + self._queued >= limit

    def _acquire(self) -> _Replica:
        with self._cond:
            if not self._started:
                raise ServiceError(f"service {self.name!r} is not running (the job has ended)")
            self._waiting += 1
            try:
                while True:
                    best = None
                    for replica in self._replicas:
                        if replica.in_flight < replica.capacity and (
                            best is None or replica.in_flight < best.in_flight
                        ):
                            best = replica
                    if best is not None:
                        best.in_flight += 1
                        return best
                    self._cond.wait()
            finally:
                self._waiting -= 1

    def _release(self, replica: _Replica) -> None:
        with self._cond:
            replica.in_flight -= 1
            self._cond.notify()

    def _run(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        replica = self._acquire()
        stats = self.stats
        stats.calls += 1
        start = perf_counter()
        try:
            return getattr(replica.instance, method)(*args, **kwargs)
        except Exception:
            stats.errors += 1
            raise
        finally:
            stats.latency.add(perf_counter() - start)
            self._release(replica)

    def _run_queued(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        scheduling: Scheduling | None,
    ) -> Any:
        with self._cond:
            self._queued -= 1
        with scheduling_scope(scheduling):
            return self._run(method, args, kwargs)

    def _executor_for_calls(self) -> ThreadPoolExecutor:
        if self._executor is None:
            with self._cond:
                if self._executor is None:
                    workers = sum(r.capacity for r in self._replicas) or 1
                    self._executor = ThreadPoolExecutor(
                        max_workers=workers, thread_name_prefix=f"sage-svc-{self.name}"
                    )
        return self._executor

    # -- calls ----------------------------------------------------------------------------------

    def call(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None = None,
    ) -> Any:
        """Call ``method`` and return its result (or the fallback's); raises what it raised."""
        if timeout is None:
            timeout = self.spec.timeout_s
        if timeout is not None:
            return self.submit(method, args, kwargs, timeout).result()
        fallback = self.fallback
        if fallback is not None and self._saturated():
            self.stats.fallbacks += 1
            return fallback.call(method, args, kwargs)
        try:
            return self._run(method, args, kwargs)
        except Exception as exc:
            if fallback is None:
                raise
            self.stats.fallbacks += 1
            logger.warning(
                "service %r: %s(...) raised %s: %s; calling fallback %r",
                self.name,
                method,
                type(exc).__name__,
                exc,
                fallback.name,
            )
            return fallback.call(method, args, kwargs)

    def submit(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None = None,
    ) -> Future[Any]:
        """Start ``method`` on a worker thread; the future gets its (or the fallback's) result."""
        return self._submit(method, args, kwargs, timeout, current_scheduling())

    def _submit(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        scheduling: Scheduling | None,
    ) -> Future[Any]:
        """:meth:`submit` with the caller's scheduling fields given (a fallback is called
        from a worker or the deadline thread, whose own fields are not the caller's)."""
        if timeout is None:
            timeout = self.spec.timeout_s
        fallback = self.fallback
        if fallback is not None and self._saturated():
            self.stats.fallbacks += 1
            return fallback._submit(method, args, kwargs, None, scheduling)
        call = _Call(method, args, kwargs, scheduling)
        with self._cond:
            self._queued += 1
        inner = self._executor_for_calls().submit(
            self._run_queued, method, args, kwargs, scheduling
        )
        inner.add_done_callback(lambda done: self._settle(call, done))
        if timeout is not None:
            self._watcher.schedule(perf_counter() + timeout, lambda: self._expire(call, timeout))
        return call.future

    def _settle(self, call: _Call, inner: Future[Any]) -> None:
        if not call.claim():
            return  # the call timed out first; its result is dropped
        exc = inner.exception() if not inner.cancelled() else ServiceError("call cancelled")
        if exc is None:
            call.future.set_result(inner.result())
        elif self.fallback is not None:
            self.stats.fallbacks += 1
            _forward(self._fallback_call(call), call.future)
        else:
            call.future.set_exception(exc)

    def _expire(self, call: _Call, timeout: float) -> None:
        if not call.claim():
            return  # finished in time
        self.stats.timeouts += 1
        if self.fallback is not None:
            self.stats.fallbacks += 1
            _forward(self._fallback_call(call), call.future)
        else:
            call.future.set_exception(
                ServiceTimeoutError(
                    f"service {self.name!r}: {call.method}(...) took longer than {timeout:g} s; "
                    "raise the service's timeout or register a fallback"
                )
            )

    def _fallback_call(self, call: _Call) -> Future[Any]:
        assert self.fallback is not None
        return self.fallback._submit(call.method, call.args, call.kwargs, None, call.scheduling)
