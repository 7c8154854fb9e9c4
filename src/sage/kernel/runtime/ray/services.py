"""Services on Ray: every replica is an actor, placed by the resources it declares.

The driver (:class:`RemoteServices`) starts one :class:`ServiceReplica` actor per replica,
with the registration's ``num_cpus`` / ``num_gpus``, so ``num_gpus=1`` lands a replica on a
node that has a GPU. Task actors reach the replicas through the same
:class:`~sage.kernel.services.pool.ServicePool` as the local runtime (concurrency, least
busy replica, timeouts, fallbacks); only the instances are proxies whose methods are remote
calls (:func:`proxy_specs`). A replica also bounds its own concurrency, since several task
actors call it at once. Each remote call carries the caller's scheduling fields
(:func:`~sage.common.core.scheduling.current_scheduling`), which the replica makes current
while it serves the call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sage.common.core.scheduling import Scheduling, current_scheduling, scheduling_scope
from sage.common.errors import ServiceError
from sage.kernel.services.pool import build_replica, public_methods
from sage.kernel.services.spec import ServiceSpec

__all__ = ["RemoteServices", "ReplicaInfo", "ServiceReplica", "proxy_specs"]

# CPUs a replica reserves when it declares none: a share, so replicas are placed (and
# spread) by Ray without taking whole CPUs from the tasks.
DEFAULT_SERVICE_CPUS = 0.01
_MAX_THREADS = 64  # actor threads serving one replica's calls (its capacity bounds the work)


@dataclass(frozen=True)
class ReplicaInfo:
    """What a started replica tells the driver."""

    methods: frozenset[str]
    capacity: int
    node_id: str


class ServiceReplica:
    """One replica of one service, hosted by a Ray actor (see the module docstring)."""

    def __init__(self, spec: ServiceSpec, index: int, job_name: str) -> None:
        self._spec = spec
        self._index = index
        self._job_name = job_name
        self._instance: Any = None
        self._slots: threading.BoundedSemaphore | None = None

    def setup(self) -> ReplicaInfo:
        """Construct the instance and call its ``setup()``.

        Raises:
            ServiceError: the constructor or ``setup()`` raised.
        """
        import ray

        self._instance, capacity = build_replica(self._spec, self._index, self._job_name)
        self._slots = threading.BoundedSemaphore(capacity)
        return ReplicaInfo(
            public_methods(self._instance), capacity, ray.get_runtime_context().get_node_id()
        )

    def call(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        scheduling: Scheduling | None = None,
    ) -> Any:
        """Run ``method`` on the instance, at most ``capacity`` calls at once, with the
        caller's ``scheduling`` fields current."""
        assert self._slots is not None, "setup() first"
        with self._slots, scheduling_scope(scheduling):
            return getattr(self._instance, method)(*args, **kwargs)

    def cleanup(self) -> None:
        """Call the instance's ``cleanup()``.

        Raises:
            ServiceError: it raised.
        """
        cleanup = getattr(self._instance, "cleanup", None)
        if not callable(cleanup):
            return
        try:
            cleanup()
        except Exception as exc:
            raise ServiceError(
                f"service {self._spec.name!r}: cleanup() of replica {self._index + 1}/"
                f"{self._spec.replicas} failed: {type(exc).__name__}: {exc}"
            ) from exc


class _RemoteInstance:
    """Base of the proxies that stand for a replica inside a task actor."""

    ctx = None  # the replica has its own context; the pool must not set one here

    def __init__(self, handle: Any) -> None:
        import ray

        self._get = ray.get
        self._handle = handle


def _remote_method(method: str) -> Callable[..., Any]:
    def call(self: _RemoteInstance, *args: Any, **kwargs: Any) -> Any:
        return self._get(self._handle.call.remote(method, args, kwargs, current_scheduling()))

    call.__name__ = method
    return call


@dataclass(frozen=True)
class RemoteService:
    """A started service as task actors see it: its replicas' handles and methods."""

    spec: ServiceSpec  # the registration, fallback as given (a name, or a RemoteService)
    handles: tuple[Any, ...]
    methods: frozenset[str]
    capacity: int
    nodes: tuple[str, ...]


def _proxy_spec(service: RemoteService) -> ServiceSpec:
    namespace: dict[str, Any] = {m: _remote_method(m) for m in service.methods}
    proxy = type(f"Remote[{service.spec.label}]", (_RemoteInstance,), namespace)
    handles: Iterator[Any] = iter(service.handles)
    return replace(
        service.spec,
        factory=lambda: proxy(next(handles)),  # the pool builds replicas in index order
        concurrency=service.capacity,
    )


