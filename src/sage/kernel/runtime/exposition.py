"""Prometheus families of job, operator and service metrics, for every server that has jobs.

The JobManager and the dashboard both expose their jobs with these names (documented in
``docs/OBSERVABILITY.md``). Every sample carries ``job_id`` and ``job`` labels; operator
samples add ``operator`` (its name) and ``node`` (its id in the job's graph), service samples
add ``service``. The input is ``JobMetrics.to_dict()``: what jobs publish and the JobManager
serves, so no side needs the other's objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sage.common.observability.prometheus import Column, MetricFamily, columns
from sage.common.stats import LATENCY_BUCKETS, Histogram

__all__ = ["job_families"]

_DEPRECATED = "Deprecated (removed in 0.3): use {} instead. "

_OPERATOR: list[Column] = [
    ("sage_operator_records_in_total", "counter", "Records an operator took in.", "records_in"),
    ("sage_operator_records_out_total", "counter", "Records an operator emitted.", "records_out"),
    ("sage_operator_errors_total", "counter", "Records an operator failed on.", "errors"),
    ("sage_operator_parallelism", "gauge", "Parallel instances of an operator.", "parallelism"),
    (
        "sage_operator_throughput_rps",
        "gauge",
        "Records processed per second, averaged since the job started.",
        "throughput_rps",
    ),
    (
        "sage_operator_latency_seconds",
        "histogram",
        "Per-record time of the records the runtime timed (one batch per sampling interval).",
        "latency",
    ),
    *(
        (
            f"sage_operator_latency_{stat}_ms",
            "gauge",
            _DEPRECATED.format("sage_operator_latency_seconds") + f"{what} per-record time (ms).",
            f"{stat}_ms",
        )
        for stat, what in (("mean", "Mean"), ("p50", "Median"), ("p95", "p95"), ("p99", "p99"))
    ),
    (
        "sage_operator_backpressure",
        "gauge",
        "Fill (0..1) of the fullest input queue of an operator's tasks.",
        "backpressure",
    ),
]
_SERVICE: list[Column] = [
    ("sage_service_calls_total", "counter", "Calls a service served.", "calls"),
    ("sage_service_errors_total", "counter", "Calls that raised.", "errors"),
    ("sage_service_timeouts_total", "counter", "Calls that outlived their timeout.", "timeouts"),
    ("sage_service_fallbacks_total", "counter", "Calls handed to the fallback.", "fallbacks"),
    ("sage_service_in_flight", "gauge", "Calls running now.", "in_flight"),
    ("sage_service_waiting", "gauge", "Callers waiting for a free instance.", "waiting"),
    ("sage_service_replicas", "gauge", "Instances sharing the calls.", "replicas"),
    ("sage_service_latency_seconds", "histogram", "Call latency.", "latency"),
    (
        "sage_service_latency_p95_ms",
        "gauge",
        _DEPRECATED.format("sage_service_latency_seconds") + "p95 call latency (ms).",
        "p95_ms",
    ),
]


def _with_histogram(figures: Mapping[str, Any]) -> Mapping[str, Any]:
    """``figures`` with its ``latency_buckets`` and ``latency_sum_s`` as a ``latency``
    histogram (left out when nothing was counted)."""
    counts = figures.get("latency_buckets")
    if not counts or len(counts) != len(LATENCY_BUCKETS) + 1:
        return figures
    histogram = Histogram.of(LATENCY_BUCKETS, counts, figures.get("latency_sum_s") or 0.0)
    return {**figures, "latency": histogram}


def job_families(jobs: Iterable[Mapping[str, Any]]) -> list[MetricFamily]:
    """Families for ``jobs``: each a mapping with ``id``, ``name``, ``status``, optional
    ``runtime`` and ``metrics`` (``JobMetrics.to_dict()``; missing for a job not started)."""
    info = MetricFamily("sage_job_info", "gauge", "1 per job; its status and runtime as labels.")
    elapsed = MetricFamily("sage_job_elapsed_seconds", "gauge", "Seconds the job has run.")
    dead = MetricFamily(
        "sage_job_dead_letters_total", "counter", "Records kept by on_error='dead_letter'."
    )
    operators: list[tuple[dict[str, object], Mapping[str, Any]]] = []
    services: list[tuple[dict[str, object], Mapping[str, Any]]] = []
    for job in jobs:
        ids = {"job_id": job.get("id", ""), "job": job.get("name", "")}
        info.add(1, **ids, status=job.get("status", ""), runtime=job.get("runtime", ""))
        metrics = job.get("metrics") or {}
        if not metrics:
            continue
        elapsed.add(float(metrics.get("elapsed_s") or 0.0), **ids)
        dead.add(float(metrics.get("dead_letters") or 0), **ids)
        operators += (
            (
                {**ids, "operator": op.get("operator", ""), "node": op.get("node_id", -1)},
                _with_histogram(op),
            )
            for op in metrics.get("operators") or ()
        )
        services += (
            ({**ids, "service": svc.get("service", "")}, _with_histogram(svc))
            for svc in metrics.get("services") or ()
        )
    return [info, elapsed, dead, *columns(_OPERATOR, operators), *columns(_SERVICE, services)]
