"""Figures of a run: throughput, latency and TTFT percentiles, SLO attainment, errors.

Computed from the per-request records, overall and per group (request class, kind,
priority, tenant). Rates are per second of a window from the first scheduled arrival to the
last answer: the run's window for the classes, priorities and tenants (so their rates add up
to the total), each kind's own window for the kinds (so a backlog of embeddings draining
long after the last chat does not dilute the chats' rate).

SLO attainment counts every request of the group: a failed request missed its SLO.
Percentiles (nearest rank, :func:`sage.common.stats.percentile`) are over the requests that
succeeded.

Example:
    >>> from sage.benchmark.control_plane.driver import RequestRecord
    >>> records = [
    ...     RequestRecord(i, "llm", "a", 0, 1000.0, False, scheduled_s=0.0, finished_s=0.5 * i)
    ...     for i in range(1, 5)
    ... ]
    >>> m = summarize(records)
    >>> m.overall.slo_attainment, m.overall.latency.p50_ms
    (0.5, 1000.0)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sage.benchmark.control_plane.driver import RequestRecord
from sage.common.stats import percentile

__all__ = ["GroupMetrics", "Percentiles", "RunMetrics", "summarize"]


@dataclass(frozen=True)
class Percentiles:
    """Latency percentiles in milliseconds (all 0 when there are no samples)."""

    count: int = 0
    mean_ms: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0

    @classmethod
    def of(cls, seconds: Iterable[float]) -> Percentiles:
        """Percentiles of ``seconds``."""
        ordered = sorted(seconds)
        if not ordered:
            return cls()
        return cls(
            len(ordered),
            sum(ordered) / len(ordered) * 1e3,
            percentile(ordered, 0.50) * 1e3,
            percentile(ordered, 0.95) * 1e3,
            percentile(ordered, 0.99) * 1e3,
        )


@dataclass(frozen=True)
class GroupMetrics:
    """Figures of one group of requests.

    Attributes:
        name: The group (``all``, a class name, ``llm``, ``priority 0``...).
        requests: Requests in it.
        completed: Requests that succeeded.
        failed: Requests that failed.
        slo_met: Requests that succeeded within their SLO.
        throughput_rps: Completed requests per second of the window (see the module).
        tokens_per_s: Generated tokens per second.
        texts_per_s: Embedded texts per second.
        latency: End-to-end latency (scheduled arrival to complete answer).
        ttft: Time to first token (streamed LLM requests).
        output_tokens: Generated tokens in all.
        texts: Texts embedded in all.
    """

    name: str
    requests: int
    completed: int
    failed: int
    slo_met: int
    throughput_rps: float
    tokens_per_s: float
    texts_per_s: float
    latency: Percentiles
    ttft: Percentiles
    output_tokens: int
    texts: int

    @property
    def slo_attainment(self) -> float:
        """Share of the group's requests that met their SLO (0..1; 0 for no requests)."""
        return self.slo_met / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with ``slo_attainment``."""
        return {**asdict(self), "slo_attainment": self.slo_attainment}


@dataclass(frozen=True)
class RunMetrics:
    """Figures of one run.

    Attributes:
        window_s: From the first scheduled arrival to the last answer.
        offered_rps: Requests per second the trace offered (count over its arrival span).
        send_lag_p99_ms: How late the client sent (p99): large values mean the load
            generator itself was short of CPU, and the figures are suspect.
        overall: All requests.
        by_class: Per request class (most urgent first).
        by_kind: Per kind (``llm``, ``embedding``), each over its own window.
        by_priority: Per priority value (``priority 0`` ...).
        by_tenant: Per tenant (empty without tenants).
        errors: Per kind, each distinct error message with its count.
        failed_idempotent: Failed requests the gateway could have retried.
        failed_streaming: Failed streamed requests (not retryable once started).
    """

    window_s: float
    offered_rps: float
    send_lag_p99_ms: float
    overall: GroupMetrics
    by_class: dict[str, GroupMetrics] = field(default_factory=dict)
    by_kind: dict[str, GroupMetrics] = field(default_factory=dict)
    by_priority: dict[str, GroupMetrics] = field(default_factory=dict)
    by_tenant: dict[str, GroupMetrics] = field(default_factory=dict)
    errors: dict[str, dict[str, int]] = field(default_factory=dict)
    failed_idempotent: int = 0
    failed_streaming: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""

        def groups(by: dict[str, GroupMetrics]) -> dict[str, Any]:
            return {name: group.to_dict() for name, group in by.items()}

        return {
            "window_s": self.window_s,
            "offered_rps": self.offered_rps,
            "send_lag_p99_ms": self.send_lag_p99_ms,
            "overall": self.overall.to_dict(),
            "by_class": groups(self.by_class),
            "by_kind": groups(self.by_kind),
            "by_priority": groups(self.by_priority),
            "by_tenant": groups(self.by_tenant),
            "errors": self.errors,
            "failed_idempotent": self.failed_idempotent,
            "failed_streaming": self.failed_streaming,
        }


def _group(name: str, records: Sequence[RequestRecord], window_s: float) -> GroupMetrics:
    ok = [r for r in records if r.ok]
    tokens = sum(r.output_tokens for r in ok)
    texts = sum(r.texts for r in ok)
    ttfts = [t for r in ok if (t := r.ttft_s) is not None]
    return GroupMetrics(
        name=name,
        requests=len(records),
        completed=len(ok),
        failed=len(records) - len(ok),
        slo_met=sum(1 for r in ok if r.slo_met),
        throughput_rps=len(ok) / window_s,
        tokens_per_s=tokens / window_s,
        texts_per_s=texts / window_s,
        latency=Percentiles.of(r.latency_s for r in ok),
        ttft=Percentiles.of(ttfts),
        output_tokens=tokens,
        texts=texts,
    )


def _window(records: Sequence[RequestRecord]) -> float:
    """Seconds from the first scheduled arrival to the last answer."""
    return max(max(r.finished_s for r in records) - min(r.scheduled_s for r in records), 1e-9)


def _by(
    records: Sequence[RequestRecord],
    key: Callable[[RequestRecord], Any],
    label: Callable[[Any], str],
    window_s: float | None,
) -> dict[str, GroupMetrics]:
    """Groups by ``key``, in key order; ``window_s=None``: each group's own window."""
    groups: dict[Any, list[RequestRecord]] = {}
    for record in records:
        groups.setdefault(key(record), []).append(record)
    return {
        label(k): _group(label(k), groups[k], window_s or _window(groups[k]))
        for k in sorted(groups)
    }


