"""Latency samples, percentiles and histograms, shared by task, service and gateway metrics.

Writers append from their own thread (list stores, safe under the GIL); readers copy the
samples and compute percentiles at read time, so recording costs no sorting. A
:class:`Histogram` counts every observation into fixed buckets: what Prometheus aggregates
across instances and over time, where percentiles of recent samples cannot be.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence

__all__ = [
    "LATENCY_BUCKETS",
    "REQUEST_BUCKETS",
    "TOKEN_BUCKETS",
    "Histogram",
    "LatencyRing",
    "latency_figures",
    "percentile",
    "quantiles_ms",
]

LATENCY_BUCKETS: tuple[float, ...] = (
    1e-6,
    5e-6,
    1e-5,
    5e-5,
    1e-4,
    5e-4,
    1e-3,
    5e-3,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    60.0,
)
"""Upper bounds (seconds) for per-record and per-call times: 1 µs to 60 s, two a decade
(every job's operators and services carry them: few, so its exposition stays small)."""

REQUEST_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
)
"""Upper bounds (seconds) for API request latency, time to first token and queue time."""

TOKEN_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.5,
)
"""Upper bounds (seconds) for the time per output token."""


class Histogram:
    """Observations counted into buckets with fixed upper bounds (Prometheus' ``le``).

    ``counts[i]`` holds the observations ``<= bounds[i]`` and above the bound before it;
    the last count is the overflow above every bound (the ``+Inf`` bucket's share).
    Counts only grow, so sums over instances and rates over time are meaningful.

    Args:
        bounds: Increasing upper bounds, in seconds.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = REQUEST_BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError(f"histogram bounds must increase strictly: {bounds!r}")
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    @classmethod
    def of(cls, bounds: Sequence[float], counts: Sequence[int], total: float) -> Histogram:
        """A histogram holding ``counts`` (one per bound, then the overflow) summing ``total``."""
        histogram = cls(bounds)
        if len(counts) != len(histogram.counts):
            raise ValueError(
                f"a histogram with {len(bounds)} bounds takes {len(bounds) + 1} counts, "
                f"not {len(counts)}"
            )
        histogram.counts = [int(c) for c in counts]
        histogram.sum = float(total)
        return histogram

    @property
    def count(self) -> int:
        """Observations so far."""
        return sum(self.counts)

    def observe(self, seconds: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def extend(self, samples: Iterable[float]) -> None:
        """Count several observations."""
        counts, bounds = self.counts, self.bounds
        total = 0.0
        for seconds in samples:
            counts[bisect_left(bounds, seconds)] += 1
            total += seconds
        self.sum += total

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s observations (same bounds) to this one's."""
        if other.bounds != self.bounds:
            raise ValueError("histograms with different bounds cannot be merged")
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.sum += other.sum


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``sorted_values`` by the nearest-rank method (0.0 if empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class LatencyRing:
    """The most recent ``size`` latency samples (seconds) in a fixed ring.

    With ``buckets``, every sample is also counted in :attr:`histogram` (all of them, not
    only the retained ones): percentiles of recent samples for people, a histogram for
    Prometheus.
    """

    __slots__ = ("_next", "_samples", "count", "histogram", "size")

    def __init__(self, size: int = 2048, buckets: Sequence[float] | None = None) -> None:
        self.size = size
        self._samples: list[float] = []
        self._next = 0
        self.count = 0
        self.histogram = Histogram(buckets) if buckets is not None else None

    def add(self, seconds: float) -> None:
        """Record one sample."""
        if self.histogram is not None:
            self.histogram.observe(seconds)
        if len(self._samples) < self.size:
            self._samples.append(seconds)
        else:
            self._samples[self._next] = seconds
            self._next = (self._next + 1) % self.size
        self.count += 1

    def extend(self, samples: list[float]) -> None:
        """Record several samples (slice assignments: no per-sample Python work)."""
        if self.histogram is not None:
            self.histogram.extend(samples)
        n, size = len(samples), self.size
        self.count += n
        room = size - len(self._samples)
        if room > 0:
            self._samples.extend(samples[:room])
            samples, n = samples[room:], n - min(room, n)
            if not n:
                return
        if n >= size:
            self._samples[:] = samples[-size:]
            self._next = 0
            return
        start, end = self._next, self._next + n
        if end <= size:
            self._samples[start:end] = samples
        else:
            first = size - start
            self._samples[start:] = samples[:first]
            self._samples[: n - first] = samples[first:]
        self._next = end % size

    def values(self) -> list[float]:
        """A copy of the retained samples (safe to call from another thread)."""
        return list(self._samples)


def quantiles_ms(samples: Iterable[float]) -> tuple[float, float, float]:
    """(p50, p95, p99) of ``samples`` (seconds), in milliseconds."""
    ordered = sorted(samples)
    return (
        percentile(ordered, 0.50) * 1e3,
        percentile(ordered, 0.95) * 1e3,
        percentile(ordered, 0.99) * 1e3,
    )


def latency_figures(latency: LatencyRing, ttft: LatencyRing) -> dict[str, float]:
    """``p50_ms``, ``p95_ms``, ``p99_ms`` of ``latency`` and ``ttft_p95_ms`` of ``ttft``."""
    p50, p95, p99 = quantiles_ms(latency.values())
    return {
        "p50_ms": p50,
        "p95_ms": p95,
        "p99_ms": p99,
        "ttft_p95_ms": quantiles_ms(ttft.values())[1],
    }
