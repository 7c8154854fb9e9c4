"""Where a job's ``collect()`` operators put their records, in each runtime.

A collecting function (``sage.kernel.api.collect.CollectSink``) names its collector and
takes a target with ``attach(target)`` before it opens; :func:`attach_collector` gives it
one. In the submitting process (a ``LocalEnvironment``) the target appends to the
result's list. Where the job runs away from its submitter (a JobManager's threads, a Ray
task host), :class:`CollectBuffers` hands the records over: the collecting operator fills a
bounded buffer (waiting while it is full: backpressure), and the JobManager takes
:class:`CollectedChunk` objects from it, each a pickled list of records, until every
collector has closed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import cloudpickle  # type: ignore[import-untyped]

from sage.common.errors import PlanError
from sage.kernel.graph.logical import LogicalNode
from sage.kernel.graph.plan import PhysicalPlan
from sage.kernel.runtime.handover import Handover

__all__ = [
    "COLLECT_BUFFER_RECORDS",
    "CollectBuffers",
    "CollectTarget",
    "CollectedChunk",
    "TargetFor",
    "attach_collector",
    "collecting_tasks",
    "collector_id",
    "pack",
    "unpack",
]

COLLECT_BUFFER_RECORDS = 8192
"""Records one collector's buffer holds before the collecting operator waits."""


class CollectTarget(Protocol):
    """What a collecting function hands its records to."""

    def put(self, record: Any) -> None:
        """Take one record (may wait for room)."""

    def close(self) -> None:
        """No more records (may wait until the last were taken)."""


TargetFor = Callable[[str], CollectTarget]
"""Gives the target of a collector, by its id."""


@dataclass(frozen=True)
class CollectedChunk:
    """Records of one collector, in the order they were collected, pickled together.

    Attributes:
        collector: The collector's id.
        payload: The pickled list of records (:func:`pack`).
        count: How many records it holds.
    """

    collector: str
    payload: bytes
    count: int


def pack(records: list[Any]) -> bytes:
    """Pickle ``records`` (with cloudpickle: classes defined in the submitter's script come
    back as themselves)."""
    payload: bytes = cloudpickle.dumps(records, protocol=5)
    return payload


def unpack(payload: bytes) -> list[Any]:
    """The records :func:`pack` pickled. Unpickling runs code chosen by whoever made
    ``payload``: only call it on a payload whose origin was authenticated."""
    records: list[Any] = cloudpickle.loads(payload)
    return records


def collector_id(node: LogicalNode) -> str | None:
    """The collector ``node`` fills, or ``None`` if it does not collect."""
    target = node.function.target
    cid = getattr(target, "collector_id", None)
    return cid if isinstance(cid, str) and callable(getattr(target, "attach", None)) else None


def collecting_tasks(plan: PhysicalPlan) -> dict[str, list[str]]:
    """The collectors each task of ``plan`` fills, for the tasks that fill any."""
    by_chain: dict[int, list[str]] = {}
    for chain in plan.chains:
        ids = [cid for i in chain.node_ids if (cid := collector_id(plan.nodes[i])) is not None]
        if ids:
            by_chain[chain.id] = ids
    return {t.id: by_chain[t.chain_id] for t in plan.tasks if t.chain_id in by_chain}


def attach_collector(function: Any, targets: TargetFor | None, operator: str) -> None:
    """Give a collecting ``function`` its target (other functions are left alone).

    Raises:
        PlanError: the function collects but this runtime has no targets.
    """
    cid = getattr(function, "collector_id", None)
    attach = getattr(function, "attach", None)
    if not isinstance(cid, str) or not callable(attach):
        return
    if targets is None:
        raise PlanError(
            f"{operator}: collect() needs a runtime that delivers records to the submitter; "
            "run the pipeline with env.submit() on a LocalEnvironment or RemoteEnvironment"
        )
    attach(targets(cid))


class CollectBuffers:
    """The collectors' buffers of one process, and the one fetcher that empties them.

    Calling it gives a collector's target (a buffer that waits for the drain on close).
    """

    def __init__(self, capacity: int = COLLECT_BUFFER_RECORDS) -> None:
        self._handover = Handover(capacity)

    def __call__(self, collector: str) -> CollectTarget:
        return self._handover.buffer(collector, drain_on_close=True)

    def take(self, max_records: int, timeout: float | None) -> list[CollectedChunk] | None:
        """Up to ``max_records`` records, pickled by collector; ``[]`` after ``timeout``
        seconds without any; ``None`` once every collector has closed and been drained
        (or the job was cancelled)."""
        taken = self._handover.take(max_records, timeout)
        if taken is None:
            return None
        return [CollectedChunk(name, pack(records), len(records)) for name, records in taken]

    def cancel(self) -> None:
        """Wake every waiter; a collector still putting raises ``Cancelled``."""
        self._handover.cancel()
