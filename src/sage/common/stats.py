"""Latency samples and percentiles, shared by task, service and gateway metrics.

Writers append from their own thread (list stores, safe under the GIL); readers copy the
samples and compute percentiles at read time, so recording costs no sorting.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["LatencyRing", "latency_figures", "percentile", "quantiles_ms"]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``sorted_values`` by the nearest-rank method (0.0 if empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class LatencyRing:
    """The most recent ``size`` latency samples (seconds) in a fixed ring."""

    __slots__ = ("_next", "_samples", "count", "size")

    def __init__(self, size: int = 2048) -> None:
        self.size = size
        self._samples: list[float] = []
        self._next = 0
        self.count = 0

    def add(self, seconds: float) -> None:
        """Record one sample."""
        if len(self._samples) < self.size:
            self._samples.append(seconds)
        else:
            self._samples[self._next] = seconds
            self._next = (self._next + 1) % self.size
        self.count += 1

    def extend(self, samples: list[float]) -> None:
        """Record several samples (slice assignments: no per-sample Python work)."""
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
