"""What the control plane measures: per-class latency, time to first token and SLO
attainment, and each model's service time per token (what SLO_AWARE predicts from)."""

from __future__ import annotations

from sage.common.stats import LatencyRing, latency_figures, percentile

__all__ = ["MAX_CLASSES", "OTHER_CLASS", "ClassStats", "ClassTable", "LatencyModel"]

MAX_CLASSES = 256
"""Request classes with figures of their own (``x-sage-class``, or kind and priority: both
chosen by clients); later names are counted together under :data:`OTHER_CLASS`."""
OTHER_CLASS = "other"


class ClassStats:
    """Latency, time to first token and SLO attainment of one request class."""

    __slots__ = ("errors", "latency", "requests", "slo_met", "slo_total", "ttft")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.slo_total = 0
        self.slo_met = 0
        self.latency = LatencyRing(2048)
        self.ttft = LatencyRing(2048)

    def record(self, latency_s: float, ttft_s: float, slo_ms: float | None, failed: bool) -> None:
        """Count one finished request."""
        self.requests += 1
        self.latency.add(latency_s)
        self.ttft.add(ttft_s)
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
    """P95 service seconds per token of one model, refreshed every ``every`` samples."""

    def __init__(self, every: int = 32) -> None:
        self.ring = LatencyRing(512)
        self.every = every
        self.p95_per_token = 0.0

    def add(self, seconds: float, tokens: int) -> None:
        self.ring.add(seconds / max(tokens, 1))
        if self.ring.count % self.every == 1:  # first sample, then every ``every``
            self.p95_per_token = percentile(sorted(self.ring.values()), 0.95)
