"""What the control plane measures: per-class latency, time to first token and SLO
attainment, their histograms per class and model, and each model's service time per token
(what SLO_AWARE predicts from)."""

from __future__ import annotations

import math
import time
from bisect import bisect_left

from sage.common.stats import REQUEST_BUCKETS, Histogram, LatencyRing, latency_figures, percentile

__all__ = [
    "MAX_CLASSES",
    "OTHER_CLASS",
    "ClassStats",
    "ClassTable",
    "LatencyModel",
    "RequestHistograms",
]

MAX_CLASSES = 256
"""Request classes with figures of their own (``x-sage-class``, or kind and priority: both
chosen by clients); later names are counted together under :data:`OTHER_CLASS`."""
OTHER_CLASS = "other"


class RequestHistograms:
    """Histograms (seconds, from the request's arrival) of one class's requests for one
    model: until the last byte, until the first byte of a good answer, and until an
    instance was granted (queueing)."""

    __slots__ = ("duration", "queue", "ttft")

    def __init__(self) -> None:
        self.duration = Histogram(REQUEST_BUCKETS)
        self.ttft = Histogram(REQUEST_BUCKETS)
        self.queue = Histogram(REQUEST_BUCKETS)

    def observe(self, latency_s: float, ttft_s: float, queue_s: float, failed: bool) -> None:
        """Count one request (a failed one has no first token); on every request's path,
        so the three histograms' updates are written out here."""
        bounds = REQUEST_BUCKETS
        duration, queue = self.duration, self.queue
        duration.counts[bisect_left(bounds, latency_s)] += 1
        duration.sum += latency_s
        queue.counts[bisect_left(bounds, queue_s)] += 1
        queue.sum += queue_s
        if not failed:
            ttft = self.ttft
            ttft.counts[bisect_left(bounds, ttft_s)] += 1
            ttft.sum += ttft_s


class ClassStats:
    """Latency, time to first token and SLO attainment of one request class, and its
    histograms per model (models are the served ones: bounded by the registry)."""

    __slots__ = ("errors", "latency", "models", "requests", "slo_met", "slo_total", "ttft")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.slo_total = 0
        self.slo_met = 0
        self.latency = LatencyRing(2048)
        self.ttft = LatencyRing(2048)
        self.models: dict[str, RequestHistograms] = {}

    def record(
        self,
        latency_s: float,
        ttft_s: float,
        slo_ms: float | None,
        failed: bool,
        model: str = "",
        queue_s: float = 0.0,
    ) -> None:
        """Count one finished request (``failed`` ones have no time to first token)."""
        self.requests += 1
        self.latency.add(latency_s)
        self.ttft.add(ttft_s)
        series = self.models.get(model)
        if series is None:
            series = self.models[model] = RequestHistograms()
        series.observe(latency_s, ttft_s, queue_s, failed)
        if failed:
            self.errors += 1
        if slo_ms is not None:
            self.slo_total += 1
            if not failed and latency_s * 1000 <= slo_ms:
                self.slo_met += 1

    def describe(self) -> dict[str, float | int | None]:
        """JSON-ready figures (latencies in ms, attainment as a fraction or ``None``)."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            **latency_figures(self.latency, self.ttft),
            "slo_requests": self.slo_total,
            "slo_attainment": self.slo_met / self.slo_total if self.slo_total else None,
        }


class ClassTable(dict[str, ClassStats]):
    """The figures of every request class, by name, bounded at :data:`MAX_CLASSES`."""

    def stats(self, name: str) -> ClassStats:
        """The figures of class ``name`` (:data:`OTHER_CLASS`'s once the table is full)."""
        stats = self.get(name)
        if stats is None:
            if len(self) >= MAX_CLASSES - 1:  # clients choose names: bound the table
                name = OTHER_CLASS
                stats = self.get(name)
            if stats is None:
                stats = self[name] = ClassStats()
        return stats


class LatencyModel:
    """P95 service seconds per token of one model, from its last 512 requests.

    Refreshed on the first sample, then after every ``every`` samples once ``interval_s``
    has passed since the last refresh: under light traffic every ``every`` requests, under
    heavy traffic a few times a second instead of hundreds (each refresh sorts the ring).
    """

    def __init__(self, every: int = 32, interval_s: float = 0.05) -> None:
        self.ring = LatencyRing(512)
        self.every = every
        self.interval_s = interval_s
        self.p95_per_token = 0.0
        self._pending = 0  # samples since the last refresh
        self._refreshed = -math.inf

    def add(self, seconds: float, tokens: int) -> None:
        self.ring.add(seconds / max(tokens, 1))
        self._pending += 1
        if self._pending >= self.every or self.ring.count == 1:
            now = time.monotonic()
            if now - self._refreshed >= self.interval_s:
                self.p95_per_token = percentile(sorted(self.ring.values()), 0.95)
                self._pending = 0
                self._refreshed = now
