"""``BaseEnvironment``: building a pipeline, compiling it, and controlling its job.

Subclasses decide where the job runs (:class:`~sage.kernel.api.local_environment.LocalEnvironment`
on threads of this process). This module starts no threads and imports no runtime until
``submit``.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from sage.common.errors import ConfigError, JobError, PlanError
from sage.kernel.api.collect import CollectResult
from sage.kernel.api.datastream import NO_ARGS, DataStream, check_call_shape, function_spec
from sage.kernel.config import JobConfig
from sage.kernel.graph.compiler import compile_plan
from sage.kernel.graph.function_spec import FunctionSpec, describe_callable
from sage.kernel.graph.logical import (
    LogicalGraph,
    LogicalNode,
    OpKind,
    SourceKind,
    validate_parallelism,
)
from sage.kernel.graph.plan import PhysicalPlan
from sage.kernel.services.spec import ServiceSpec

if TYPE_CHECKING:
    from sage.kernel.runtime.error_policy import DeadLetter
    from sage.kernel.runtime.metrics import JobMetrics

__all__ = ["BaseEnvironment", "Job"]


class Job(Protocol):
    """What an environment needs from a job of any runtime."""

    def start(self) -> Job: ...
    def run(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...
    def stop(self, timeout: float | None = None) -> bool: ...
    def close(self) -> None: ...
    def metrics(self) -> JobMetrics: ...
    @property
    def status(self) -> Any: ...
    @property
    def dead_letters(self) -> list[DeadLetter]: ...


def _check_timeout(op: str, timeout: Any) -> float | None:
    """``timeout`` as seconds (finite, >= 0) or ``None``; else a :class:`ConfigError`.

    Checked here because the job would otherwise pass it to a thread wait, which fails on a
    string and overflows on infinity only once the job is still running.
    """
    if timeout is None:
        return None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or (isinstance(timeout, float) and not math.isfinite(timeout))
        or timeout < 0
    ):
        raise ConfigError(
            f"{op}: timeout={timeout!r} is invalid; use a finite number of seconds >= 0, "
            "or None to wait until the job ends"
        )
    return float(timeout)


def _exhausted_generator(node: LogicalNode) -> bool:
    """Whether ``node`` reads a generator that has already run to its end.

    A job reading it would silently produce nothing, which happens on the second ``submit``
    of a pipeline built on ``from_collection(x for x in ...)``.
    """
    target = node.function.target
    return (
        node.source_kind is SourceKind.ITERATOR
        and inspect.isgenerator(target)
        and inspect.getgeneratorstate(target) == inspect.GEN_CLOSED
    )


def _source_op(name: str | None) -> str:
    return "source" if name is None else f"source {name!r}"


def _is_data(obj: Any) -> bool:
    """Whether ``obj`` is data to iterate (rather than a function to call)."""
    if callable(getattr(obj, "execute", None)) or isinstance(obj, type):
        return False
    return isinstance(obj, Iterable) and not callable(obj)


class BaseEnvironment:
    """A pipeline under construction and the job that runs it.

    Args:
        name: Name of the job (used in plans, metrics, thread names and logs).
        config: Settings; see :class:`sage.kernel.config.JobConfig` for the kernel's keys
            (``on_error``, ``parallelism``, ``batch_size``, ``channel_capacity``, ``chaining``...).

    Raises:
        ConfigError: a configuration value is invalid.
    """

    def __init__(self, name: str = "sage_job", config: Mapping[str, Any] | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise PlanError(f"environment name must be a non-empty string, got {name!r}")
        self.name = name
        self.job_config = JobConfig.from_mapping(config)
        self.config: dict[str, Any] = dict(config or {})
        self.graph = LogicalGraph()
        self.services: list[ServiceSpec] = []
        self.collect_results: dict[str, CollectResult] = {}
        """What each ``stream.collect()`` returned, by collector id (filled by the job)."""
        self._job: Job | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, operators={len(self.graph)})"

    def __enter__(self) -> BaseEnvironment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sources --------------------------------------------------------------------------

    def _source(
        self, kind: SourceKind, spec: FunctionSpec, parallelism: int, name: str | None
    ) -> DataStream:
        op = _source_op(name)
        parallelism = validate_parallelism(op, parallelism)
        if kind is SourceKind.ITERATOR and parallelism > 1:
            raise PlanError(
                f"{op}: a one-shot iterator ({spec.label}) can be read by one instance only, "
                f"but parallelism={parallelism}; pass a list/sequence to from_collection(...) "
                "or a SourceFunction that reads its share via self.ctx.instance_index"
            )
        node = self.graph.add(
            OpKind.SOURCE, spec, parallelism=parallelism, name=name, source_kind=kind
        )
        return DataStream(self, node)

    def _data_source(self, data: Iterable[Any], parallelism: int, name: str | None) -> DataStream:
        label = type(data).__name__
        if isinstance(data, Collection) and not isinstance(data, Iterator):
            return self._source(
                SourceKind.COLLECTION, FunctionSpec.of_iterable(data, label), parallelism, name
            )
        return self._source(
            SourceKind.ITERATOR, FunctionSpec.of_iterable(data, label), parallelism, name
        )

    def from_source(
        self,
        function: Any,
        *args: Any,
        parallelism: int = 1,
        name: str | None = None,
        **kwargs: Any,
    ) -> DataStream:
        """Start a stream from a ``SourceFunction``, a callable, or any iterable/generator.

        A ``SourceFunction`` (class, with ``*args, **kwargs``, or instance) or a zero-argument
        callable returns the next record per call and :class:`StopSignal` to end; ``None``
        emits nothing for that call. The runtime never sleeps between calls: a source that
        has nothing yet should block until it has.

        Raises:
            PlanError: ``function`` is neither a source function nor iterable, cannot be
                called without arguments, or its class cannot be constructed with
                ``*args, **kwargs``.
        """
        if _is_data(function) and not args and not kwargs:
            return self._data_source(function, parallelism, name)
        spec = function_spec("from_source", function, args, kwargs)
        check_call_shape(_source_op(name), "from_source", spec, NO_ARGS)
        return self._source(SourceKind.SOURCE_FUNCTION, spec, parallelism, name)

    def from_batch(
        self,
        function: Any,
        *args: Any,
        parallelism: int = 1,
        name: str | None = None,
        **kwargs: Any,
    ) -> DataStream:
        """Start a bounded stream from a ``BatchFunction`` (ends on ``None``) or an iterable."""
        if _is_data(function) and not args and not kwargs:
            return self._data_source(function, parallelism, name)
        spec = function_spec("from_batch", function, args, kwargs)
        check_call_shape(_source_op(name), "from_batch", spec, NO_ARGS)
        return self._source(SourceKind.BATCH_FUNCTION, spec, parallelism, name)

    def from_collection(
        self, data: Iterable[Any], *, parallelism: int = 1, name: str | None = None
    ) -> DataStream:
        """Start a stream from the items of ``data``.

        A sized collection (list, tuple, range, dict...) may be read by several parallel
        instances, each taking every ``parallelism``-th item; a one-shot iterator or
        generator by one.
        """
        if not isinstance(data, Iterable) or isinstance(data, type):
            raise PlanError(
                f"from_collection: expected an iterable (list, range, generator...), got "
                f"{describe_callable(data) if callable(data) else type(data).__name__}; "
                "use from_source(...) for a source function"
            )
        return self._data_source(data, parallelism, name)

    # -- services -------------------------------------------------------------------------

    def register_service(
        self,
        name: str,
        factory_or_class: Any,
        *args: Any,
        replicas: int = 1,
        concurrency: int | None = None,
        fallback: Any = None,
        timeout: float | None = None,
        max_waiting: int | None = None,
        num_cpus: float | None = None,
        num_gpus: float = 0,
        **kwargs: Any,
    ) -> None:
        """Make a long-lived service callable from every function of this environment's jobs.

        Each job builds its own instances before its first record (calling ``setup()``)
        and cleans them up after its last (``cleanup()``). Functions call it with
        ``self.call_service["name"].method(...)``, ``self.call_service_async[...]`` or
        ``self.call_service("name", *args, method="m", timeout=s)``.

        Args:
            name: The name functions call the service by.
            factory_or_class: A zero-argument factory (``lambda: MemoryService()``) or a
                class, constructed with ``*args, **kwargs``.
            replicas: Instances sharing the calls (each with its own state).
            concurrency: Calls one instance serves at once (default: the service's
                ``max_concurrency``, else 1).
            fallback: Another registered service's name, or a class / factory, that takes
                the calls this one raises on, times out on, or is saturated for.
            timeout: Seconds a call may take before it goes to the fallback (or fails with
                ``ServiceTimeoutError``).
            max_waiting: Callers allowed to wait for a busy service before new calls go to
                the fallback.
            num_cpus: On Ray (``RemoteEnvironment``), CPUs each replica reserves.
            num_gpus: On Ray, GPUs each replica reserves: ``num_gpus=1`` places every
                replica on a node with a free GPU ("GPU services on GPU nodes"). The local
                runtime runs services in-process and ignores both.

        Note:
            These option names are reserved: pass constructor arguments of the same names
            through a factory (``lambda: MyService(timeout=5)``).

        Raises:
            ConfigError: an argument is invalid or the name is already registered.
        """
        from sage.common.errors import ConfigError

        if any(spec.name == name for spec in self.services):
            raise ConfigError(f"a service named {name!r} is already registered; pick another name")
        self.services.append(
            ServiceSpec.of(
                name,
                factory_or_class,
                args,
                kwargs,
                replicas=replicas,
                concurrency=concurrency,
                fallback=fallback,
                timeout=timeout,
                max_waiting=max_waiting,
                num_cpus=num_cpus,
                num_gpus=num_gpus,
            )
        )

    # -- compiling ------------------------------------------------------------------------

    def plan(self) -> PhysicalPlan:
        """Compile the pipeline into its physical execution graph (no job is started)."""
        return compile_plan(self.name, self.graph.nodes(), chaining=self.job_config.chaining)

    def explain(self) -> str:
        """Print the physical execution graph (chains, tasks, partitioning) and return it."""
        text = self.plan().explain()
        sys.stdout.write(text + "\n")
        return text

    # -- running --------------------------------------------------------------------------

    def _create_job(self, plan: PhysicalPlan) -> Job:
        """Build (not start) the job that runs ``plan`` on this environment's runtime."""
        raise NotImplementedError

    def submit(self, autostop: bool = True) -> Job:
        """Compile and run the pipeline.

        Args:
            autostop: ``True`` (default): block until every source is exhausted and every
                record has reached the sinks. ``False``: return at once; use ``stop()``,
                ``wait()`` and ``close()``.

        Returns:
            The job (also reachable through the environment's shortcuts).

        Raises:
            PlanError: the pipeline is invalid, or a source reads a generator that an
                earlier job already consumed.
            ConfigError: ``autostop`` is not a bool.
            OperatorError: (``autostop=True``) user code failed, naming operator, instance
                and record.
            JobError: a job of this environment is still running.
        """
        if not isinstance(autostop, bool):
            raise ConfigError(
                f"submit: autostop={autostop!r} is invalid; use True (block until the job "
                "ends) or False (return at once)"
            )
        if self._job is not None and self._job.status.value in ("running", "stopping"):
            raise JobError(
                f"a job of environment {self.name!r} is still running; call env.wait(), "
                "env.stop() or env.close() before submitting again"
            )
        plan = self.plan()
        exhausted = [n.name for n in self.graph.nodes() if _exhausted_generator(n)]
        if exhausted:
            raise PlanError(
                f"{', '.join(exhausted)} reads a generator that is already exhausted (an "
                "earlier job of this environment, or other code, consumed it), so the job "
                "would produce nothing; to run a pipeline again, give from_collection(...) a "
                "list or another collection, or build a new environment"
            )
        job = self._create_job(plan)
        self._job = job
        if not autostop:
            job.start()
            return job
        try:
            job.run()
        except KeyboardInterrupt:
            job.close()
            raise
        return job

    def _current(self) -> Job:
        if self._job is None:
            raise JobError(f"environment {self.name!r} has no job yet; call env.submit() first")
        return self._job

    @property
    def job(self) -> Job | None:
        """The most recently submitted job, if any."""
        return self._job

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends; ``False`` if ``timeout`` passed first. Raises its error.

        Raises:
            ConfigError: ``timeout`` is not ``None`` or a finite number of seconds >= 0.
        """
        return self._current().wait(_check_timeout("wait", timeout))

    def stop(self, timeout: float | None = None) -> bool:
        """Stop the job gracefully (sources end, records in flight drain) and wait for it.

        Raises:
            ConfigError: ``timeout`` is not ``None`` or a finite number of seconds >= 0.
        """
        return self._current().stop(_check_timeout("stop", timeout))

    def close(self) -> None:
        """Cancel the job if it still runs and release its resources; never raises."""
        if self._job is not None:
            self._job.close()

    def metrics(self) -> JobMetrics:
        """Per-operator and per-task metrics of the current (or last) job."""
        return self._current().metrics()

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """Records kept by ``on_error="dead_letter"`` in the current (or last) job."""
        return [] if self._job is None else self._job.dead_letters
