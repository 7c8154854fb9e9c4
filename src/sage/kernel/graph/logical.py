"""The logical pipeline: one :class:`LogicalNode` per operator the user wrote.

``DataStream`` methods append nodes to a :class:`LogicalGraph`; the compiler turns a frozen
snapshot of it into a physical plan. Node ids grow in creation order and every input has a
smaller id than its consumer, so id order is a topological order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sage.common.core.scheduling import Scheduling, scheduling_problem
from sage.common.errors import PlanError
from sage.kernel.graph.function_spec import FunctionSpec
from sage.kernel.graph.partition import Partitioning

__all__ = [
    "LogicalGraph",
    "LogicalNode",
    "OpKind",
    "SourceKind",
    "validate_parallelism",
    "validate_scheduling",
]


class OpKind(StrEnum):
    """The kinds of operator a pipeline is made of."""

    SOURCE = "source"
    MAP = "map"
    FILTER = "filter"
    FLATMAP = "flatmap"
    KEYBY = "keyby"
    SINK = "sink"
    BATCH = "batch"
    WINDOW = "window"
    COMAP = "comap"
    JOIN = "join"


class SourceKind(StrEnum):
    """How a source produces records."""

    COLLECTION = "collection"  # a sized, re-iterable collection (list, tuple, range, dict...)
    ITERATOR = "iterator"  # a one-shot iterable (generator, file, iterator)
    SOURCE_FUNCTION = "source_function"  # SourceFunction: execute() until StopSignal
    BATCH_FUNCTION = "batch_function"  # BatchFunction: execute() until None


@dataclass(frozen=True)
class LogicalNode:
    """One operator of the logical pipeline.

    Attributes:
        id: Position in the graph (creation order, a topological order).
        kind: What the operator does.
        label: Short display name of the function (``"Parse"``, ``"<lambda> at x.py:3"``).
        function: The user function, validated.
        parallelism: Number of parallel instances.
        inputs: Ids of upstream nodes (two or more for connected streams).
        input_partitioning: Explicit partitioning of the input edges (``broadcast()``,
            ``rebalance()``), or ``None`` to let the compiler choose.
        start_new_chain: Never fuse this operator with its upstream.
        source_kind: For sources, how records are produced.
        options: Operator-specific settings (batch size and timeout, print prefix...).
        scheduling: The operator's own ``priority`` / ``slo_ms`` (each unset one is the
            job's), or ``None`` to use the job's.
    """

    id: int
    kind: OpKind
    label: str
    function: FunctionSpec
    parallelism: int
    inputs: tuple[int, ...] = ()
    input_partitioning: Partitioning | None = None
    start_new_chain: bool = False
    source_kind: SourceKind | None = None
    options: dict[str, Any] = field(default_factory=dict)
    scheduling: Scheduling | None = None

    @property
    def name(self) -> str:
        """Unique display name used in plans, metrics and errors: ``map 'Parse'``."""
        return f"{self.kind.value} '{self.label}'"


def validate_parallelism(op: str, parallelism: Any) -> int:
    """Return ``parallelism`` as an int >= 1 or raise a :class:`PlanError` naming ``op``."""
    if isinstance(parallelism, bool) or not isinstance(parallelism, int) or parallelism < 1:
        raise PlanError(
            f"{op}: parallelism={parallelism!r} is invalid; use an integer >= 1 or omit it"
        )
    return parallelism


def validate_scheduling(op: str, priority: Any, slo_ms: Any) -> Scheduling | None:
    """An operator's ``priority=`` / ``slo_ms=`` as :class:`Scheduling` (``None``: neither
    given), or a :class:`PlanError` naming ``op``."""
    for key, value in (("priority", priority), ("slo_ms", slo_ms)):
        problem = None if value is None else scheduling_problem(key, value)
        if problem is not None:
            raise PlanError(f"{op}: {key}={value!r} is invalid; {problem}, or omit it")
    return Scheduling.of(priority, slo_ms)


class LogicalGraph:
    """The mutable pipeline being built by an environment; :meth:`nodes` snapshots it."""

    def __init__(self) -> None:
        self._nodes: list[LogicalNode] = []
        self._labels: dict[str, int] = {}

    def add(
        self,
        kind: OpKind,
        function: FunctionSpec,
        *,
        parallelism: int,
        inputs: tuple[int, ...] = (),
        name: str | None = None,
        **fields: Any,
    ) -> LogicalNode:
        """Append an operator and return its node; ``name`` overrides the function's label."""
        for up in inputs:
            if not 0 <= up < len(self._nodes):
                raise PlanError(f"{kind.value}: input node {up} is not part of this pipeline")
            if self._nodes[up].kind is OpKind.SINK:
                raise PlanError(
                    f"{kind.value}: cannot add an operator after {self._nodes[up].name}; "
                    "a sink ends its stream — apply the operator before .sink(...)"
                )
        label = name or function.label or kind.value
        if name is not None and not isinstance(name, str):
            raise PlanError(f"{kind.value}: name={name!r} must be a string")
        count = self._labels.get(label, 0) + 1
        self._labels[label] = count
        if count > 1:
            label = f"{label}#{count}"
        node = LogicalNode(
            id=len(self._nodes),
            kind=kind,
            label=label,
            function=function,
            parallelism=parallelism,
            inputs=inputs,
            **fields,
        )
        self._nodes.append(node)
        return node

    def node(self, node_id: int) -> LogicalNode:
        """The node with id ``node_id``."""
        return self._nodes[node_id]

    def nodes(self) -> tuple[LogicalNode, ...]:
        """An immutable snapshot of the pipeline (what the compiler takes)."""
        return tuple(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)