def summarize(records: Sequence[RequestRecord]) -> RunMetrics:
    """The figures of a run from its records (any order)."""
    if not records:
        return RunMetrics(0.0, 0.0, 0.0, _group("all", [], 1.0))
    start = min(r.scheduled_s for r in records)
    window = _window(records)
    span = max(r.scheduled_s for r in records) - start
    lags = sorted(max(0.0, r.sent_s - r.scheduled_s) for r in records)
    errors: dict[str, Counter[str]] = {}
    for r in records:
        if r.error is not None:
            errors.setdefault(r.kind, Counter())[r.error] += 1
    failed = [r for r in records if not r.ok]
    return RunMetrics(
        window_s=window,
        offered_rps=(len(records) - 1) / span if span > 0 else 0.0,
        send_lag_p99_ms=percentile(lags, 0.99) * 1e3,
        overall=_group("all", records, window),
        by_class=_by(records, lambda r: (r.priority, r.request_class), lambda k: k[1], window),
        by_kind=_by(records, lambda r: r.kind, str, None),
        by_priority=_by(records, lambda r: r.priority, lambda p: f"priority {p}", window),
        by_tenant=_by([r for r in records if r.tenant], lambda r: r.tenant, str, window),
        errors={kind: dict(counter.most_common()) for kind, counter in errors.items()},
        failed_idempotent=sum(1 for r in failed if r.idempotent),
        failed_streaming=sum(1 for r in failed if not r.idempotent),
    )
