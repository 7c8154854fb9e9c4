"""``ControlPlaneVLLMService``'s figures in the SAGE reference's terms, from the gateway's own
counters: request totals, mean latency, SLO compliance, throughput; its instances as rows (with the
reference's field names beside ours) and as a table for the log; a health check of them all.

:func:`read_figures` and :func:`probe_all` run on the gateway's loop; the rest are pure
functions of what was read (they need no server).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sage.inference.control_plane.dispatcher import Dispatcher
    from sage.inference.gateway.server import UnifiedAPIServer

__all__ = [
    "RequestTotals",
    "instance_rows",
    "instance_table",
    "log_health",
    "probe_all",
    "read_figures",
    "reference_metrics",
    "request_totals",
]


@dataclass(frozen=True)
class RequestTotals:
    """What the gateway recorded of the requests it finished (all classes together).

    Attributes:
        finished: Requests answered or failed (a refused one, 429, is not among them).
        errors: Of those, the failed ones (a 5xx answer, no instance, an instance down).
        slo_requests: Finished requests that carried a latency objective.
        slo_met: Of those, the ones answered within it (a failed one never meets it).
        latency_s: Their latencies summed, arrival to last byte (seconds).
    """

    finished: int = 0
    errors: int = 0
    slo_requests: int = 0
    slo_met: int = 0
    latency_s: float = 0.0


def request_totals(dispatcher: Dispatcher | None) -> RequestTotals:
    """The gateway's per-class figures summed; call it on the gateway's loop.

    The latency sum comes from each class's histograms, which count every request (the
    percentile rings keep only the recent ones), so the mean covers them all.
    """
    if dispatcher is None:
        return RequestTotals()
    finished = errors = slo_requests = slo_met = 0
    latency_s = 0.0
    for stats in dispatcher.classes.values():
        finished += stats.requests
        errors += stats.errors
        slo_requests += stats.slo_total
        slo_met += stats.slo_met
        latency_s += sum(series.duration.sum for series in stats.models.values())
    return RequestTotals(finished, errors, slo_requests, slo_met, latency_s)


def reference_metrics(
    snapshot: dict[str, Any], totals: RequestTotals, uptime_s: float
) -> dict[str, Any]:
    """The reference's ``get_metrics()`` keys, from a gateway snapshot and its totals.

    Keys:
        completed_requests: answered without a server error (an engine's 4xx answer counts:
            the engine answered it).
        failed_requests: failed (5xx, no healthy instance) or refused by the gateway (429:
            its queue was full or the tenant over its rate limit).
        active_requests: running on instances or waiting in the gateway now.
        avg_latency_ms: mean latency of finished requests, arrival to last byte, failed ones
            included (0.0 before any, as in the reference).
        slo_compliance_rate: share (0..1) of finished requests with an SLO that met it; 1.0
            when none carried one (nothing was missed, as in the reference);
            ``slo_requests`` tells the two apart.
        slo_requests: finished requests that carried an SLO.
        requests_per_second: requests the gateway received per second since ``setup()``.

    Args:
        snapshot: ``UnifiedAPIServer.metrics_snapshot()``.
        totals: :func:`request_totals` read with it.
        uptime_s: Seconds since the gateway started.
    """
    refused = snapshot.get("rejected", 0) + sum(
        tenant.get("rate_limited", 0) for tenant in snapshot.get("tenants", {}).values()
    )
    in_flight = sum(instance.get("in_flight", 0) for instance in snapshot.get("instances", ()))
    return {
        "completed_requests": totals.finished - totals.errors,
        "failed_requests": totals.errors + refused,
        "active_requests": in_flight + snapshot.get("queued", 0),
        "avg_latency_ms": 1000 * totals.latency_s / totals.finished if totals.finished else 0.0,
        "slo_compliance_rate": (
            totals.slo_met / totals.slo_requests if totals.slo_requests else 1.0
        ),
        "slo_requests": totals.slo_requests,
        "requests_per_second": (
            snapshot.get("total_requests", 0) / uptime_s if uptime_s > 0 else 0.0
        ),
    }


def instance_rows(instances: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each instance as the gateway describes it, plus the reference's names:
    ``is_healthy`` (``healthy``), ``active_requests`` (``in_flight``), ``is_available``
    (healthy with a free slot) and ``current_load`` (share 0..1 of its slots in use)."""
    rows = []
    for state in instances:
        slots = max(int(state.get("max_concurrent_requests") or 1), 1)
        in_flight = int(state.get("in_flight", 0))
        rows.append(
            {
                **state,
                "is_healthy": bool(state.get("healthy")),
                "is_available": bool(state.get("healthy")) and in_flight < slots,
                "active_requests": in_flight,
                "current_load": min(in_flight / slots, 1.0),
            }
        )
    return rows


_COLUMNS = ("instance", "model", "type", "address", "healthy", "in flight", "requests", "errors")


def instance_table(rows: Sequence[dict[str, Any]]) -> str:
    """``rows`` (:func:`instance_rows`) as a fixed-width text table, one line per instance,
    with the last error of each unhealthy one after it."""
    cells = [
        (
            str(row["instance_id"]),
            str(row["model_name"]),
            str(row["instance_type"]),
            f"{row['host']}:{row['port']}",
            "yes" if row["healthy"] else "NO",
            f"{row['in_flight']}/{row['max_concurrent_requests']}",
            str(row["requests"]),
            str(row["errors"]),
        )
        for row in rows
    ]
    widths = [max(len(c) for c in column) for column in zip(_COLUMNS, *cells, strict=False)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(_COLUMNS, widths, strict=True)).rstrip()]
    for row, line in zip(rows, cells, strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if not row["healthy"]:
            lines.append(f"  └ {row.get('last_error') or 'not answering'}")
    return "\n".join(lines)


async def read_figures(gateway: UnifiedAPIServer) -> tuple[dict[str, Any], RequestTotals]:
    """The gateway's snapshot and :func:`request_totals`, read in one turn of its loop
    (await it there)."""
    return gateway.metrics_snapshot(), request_totals(gateway.dispatcher)


async def probe_all(gateway: UnifiedAPIServer) -> dict[str, bool]:
    """Probe every instance now with the gateway's own health checks (await it on the
    gateway's loop); each instance's health after its probe."""
    assert gateway.health is not None and gateway.registry is not None
    await gateway.health.check_all()
    return {instance.id: instance.healthy for instance in gateway.registry.all()}


def log_health(logger: logging.Logger, health: dict[str, bool]) -> None:
    """Log a health check's outcome: INFO when all are healthy, else WARNING naming the
    instances that are down."""
    down = [name for name, ok in health.items() if not ok]
    if down:
        logger.warning(
            "health check: %d of %d instances healthy; down: %s",
            len(health) - len(down),
            len(health),
            ", ".join(down),
        )
    else:
        logger.info("health check: all %d instances healthy", len(health))
