"""Service metrics: live counters per service and their frozen snapshots."""

from __future__ import annotations

from dataclasses import dataclass

from sage.common.stats import LATENCY_BUCKETS, LatencyRing, quantiles_ms

__all__ = ["ServiceMetrics", "ServiceStats"]


class ServiceStats:
    """Live counters of one service (all replicas), written by the threads that call it."""

    __slots__ = ("calls", "errors", "fallbacks", "latency", "timeouts")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.timeouts = 0
        self.fallbacks = 0
        self.latency = LatencyRing(buckets=LATENCY_BUCKETS)


@dataclass(frozen=True)
class ServiceMetrics:
    """One service: calls served, failures, latency, and load at the time of the snapshot.

    Attributes:
        service: Registered name.
        replicas: Instances sharing the calls.
        slots: Calls the service can serve at once (replicas x concurrency).
        calls: Calls that ran on this service (including those it took as a fallback).
        errors: Calls that raised.
        timeouts: Calls that outlived their timeout.
        fallbacks: Calls handed to the fallback (on error, timeout or saturation).
        in_flight: Calls running now.
        waiting: Callers waiting for a free instance now (queue depth).
        p50_ms, p95_ms, p99_ms: Latency of calls, in milliseconds.
        latency_buckets: Every call's latency counted in the buckets of
            :data:`~sage.common.stats.LATENCY_BUCKETS` (then the overflow), for a histogram.
        latency_sum_s: The sum of those latencies, in seconds.
    """

    service: str
    replicas: int
    slots: int
    calls: int
    errors: int
    timeouts: int
    fallbacks: int
    in_flight: int
    waiting: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    latency_buckets: tuple[int, ...] = ()
    latency_sum_s: float = 0.0

    @staticmethod
    def of(
        name: str, stats: ServiceStats, replicas: int, slots: int, in_flight: int, waiting: int
    ) -> ServiceMetrics:
        """Freeze ``stats``."""
        p50, p95, p99 = quantiles_ms(stats.latency.values())
        histogram = stats.latency.histogram
        return ServiceMetrics(
            service=name,
            replicas=replicas,
            slots=slots,
            calls=stats.calls,
            errors=stats.errors,
            timeouts=stats.timeouts,
            fallbacks=stats.fallbacks,
            in_flight=in_flight,
            waiting=waiting,
            p50_ms=p50,
            p95_ms=p95,
            p99_ms=p99,
            latency_buckets=tuple(histogram.counts) if histogram is not None else (),
            latency_sum_s=histogram.sum if histogram is not None else 0.0,
        )
