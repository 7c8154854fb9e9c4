"""``ConnectedStreams``: two or more streams combined by ``connect``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sage.common.errors import PlanError
from sage.kernel.api.datastream import (
    JOIN,
    RECORD,
    DataStream,
    check_call_shape,
    check_same_env,
    function_spec,
)
from sage.kernel.graph.function_spec import FunctionForm, FunctionSpec
from sage.kernel.graph.logical import OpKind, validate_parallelism, validate_scheduling

if TYPE_CHECKING:
    from sage.kernel.api.base_environment import BaseEnvironment

__all__ = ["ConnectedStreams"]


class ConnectedStreams:
    """Streams combined with :meth:`DataStream.connect`; input *i* is the *i*-th stream.

    Example:
        >>> from sage.kernel.api.local_environment import LocalEnvironment
        >>> env = LocalEnvironment("doc")
        >>> out = []
        >>> a, b = env.from_collection([1, 2]), env.from_collection(["x"])
        >>> a.connect(b).map(str).sink(out.append)  # doctest: +ELLIPSIS
        <DataStream of sink ...>
        >>> _ = env.submit()
        >>> sorted(out)
        ['1', '2', 'x']
    """

    def __init__(self, env: BaseEnvironment, streams: Sequence[DataStream]) -> None:
        self._env = env
        self._streams = list(streams)

    def __repr__(self) -> str:
        return f"<ConnectedStreams of {', '.join(s.node.name for s in self._streams)}>"

    @property
    def streams(self) -> list[DataStream]:
        """The connected streams, in input order."""
        return list(self._streams)

    def connect(self, other: DataStream) -> ConnectedStreams:
        """Add one more input."""
        return ConnectedStreams(
            self._env, [*self._streams, check_same_env(self._env, other, "connect")]
        )

    def _add(
        self,
        kind: OpKind,
        spec: FunctionSpec,
        parallelism: int | None,
        name: str | None,
        priority: int | None = None,
        slo_ms: float | None = None,
    ) -> DataStream:
        op = kind.value if name is None else f"{kind.value} {name!r}"
        # the function must take what the operator passes (checked before the graph changes)
        if kind is OpKind.JOIN:
            check_call_shape(op, kind.value, spec, JOIN)
        elif kind is OpKind.COMAP and spec.form is not FunctionForm.CALLABLES:
            for i in range(len(self._streams)):
                check_call_shape(op, kind.value, spec, RECORD, method=f"map{i}")
        else:
            check_call_shape(op, kind.value, spec, RECORD)
        p = (
            self._env.job_config.parallelism
            if parallelism is None
            else validate_parallelism(op, parallelism)
        )
        scheduling = validate_scheduling(op, priority, slo_ms)
        node = self._env.graph.add(
            kind,
            spec,
            parallelism=p,
            inputs=tuple(s.node.id for s in self._streams),
            name=name,
            scheduling=scheduling,
        )
        return DataStream(self._env, node)

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
        """Apply one map function to the records of every input (a union).

        ``priority`` / ``slo_ms``: as for :meth:`DataStream.map`.
        """
        spec = function_spec("map", function, args, kwargs)
        return self._add(OpKind.MAP, spec, parallelism, name, priority, slo_ms)

    def comap(
        self,
        function: Any,
        *args: Any,
        parallelism: int | None = None,
        name: str | None = None,
        priority: int | None = None,
        slo_ms: float | None = None,
        **kwargs: Any,
    ) -> DataStream:
        """Records of input *i* go through ``function.map<i>`` (``map0``, ``map1``, ...).

        ``function`` is a ``CoMapFunction`` class or instance, or a sequence of callables,
        one per input. A ``None`` result emits nothing. ``priority`` / ``slo_ms``: as for
        :meth:`DataStream.map`.
        """
        n = len(self._streams)
        if isinstance(function, list | tuple):
            if args or kwargs:
                raise PlanError("comap: constructor arguments need a CoMapFunction class")
            spec = FunctionSpec.of_callables("comap", function, n)
        else:
            spec = function_spec(
                "comap", function, args, kwargs, methods=tuple(f"map{i}" for i in range(n))
            )
        return self._add(OpKind.COMAP, spec, parallelism, name, priority, slo_ms)

    def join(
        self,
        function: Any,
        *args: Any,
        parallelism: int | None = None,
        name: str | None = None,
        priority: int | None = None,
        slo_ms: float | None = None,
        **kwargs: Any,
    ) -> DataStream:
        """Keyed join: ``function.execute(payload, key, tag)`` for each record of any input.

        Every input must be keyed (``.keyby(...)`` before ``.connect(...)``); records with
        equal keys from all inputs meet in the same instance, which keeps what it must match
        in ``self.state``. Returns the stream of the items each call returns.
        ``priority`` / ``slo_ms``: as for :meth:`DataStream.map`.
        """
        for stream in self._streams:
            if stream.node.kind is not OpKind.KEYBY:
                raise PlanError(
                    f"join: {stream.node.name} is not keyed; call .keyby(...) on each stream "
                    "before .connect(...)"
                )
        spec = function_spec("join", function, args, kwargs)
        return self._add(OpKind.JOIN, spec, parallelism, name, priority, slo_ms)
