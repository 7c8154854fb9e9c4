"""Which operators fuse into one task (operator chaining), as a pure function of the graph.

Fusing a forward edge removes a channel hop: the records pass from one function to the next
inside one loop. As in Flink's ``isChainable``, an edge is fused only when that cannot change
the result: one input, one consumer, equal parallelism, a forward (or single-instance keyed)
partitioning, and a downstream operator that can run in the middle of a chain.
"""

from __future__ import annotations

from sage.kernel.graph.logical import LogicalNode, OpKind
from sage.kernel.graph.partition import Partitioning

__all__ = ["can_follow_in_chain", "is_chainable"]


def can_follow_in_chain(kind: OpKind) -> bool:
    """Whether an operator of ``kind`` may be fused after another operator.

    Sources start chains. Batch operators need their own task because their time-based
    flush must fire while upstream code is blocked; comap and join read several inputs.
    """
    match kind:
        case OpKind.MAP | OpKind.FILTER | OpKind.FLATMAP | OpKind.KEYBY | OpKind.SINK:
            return True
        case OpKind.SOURCE | OpKind.BATCH | OpKind.WINDOW | OpKind.COMAP | OpKind.JOIN:
            return False
    raise AssertionError(f"unknown operator kind {kind!r}")  # pragma: no cover


def is_chainable(
    up: LogicalNode,
    down: LogicalNode,
    partitioning: Partitioning,
    *,
    up_consumers: int,
    chaining_enabled: bool = True,
) -> bool:
    """Whether the edge ``up -> down`` is fused into one task."""
    if not chaining_enabled or down.start_new_chain:
        return False
    if len(down.inputs) != 1 or up_consumers != 1 or up.parallelism != down.parallelism:
        return False
    if not can_follow_in_chain(down.kind):
        return False
    match partitioning:
        case Partitioning.FORWARD:
            return True
        case Partitioning.HASH:
            return up.parallelism == 1  # one instance on each side: every key meets there
        case Partitioning.ROUND_ROBIN | Partitioning.BROADCAST:
            return False
    raise AssertionError(f"unknown partitioning {partitioning!r}")  # pragma: no cover