def proxy_specs(services: Sequence[RemoteService]) -> list[ServiceSpec]:
    """Specs whose instances are proxies of ``services``' replicas (for a task's registry).

    An inline fallback appears twice, as its own entry and inside its user's spec; the
    registry builds one pool for both (it keys pools by name).
    """
    return [_proxy_spec(service) for service in services]


class RemoteServices:
    """The driver's side: starts, describes and cleans up a job's replica actors.

    Args:
        specs: The job's registrations.
        job_name: The job, for contexts and actor names.
    """

    def __init__(self, specs: Sequence[ServiceSpec], job_name: str) -> None:
        self._specs = list(specs)
        self._job_name = job_name
        self._actors: list[Any] = []
        self.services: list[RemoteService] = []

    def gpu_demand(self) -> float:
        """GPUs all replicas (fallbacks included) reserve together."""
        return sum(spec.num_gpus * spec.replicas for spec in self._all_specs())

    def cpu_demand(self) -> float:
        """CPUs all replicas (fallbacks included) reserve together."""
        return sum(
            (DEFAULT_SERVICE_CPUS if spec.num_cpus is None else spec.num_cpus) * spec.replicas
            for spec in self._all_specs()
        )

    def _all_specs(self) -> list[ServiceSpec]:
        out: list[ServiceSpec] = []
        for spec in self._specs:
            while True:
                out.append(spec)
                if not isinstance(spec.fallback, ServiceSpec):
                    break
                spec = spec.fallback
        return out

    def start(self) -> None:
        """Start every replica actor and wait for its ``setup()``.

        Raises:
            ServiceError: a replica could not be built or set up (all are torn down).
        """
        try:
            for spec in self._specs:
                self._start(spec)
        except BaseException:
            self.kill()
            raise

    def _start(self, spec: ServiceSpec) -> RemoteService:
        import ray

        fallback = spec.fallback
        if isinstance(fallback, ServiceSpec):  # an inline fallback gets replicas of its own
            spec = replace(spec, fallback=_proxy_spec(self._start(fallback)))
        actor_class: Any = ray.remote(ServiceReplica)
        handles = [
            actor_class.options(
                num_cpus=DEFAULT_SERVICE_CPUS if spec.num_cpus is None else spec.num_cpus,
                num_gpus=spec.num_gpus,
                max_concurrency=_MAX_THREADS,
                name=f"sage:{self._job_name}:service:{spec.name}:{index}",
                namespace="sage",
            ).remote(spec, index, self._job_name)
            for index in range(spec.replicas)
        ]
        self._actors.extend(handles)
        infos: list[ReplicaInfo] = []
        setups: list[Any] = [h.setup.remote() for h in handles]
        for index, ref in enumerate(setups):
            try:
                infos.append(ray.get(ref))
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause
                if isinstance(cause, ServiceError):
                    raise ServiceError(str(cause)) from cause.__cause__
                raise ServiceError(
                    f"service {spec.name!r}: replica {index + 1}/{spec.replicas} failed to "
                    f"start: {cause!r}"
                ) from cause
            except ray.exceptions.RayActorError as exc:
                raise ServiceError(
                    f"service {spec.name!r}: the actor of replica {index + 1}/{spec.replicas} "
                    f"died while starting: {exc}"
                ) from exc
        service = RemoteService(
            spec=spec,
            handles=tuple(handles),
            methods=infos[0].methods,
            capacity=infos[0].capacity,
            nodes=tuple(info.node_id for info in infos),
        )
        self.services.append(service)  # fallbacks before the services that use them
        return service

    def close(self) -> None:
        """Call every replica's ``cleanup()`` and end the actors.

        Raises:
            ServiceError: a ``cleanup()`` raised (every actor still ends).
        """
        import ray

        first: BaseException | None = None
        for service in reversed(self.services):
            for ref in [h.cleanup.remote() for h in service.handles]:
                try:
                    ray.get(ref)
                except ray.exceptions.RayError as exc:
                    first = first or exc
        self.kill()
        self.services = []
        if first is not None:
            cause = getattr(first, "cause", first)
            raise ServiceError(str(cause)) from cause

    def kill(self) -> None:
        """End every replica actor now (no cleanup)."""
        import ray

        for handle in self._actors:
            ray.kill(handle, no_restart=True)
        self._actors = []

    def placement(self) -> dict[str, tuple[str, ...]]:
        """The node id of each replica, by service name."""
        return {service.spec.name: service.nodes for service in self.services}
