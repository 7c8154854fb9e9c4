"""Per-operator and per-task metrics, written by task threads and read at any time.

Writers are the task threads (plain integer increments and list stores, safe under the GIL);
readers take snapshots (:class:`OperatorMetrics`, :class:`TaskMetrics`, :class:`JobMetrics`)
that are frozen and JSON-ready. Latency is sampled: each task times its operators record by
record on one batch every ``metrics_sample_interval_s`` (and on every batch of a slow task),
so percentiles are real per-record times while the hot path stays untimed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sage.common.stats import LATENCY_BUCKETS, LatencyRing, quantiles_ms
from sage.kernel.services.metrics import ServiceMetrics

__all__ = [
    "JobMetrics",
    "LatencyRing",
    "OperatorMetrics",
    "OperatorStats",
    "TaskMetrics",
    "TaskStats",
    "merged_buckets",
]


class OperatorStats:
    """Live counters of one parallel instance of one operator."""

    __slots__ = (
        "errors",
        "instance",
        "kind",
        "latency",
        "name",
        "node_id",
        "parallelism",
        "records_in",
        "records_out",
    )

    def __init__(self, node_id: int, name: str, kind: str, instance: int, parallelism: int) -> None:
        self.node_id = node_id
        self.name = name
        self.kind = kind
        self.instance = instance
        self.parallelism = parallelism
        self.records_in = 0
        self.records_out = 0
        self.errors = 0
        self.latency = LatencyRing(buckets=LATENCY_BUCKETS)


class TaskStats:
    """Live counters of one task (a chain instance)."""

    __slots__ = (
        "batches",
        "busy_s",
        "finished_at",
        "instance",
        "latency",
        "operators",
        "queue",
        "records_in",
        "records_out",
        "started_at",
        "status",
        "task_id",
    )

    def __init__(self, task_id: str, instance: int, operators: list[OperatorStats]) -> None:
        self.task_id = task_id
        self.instance = instance
        self.operators = operators
        self.records_in = 0
        self.records_out = 0
        self.batches = 0
        self.busy_s = 0.0
        self.latency = LatencyRing(1024)
        self.status = "created"
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.queue: Any = None  # the task's inbox: .depth, .capacity, .high_water


@dataclass(frozen=True)
class OperatorMetrics:
    """One operator, summed over its parallel instances (or one instance when ``instance`` is set).

    Latencies are per-record processing times in milliseconds, timed by the runtime on sampled
    batches: the profile a hand-written timing wrapper would give, without writing one.

    Attributes:
        node_id: The operator's id in the job's graph (the ends of :attr:`JobMetrics.edges`).
        mean_ms: Mean per-record time; ``mean_ms * records`` estimates the time spent in it.
        throughput_rps: Records processed per second, averaged since the job started.
        backpressure: Fill (0..1) of the fullest input queue of the operator's tasks; only
            the first operator of a fused chain has a queue, the others show 0.
        latency_buckets: Every sampled per-record time counted in the buckets of
            :data:`~sage.common.stats.LATENCY_BUCKETS` (then the overflow), for a
            histogram; ``()`` when nothing was sampled.
        latency_sum_s: The sum of those times, in seconds.
    """

    operator: str
    kind: str
    parallelism: int
    records_in: int
    records_out: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput_rps: float
    instance: int | None = None
    node_id: int = -1
    mean_ms: float = 0.0
    backpressure: float = 0.0
    latency_buckets: tuple[int, ...] = ()
    latency_sum_s: float = 0.0


@dataclass(frozen=True)
class TaskMetrics:
    """One task: a chain of fused operators running as one thread (or actor)."""

    task_id: str
    operators: tuple[str, ...]
    instance: int
    status: str
    records_in: int
    records_out: int
    errors: int
    batches: int
    busy_s: float
    queue_depth: int
    queue_peak: int
    queue_capacity: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


@dataclass(frozen=True)
class JobMetrics:
    """A snapshot of a job's metrics."""

    job: str
    status: str
    elapsed_s: float
    operators: tuple[OperatorMetrics, ...]
    tasks: tuple[TaskMetrics, ...]
    instances: tuple[OperatorMetrics, ...] = field(default=(), repr=False)
    dead_letters: int = 0
    services: tuple[ServiceMetrics, ...] = ()
    edges: tuple[tuple[int, int], ...] = ()
    """The operator graph: ``(upstream node_id, downstream node_id)`` pairs."""

    def service(self, name: str) -> ServiceMetrics:
        """Metrics of the service registered as ``name``."""
        for svc in self.services:
            if svc.service == name:
                return svc
        known = ", ".join(s.service for s in self.services) or "(none)"
        raise KeyError(f"no service named {name!r}; services: {known}")

    def operator(self, name: str) -> OperatorMetrics:
        """Metrics of operator ``name``: full name (``"map 'Parse'"``) or label (``"Parse"``)."""
        for op in self.operators:
            if op.operator == name or op.operator.split(" ", 1)[-1].strip("'") == name:
                return op
        known = ", ".join(op.operator for op in self.operators)
        raise KeyError(f"no operator named {name!r}; operators: {known}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the dashboard and logs)."""
        return asdict(self)


def snapshot(
    job: str,
    status: str,
    elapsed_s: float,
    tasks: Sequence[TaskStats],
    dead_letters: int = 0,
    services: tuple[ServiceMetrics, ...] = (),
    edges: tuple[tuple[int, int], ...] = (),
) -> JobMetrics:
    """Freeze live task and operator stats into a :class:`JobMetrics`."""
    task_rows = []
    by_op: dict[int, list[OperatorStats]] = {}
    fill: dict[OperatorStats, float] = {}
    for t in tasks:
        for op in t.operators:
            by_op.setdefault(op.node_id, []).append(op)
        queue = t.queue
        if queue is not None and queue.capacity and t.operators:
            fill[t.operators[0]] = min(1.0, queue.depth / queue.capacity)
        p50, p95, p99 = quantiles_ms(t.latency.values())
        task_rows.append(
            TaskMetrics(
                task_id=t.task_id,
                operators=tuple(op.name for op in t.operators),
                instance=t.instance,
                status=t.status,
                records_in=t.records_in,
                records_out=t.records_out,
                errors=sum(op.errors for op in t.operators),
                batches=t.batches,
                busy_s=round(t.busy_s, 6),
                queue_depth=queue.depth if queue is not None else 0,
                queue_peak=queue.high_water if queue is not None else 0,
                queue_capacity=queue.capacity if queue is not None else 0,
                p50_ms=p50,
                p95_ms=p95,
                p99_ms=p99,
            )
        )
    seconds = max(elapsed_s, 1e-9)

    def row(stats: list[OperatorStats], instance: int | None) -> OperatorMetrics:
        first = stats[0]
        samples: list[float] = []
        for s in stats:
            samples.extend(s.latency.values())
        p50, p95, p99 = quantiles_ms(samples)
        mean_ms = 1000 * sum(samples) / len(samples) if samples else 0.0
        records_in = sum(s.records_in for s in stats)
        buckets, total_s = merged_buckets([s.latency for s in stats])
        # a source's work is what it emits; every other operator's is what it takes in
        processed = sum(s.records_out if s.kind == "source" else s.records_in for s in stats)
        return OperatorMetrics(
            operator=first.name,
            kind=first.kind,
            parallelism=first.parallelism,
            records_in=records_in,
            records_out=sum(s.records_out for s in stats),
            errors=sum(s.errors for s in stats),
            p50_ms=p50,
            p95_ms=p95,
            p99_ms=p99,
            throughput_rps=processed / seconds,
            instance=instance,
            node_id=first.node_id,
            mean_ms=mean_ms,
            backpressure=max((fill.get(s, 0.0) for s in stats), default=0.0),
            latency_buckets=buckets,
            latency_sum_s=total_s,
        )

    operators = tuple(row(by_op[k], None) for k in sorted(by_op))
    instances = tuple(
        row([s], s.instance)
        for k in sorted(by_op)
        for s in sorted(by_op[k], key=lambda s: s.instance)
    )
    return JobMetrics(
        job=job,
        status=status,
        elapsed_s=elapsed_s,
        operators=operators,
        tasks=tuple(task_rows),
        instances=instances,
        dead_letters=dead_letters,
        services=services,
        edges=edges,
    )


def merged_buckets(rings: Sequence[LatencyRing]) -> tuple[tuple[int, ...], float]:
    """The bucket counts and sum of the histograms of ``rings`` together (``()``: none
    counted anything)."""
    histograms = [r.histogram for r in rings if r.histogram is not None and r.histogram.count]
    if not histograms:
        return (), 0.0
    counts = tuple(sum(column) for column in zip(*(h.counts for h in histograms), strict=True))
    return counts, sum(h.sum for h in histograms)


def graph_edges(nodes: Sequence[Any]) -> tuple[tuple[int, int], ...]:
    """``(upstream, downstream)`` node id pairs of a plan's logical nodes (``.id``, ``.inputs``)."""
    return tuple((int(src), int(node.id)) for node in nodes for src in node.inputs)
