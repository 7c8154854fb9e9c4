"""A load sweep: the same policy (or policies) at several offered rates.

Each rate is one ordinary benchmark (:func:`~.runner.run_benchmark` with ``request_rate``
set), so each gets fresh instances and the very same seeded requests, only moved in time
(the trace draws what the requests are and when they arrive from separate random streams).
What a sweep adds is the view across rates: where latency turns up and SLO attainment
drops as the offered load nears the capacity.

Example:
    >>> from sage.benchmark.control_plane.config import LLMBenchmarkConfig
    >>> config = LLMBenchmarkConfig(policies=["fifo"], engine="stub", num_requests=10)
    >>> sweep = run_sweep(config, [20.0, 40.0])  # doctest: +SKIP
    >>> [point.rate for point in sweep.results]  # doctest: +SKIP
    [20.0, 40.0]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sage.benchmark.control_plane.config import BenchmarkConfig
from sage.benchmark.control_plane.driver import RequestRecord
from sage.benchmark.control_plane.report import to_json
from sage.benchmark.control_plane.runner import (
    BenchmarkResult,
    Observer,
    PolicyRun,
    run_benchmark,
)
from sage.common.errors import ConfigError

__all__ = ["SweepResult", "run_sweep", "sweep_points", "sweep_to_json"]


@dataclass
class SweepResult:
    """A whole sweep.

    Attributes:
        config: The configuration swept (its ``request_rate`` is replaced at each rate).
        results: One benchmark per offered rate, in the order the rates were given.
        started_at: When the sweep began (ISO 8601).
    """

    config: BenchmarkConfig
    results: list[BenchmarkResult]
    started_at: str

    @property
    def rates(self) -> list[float]:
        """The offered rates, requests per second."""
        return [result.rate for result in self.results]

    @property
    def name(self) -> str:
        """Base name of its output files."""
        stamp = self.started_at.replace(":", "").replace("-", "")[:15]
        return f"sweep-{self.config.mode}-{'-'.join(self.config.policies)}-{stamp}"


class _AtRate:
    """An observer that names the rate in what it passes on (``fifo @ 20 req/s``)."""

    def __init__(self, inner: Observer, rate: float) -> None:
        self.inner, self.label = inner, f"{rate:g} req/s"

    def status(self, message: str) -> None:
        self.inner.status(f"{self.label}: {message}")

    def policy_started(self, policy: str, total: int) -> None:
        self.inner.policy_started(f"{policy} @ {self.label}", total)

    def request_done(self, record: RequestRecord) -> None:
        self.inner.request_done(record)

    def policy_finished(self, run: PolicyRun) -> None:
        self.inner.policy_finished(run)


def run_sweep(
    config: BenchmarkConfig, rates: list[float], observer: Observer | None = None
) -> SweepResult:
    """Run ``config`` (every policy in it) once per offered rate in ``rates``.

    Raises:
        ConfigError: no rate, or the configuration is invalid.
        GatewayError: the gateway failed the warm-up or a management call.
        SpawnError: an own process did not start.
    """
    if not rates:
        raise ConfigError("a sweep needs at least one rate, e.g. -r 5,10,20,40")
    started = datetime.now().astimezone()
    command: Literal["run", "compare"] = "compare" if len(config.policies) > 1 else "run"
    results = []
    for rate in rates:
        at_rate = dataclasses.replace(config, request_rate=rate)
        inner = _AtRate(observer, rate) if observer is not None else None
        results.append(run_benchmark(at_rate, command, inner))
    return SweepResult(config, results, started.isoformat(timespec="seconds"))


def sweep_points(sweep: SweepResult) -> list[dict[str, Any]]:
    """One flat row per rate and policy: the figures a load curve is drawn from."""
    points = []
    for result in sweep.results:
        for run in result.runs:
            overall = run.metrics.overall
            points.append(
                {
                    "rate_rps": result.rate,
                    "load": result.load,
                    "policy": run.policy,
                    "requests": overall.requests,
                    "failed": overall.failed,
                    "throughput_rps": overall.throughput_rps,
                    "latency_p50_ms": overall.latency.p50_ms,
                    "latency_p99_ms": overall.latency.p99_ms,
                    "ttft_p50_ms": overall.ttft.p50_ms if overall.ttft.count else None,
                    "ttft_p99_ms": overall.ttft.p99_ms if overall.ttft.count else None,
                    "slo_attainment": overall.slo_attainment,
                }
            )
    return points


def sweep_to_json(sweep: SweepResult) -> dict[str, Any]:
    """The whole sweep as JSON-ready data: the load curve (``points``) and, in ``results``,
    one entry per rate (that rate's full benchmark result, every request included)."""
    return {
        "benchmark": "sage-cp-bench",
        "command": "sweep",
        "started_at": sweep.started_at,
        "config": sweep.config.to_dict(),
        "rates_rps": sweep.rates,
        "points": sweep_points(sweep),
        "results": [to_json(result) for result in sweep.results],
    }
