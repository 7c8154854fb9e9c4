"""``DataStream``: the fluent pipeline API.

Every method records one operator in the environment's logical graph and returns the stream
it produces; nothing runs until ``env.submit()``. Each operator takes its function as a class
(plus constructor arguments), an instance or a plain callable, and ``parallelism=N`` and
``name=...``; operators that run user code also take ``priority=`` and ``slo_ms=``, which
override the job's (``config["priority"]``, ``config["slo_ms"]``) for the LLM and embedding
calls that code makes.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sage.common.core.functions.sink_function import SinkFunction
from sage.common.errors import ConfigError, PlanError
from sage.kernel.api.collect import (
    DEFAULT_MAX_RECORDS,
    CollectResult,
    CollectSink,
    check_max_records,
)
from sage.kernel.graph.function_spec import FunctionForm, FunctionSpec
from sage.kernel.graph.logical import (
    LogicalNode,
    OpKind,
    validate_parallelism,
    validate_scheduling,
)
from sage.kernel.graph.partition import Partitioning
from sage.kernel.windows import (
    Aggregate,
    BoundedOutOfOrderness,
    Reduce,
    WindowAssigner,
    check_lateness,
)

if TYPE_CHECKING:
    from sage.kernel.api.base_environment import BaseEnvironment
    from sage.kernel.api.connected_streams import ConnectedStreams

__all__ = ["DataStream", "KeyedStream", "PrintSink", "WindowedStream"]


class PrintSink(SinkFunction):
    """Writes each record to standard output as ``<prefix><record>`` (what ``.print()`` adds)."""

    def __init__(self, prefix: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prefix = prefix

    def execute(self, data: Any) -> None:
        sys.stdout.write(f"{self.prefix}{data}\n")


class DataStream:
    """A stream of records produced by one operator of a pipeline.

    Example:
        >>> from sage.kernel.api.local_environment import LocalEnvironment
        >>> env = LocalEnvironment("doc")
        >>> out = []
        >>> (env.from_collection(range(5))
        ...     .map(lambda x: x * x, parallelism=2)
        ...     .filter(lambda x: x % 2 == 0)
        ...     .sink(out.append))  # doctest: +ELLIPSIS
        <DataStream of sink ...>
        >>> _ = env.submit()
        >>> sorted(out)
        [0, 4, 16]
    """

    def __init__(
        self, env: BaseEnvironment, node: LogicalNode, partitioning: Partitioning | None = None
    ) -> None:
        self._env = env
        self._node = node
        self._partitioning = partitioning

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self._node.name}>"

    @property
    def node(self) -> LogicalNode:
        """The logical operator that produces this stream."""
        return self._node

    @property
    def env(self) -> BaseEnvironment:
        """The environment the stream belongs to."""
        return self._env

    # -- shared machinery -----------------------------------------------------------------

    def _parallelism(self, op: str, parallelism: int | None) -> int:
        if parallelism is None:
            return self._env.job_config.parallelism
        return validate_parallelism(op, parallelism)

    def _add(
        self,
        kind: OpKind,
        function: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        parallelism: int | None,
        name: str | None,
        methods: tuple[str, ...] = ("execute",),
        priority: int | None = None,
        slo_ms: float | None = None,
    ) -> LogicalNode:
        op = kind.value if name is None else f"{kind.value} {name!r}"
        spec = function_spec(op, function, args, kwargs, methods=methods)
        check_call_shape(op, kind.value, spec, RECORD)
        return self._env.graph.add(
            kind,
            spec,
            parallelism=self._parallelism(op, parallelism),
            inputs=(self._node.id,),
            name=name,
            input_partitioning=self._partitioning,
            scheduling=validate_scheduling(op, priority, slo_ms),
        )

    # -- operators ------------------------------------------------------------------------

    def map(
        self,
        function: Any,
        *args: Any,
        parallelism: int | None = None,
        name: str | None = None,
        priority: int | None = None,
        slo_ms: float | None = None,
        **kwargs: Any,
    ) -> DataStream:
        """Transform each record; a ``None`` result emits nothing.

        Args:
            function: A ``MapFunction`` class (constructed with ``*args, **kwargs`` once per
                parallel instance), an instance (copied per extra instance) or a callable.
            parallelism: Parallel instances (default: the environment's ``parallelism``).
            name: Display name in plans, metrics and errors.
            priority: Gateway priority (lower first) of the LLM and embedding calls this
                operator makes (default: the job's ``config["priority"]``).
            slo_ms: Their latency objective in ms (default: the job's ``config["slo_ms"]``).

        Raises:
            PlanError: ``function`` is not usable (not callable, cannot take one record, or
                its class cannot be constructed with ``*args, **kwargs``), or
                ``parallelism``, ``priority`` or ``slo_ms`` is invalid. Checked here, not on
                the first record.
        """
        node = self._add(
            OpKind.MAP,
            function,
            args,
            kwargs,
            parallelism=parallelism,
            name=name,
            priority=priority,
            slo_ms=slo_ms,
        )
        return DataStream(self._env, node)

    def filter(
        self,
        function: Any,
        *args: Any,
        parallelism: int | None = None,
        name: str | None = None,
        priority: int | None = None,
        slo_ms: float | None = None,
        **kwargs: Any,
    ) -> DataStream:
        """Keep the records for which ``function`` returns a true value.

        ``priority`` / ``slo_ms``: as for :meth:`map`.
        """
        node = self._add(
            OpKind.FILTER,
            function,
            args,
            kwargs,
            parallelism=parallelism,
            name=name,
            priority=priority,
            slo_ms=slo_ms,
        )
        return DataStream(self._env, node)

    def flatmap(
        self,
        function: Any,
        *args: Any,
        parallelism: int | None = None,
        name: str | None = None,
        priority: int | None = None,
        slo_ms: float | None = None,
        **kwargs: Any,
    ) -> DataStream:
        """Emit every item of the iterable ``function`` returns for each record.

        ``priority`` / ``slo_ms``: as for :meth:`map`.
        """
        node = self._add(
            OpKind.FLATMAP,
            function,
            args,
            kwargs,
            parallelism=parallelism,
            name=name,
            priority=priority,
            slo_ms=slo_ms,
        )
        return DataStream(self._env, node)

    def keyby(
        self,
        function: Any,
        *args: Any,
        parallelism: int | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> KeyedStream:
        """Partition the stream by ``function(record)``.

        Records with equal keys reach the same parallel instance of the next operator, whose
        function can keep per-key state in ``self.state``. Keys are routed with a hash that
        is stable across processes (see :func:`sage.kernel.graph.partition.stable_hash`).
        ``parallelism`` defaults to the upstream operator's, so the key function runs fused
        with it.
        """
        if self._partitioning is Partitioning.BROADCAST:
            # caught here, at the wrong call, rather than when the plan compiles at submit
            raise PlanError(
                "keyby: cannot follow .broadcast(), which sends every record to every "
                "instance; drop .broadcast() (keyby routes each key to one instance) or "
                "broadcast after the keyed operator"
            )
        if parallelism is None:
            parallelism = self._node.parallelism
        node = self._add(OpKind.KEYBY, function, args, kwargs, parallelism=parallelism, name=name)
        return KeyedStream(self._env, node)

    def sink(
        self,
        function: Any,
        *args: Any,
        parallelism: int | None = None,
        name: str | None = None,
        priority: int | None = None,
        slo_ms: float | None = None,
        **kwargs: Any,
    ) -> DataStream:
        """End the stream in ``function``: a ``SinkFunction`` or a callable (``list.append``).

        ``priority`` / ``slo_ms``: as for :meth:`map`.
        """
        node = self._add(
            OpKind.SINK,
            function,
            args,
            kwargs,
            parallelism=parallelism,
            name=name,
            priority=priority,
            slo_ms=slo_ms,
        )
        return DataStream(self._env, node)

    def print(
        self, prefix: str = "", *, parallelism: int = 1, name: str | None = None
    ) -> DataStream:
        """End the stream by writing each record to standard output.

        On a ``RemoteEnvironment`` the lines are written where the job runs and come back to
        the submitting terminal while ``submit()`` waits, each prefixed with the operator
        instance, as ``(sink 'print' 1/1) record`` (they are also in ``sage job logs``).
        """
        return self.sink(PrintSink, prefix, parallelism=parallelism, name=name or "print")

    def collect(
        self, *, max_records: int = DEFAULT_MAX_RECORDS, name: str | None = None
    ) -> CollectResult:
        """End the stream in the submitting process: its records, once ``submit()`` returns.

        Use it to look at a job's results, in tests, and wherever a sink would append to a
        list: a list of the submitting process is not where a ``RemoteEnvironment``'s job
        runs, the result of ``collect()`` is. On Ray the records stream back through the
        JobManager while ``submit()``/``wait()`` waits, with backpressure (a job whose
        records were not taken yet waits for its submitter). One instance collects, so the
        records keep the order they reach it in.

        Example:
            >>> from sage.kernel.api.local_environment import LocalEnvironment
            >>> env = LocalEnvironment("doc")
            >>> evens = env.from_collection(range(6)).filter(lambda x: x % 2 == 0).collect()
            >>> _ = env.submit()
            >>> list(evens)
            [0, 2, 4]

        Args:
            max_records: The most records the driver may hold (default 1,000,000). A job
                that sends more fails with ``CollectLimitError`` (whatever its ``on_error``),
                never with a silently truncated result.
            name: Display name of the collecting operator (default ``"collect"``).

        Returns:
            A read-only sequence, filled by each job of the environment.

        Raises:
            PlanError: ``max_records`` is not an int >= 1.
        """
        max_records = check_max_records(max_records)
        collector_id = f"collect-{len(self._env.collect_results)}"
        sink = CollectSink(collector_id, max_records)
        node = self._add(OpKind.SINK, sink, (), {}, parallelism=1, name=name or "collect")
        result = CollectResult(collector_id, node.name, max_records)
        self._env.collect_results[collector_id] = result
        return result

    def batch(
        self,
        size: int,
        timeout_s: float | None = None,
        *,
        parallelism: int | None = None,
        name: str | None = None,
    ) -> DataStream:
        """Group records into lists of up to ``size``.

        A list is emitted when it is full, when ``timeout_s`` has passed since its oldest
        record arrived (even if no new record comes), and at end of stream. Use it before a
        function that is cheaper per record in bulk (an LLM or embedding call).
        """
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise PlanError(f"batch: size={size!r} is invalid; use an integer >= 1")
        if timeout_s is not None and (
            isinstance(timeout_s, bool)
            or not isinstance(timeout_s, int | float)
            or not math.isfinite(timeout_s)  # NaN never expires; for no timeout, pass None
            or timeout_s <= 0
        ):
            raise PlanError(
                f"batch: timeout_s={timeout_s!r} is invalid; use a finite number of seconds > 0, "
                "or None for no timeout"
            )
        label = f"size={size}" + (f", timeout_s={timeout_s}" if timeout_s is not None else "")
        node = self._env.graph.add(
            OpKind.BATCH,
            FunctionSpec.of_iterable((), label),
            parallelism=self._parallelism("batch", parallelism),
            inputs=(self._node.id,),
            name=name or label,
            input_partitioning=self._partitioning,
            options={"size": size, "timeout_s": None if timeout_s is None else float(timeout_s)},
        )
        return DataStream(self._env, node)

    def connect(self, other: DataStream) -> ConnectedStreams:
        """Combine with ``other`` for ``comap``, ``join`` or a shared ``map``.

        Both streams keep flowing independently; the combined operator ends after both ended.
        """
        from sage.kernel.api.connected_streams import ConnectedStreams

        return ConnectedStreams(self._env, [self]).connect(other)

    def broadcast(self) -> DataStream:
        """Send every record to every parallel instance of the next operator."""
        return type(self)(self._env, self._node, Partitioning.BROADCAST)

    def rebalance(self) -> DataStream:
        """Spread records round-robin over the next operator's instances (no chaining)."""
        return type(self)(self._env, self._node, Partitioning.ROUND_ROBIN)


class KeyedStream(DataStream):
    """A stream partitioned by key (the result of :meth:`DataStream.keyby`).

    The operator applied next gets per-key state (``self.state``) and sees every record of a
    key in the same parallel instance.
    """

    def window(
        self,
        assigner: WindowAssigner,
        *,
        timestamp: Callable[[Any], float],
        max_delay: float = 0,
        allowed_lateness: float = 0,
    ) -> WindowedStream:
        """Event-time windows of each key (:mod:`sage.kernel.windows`); then ``.reduce(fn)``
        or ``.aggregate(agg)`` gives one :class:`~sage.kernel.windows.Fired` record per
        window and key once the watermark passes the window's end.

        Args:
            assigner: ``TumblingWindows(size)``, ``SlidingWindows(size, slide)`` or
                ``SessionWindows(gap)``.
            timestamp: A record's event time (the unit of the window sizes).
            max_delay: How far out of order records may come: the watermark is the largest
                timestamp seen minus this.
            allowed_lateness: How long after its end a window still takes records (it fires
                again, updated); later records go to the dead letters as late.

        Raises:
            PlanError: a setting that is not valid (named, with the fix).
        """
        if not all(hasattr(assigner, name) for name in ("assign", "merging")):
            raise PlanError(
                f"window: {assigner!r:.80} is not a window assigner; use TumblingWindows(size), "
                "SlidingWindows(size, slide) or SessionWindows(gap) from sage.kernel.windows"
            )
        if not callable(timestamp):
            raise PlanError(
                f"window: timestamp={timestamp!r:.80} is not callable; pass a function from a "
                "record to its event time, e.g. timestamp=lambda r: r['ts']"
            )
        try:
            BoundedOutOfOrderness(max_delay)
            check_lateness(allowed_lateness)
        except ConfigError as exc:
            raise PlanError(f"window: {exc}") from None
        options = {
            "assigner": assigner,
            "timestamp": timestamp,
            "max_delay": max_delay,
            "allowed_lateness": allowed_lateness,
        }
        return WindowedStream(self, options)


class WindowedStream:
    """A keyed stream cut into event-time windows (:meth:`KeyedStream.window`); a reduce or
    an aggregate makes it a stream of :class:`~sage.kernel.windows.Fired` records again."""

    def __init__(self, keyed: KeyedStream, options: dict[str, Any]) -> None:
        self._keyed = keyed
        self._options = options

    def reduce(
        self,
        function: Callable[[Any, Any], Any],
        *,
        parallelism: int | None = None,
        name: str | None = None,
    ) -> DataStream:
        """Each window's records folded pairwise by ``function`` (``lambda a, b: a + b``)."""
        if not callable(function):
            raise PlanError(f"window reduce: {function!r:.80} is not callable")
        return self.aggregate(Reduce(function), parallelism=parallelism, name=name)

    def aggregate(
        self, aggregate: Aggregate, *, parallelism: int | None = None, name: str | None = None
    ) -> DataStream:
        """Each window's records through ``aggregate`` (``create``, ``add``, ``merge``,
        ``result``: :class:`~sage.kernel.windows.Aggregate`)."""
        methods = ("create", "add", "merge", "result")
        missing = [m for m in methods if not callable(getattr(aggregate, m, None))]
        if missing:
            raise PlanError(
                f"window aggregate: {aggregate!r:.80} lacks {', '.join(m + '()' for m in missing)};"
                " give an object with create(), add(acc, value), merge(a, b) and result(acc), "
                "or use .reduce(function)"
            )
        keyed = self._keyed
        label = f"{type(self._options['assigner']).__name__}"
        node = keyed._env.graph.add(
            OpKind.WINDOW,
            FunctionSpec.of_iterable((), label),
            parallelism=keyed._parallelism("window", parallelism),
            inputs=(keyed._node.id,),
            name=name or label,
            input_partitioning=keyed._partitioning,
            options={**self._options, "aggregate": aggregate},
        )
        return DataStream(keyed._env, node)


def check_same_env(env: BaseEnvironment, other: Any, op: str) -> DataStream:
    """``other`` if it is a stream of ``env``, else a :class:`PlanError` saying what to pass."""
    if not isinstance(other, DataStream):
        raise PlanError(
            f"{op}: expected a DataStream, got {type(other).__name__} {other!r:.80}; pass "
            "another stream of this environment, e.g. a.connect(b) with b = env.from_...(...)"
        )
    if other.env is not env:
        raise PlanError(
            f"{op}: both streams must come from the same environment, but {other.node.name} "
            f"belongs to {other.env.name!r} and this one to {env.name!r}; build both from one env"
        )
    return other


def function_spec(
    op: str,
    function: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    methods: tuple[str, ...] = ("execute",),
) -> FunctionSpec:
    """:meth:`FunctionSpec.of`, first refusing a class that lacks ``methods`` but was given
    constructor arguments, with a message that says so (rather than asking for a class)."""
    if inspect.isclass(function) and (args or kwargs):
        missing = [m for m in methods if not callable(getattr(function, m, None))]
        if missing:
            raise PlanError(
                f"{op}: {function.__qualname__} defines no {', '.join(m + '()' for m in missing)}, "
                "so it is not a function class and cannot take constructor arguments; define "
                f"{', '.join(m + '()' for m in methods)} in it, or pass a callable without "
                "arguments"
            )
    return FunctionSpec.of(op, function, args, kwargs, methods=methods)


@dataclass(frozen=True)
class CallShape:
    """How the runtime calls an operator's function: for :func:`check_call_shape`.

    Attributes:
        n_args: Positional arguments passed per call.
        method: The shape a function class's method must have (``"execute(self, data)"``).
        function: The same for a plain callable (``"a function of one argument"``).
    """

    n_args: int
    method: str
    function: str


RECORD = CallShape(1, "execute(self, data)", "a function of one argument, the record")
NO_ARGS = CallShape(0, "execute(self)", "a function of no arguments returning the next record")
JOIN = CallShape(3, "execute(self, payload, key, tag)", "a function of (payload, key, tag)")


def _signature(fn: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # builtins and C types without metadata: cannot tell
        return None


def _binds(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> str | None:
    """Why ``fn(*args, **kwargs)`` would fail to bind its parameters, or ``None``."""
    signature = _signature(fn)
    if signature is None:
        return None
    try:
        signature.bind(*args, **(kwargs or {}))
    except TypeError as exc:
        return str(exc)
    return None


def check_call_shape(
    op: str, verb: str, spec: FunctionSpec, shape: CallShape, method: str = "execute"
) -> None:
    """Raise a :class:`PlanError` now if the runtime could not construct or call ``spec``.

    A class must accept the constructor arguments given with it, and the function (the
    ``method`` of a class or object, or the callable itself) must accept the arguments the
    operator passes. Otherwise the job fails on its first record (or, with
    ``on_error="skip"``, silently drops every record), far from the call that was wrong,
    for example a ``SourceFunction`` given to ``map``. Functions whose signature cannot be
    read (builtins such as ``str``) are not checked.
    """
    target = spec.target
    if spec.form is FunctionForm.CALLABLES:
        for i, fn in enumerate(target):
            why = _binds(fn, (None,) * shape.n_args)
            if why is not None:
                raise PlanError(
                    f"{op}: function {i} of {spec.label} cannot be called the way {verb} calls "
                    f"it ({why}); pass {shape.function} for each input"
                )
        return
    if spec.form is FunctionForm.CALLABLE:
        why = _binds(target, (None,) * shape.n_args)
        if why is not None:
            raise PlanError(
                f"{op}: {spec.label} cannot be called the way {verb} calls it ({why}); "
                f"pass {shape.function}, or a function class defining {shape.method}"
            )
        return
    if spec.form is FunctionForm.CLASS:
        why = _binds(target, spec.args, spec.kwargs)
        if why is not None:
            raise PlanError(
                f"{op}: {spec.label}(...) cannot be constructed with the arguments given "
                f"({why}); pass its constructor arguments after the class, e.g. "
                f".{verb}({spec.label}, arg, key=value)"
            )
        raw = inspect.getattr_static(target, method, None)
        if isinstance(raw, staticmethod | classmethod):
            fn, n_args = getattr(target, method), shape.n_args
        elif inspect.isfunction(raw):
            fn, n_args = raw, shape.n_args + 1  # unbound: self comes first
        else:
            return
    elif spec.form is FunctionForm.INSTANCE:
        fn, n_args = getattr(target, method), shape.n_args
    else:
        return
    why = _binds(fn, (None,) * n_args)
    if why is not None:
        raise PlanError(
            f"{op}: {spec.label}.{method}() cannot be called the way {verb} calls it ({why}); "
            f"a {verb} function defines {shape.method.replace('execute', method)}"
        )
