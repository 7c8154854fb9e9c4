"""The gateway's figures: Prometheus families for scrapers, and a JSON snapshot for the
management API and ``ControlPlaneVLLMService.get_metrics``."""

from __future__ import annotations

from typing import Any

from sage.common.observability.prometheus import Column, MetricFamily, columns
from sage.inference.config import SchedulingPolicyType, UnifiedServerConfig
from sage.inference.control_plane.dispatcher import Dispatcher
from sage.inference.control_plane.instances import InstanceRegistry

__all__ = ["gateway_families", "snapshot"]

DEPRECATED = "Deprecated (removed in 0.3): use {} instead. "
"""Help-text prefix of the p95 gauges the histograms replace (kept for one release)."""

_PER_CLASS: list[Column] = [
    ("sage_class_requests_total", "counter", "Requests answered, per class.", "requests"),
    ("sage_class_errors_total", "counter", "Requests failed, per class.", "errors"),
    (
        "sage_class_latency_p95_ms",
        "gauge",
        DEPRECATED.format("sage_gateway_request_duration_seconds")
        + "p95 latency incl. queueing (ms).",
        "p95_ms",
    ),
    (
        "sage_class_ttft_p95_ms",
        "gauge",
        DEPRECATED.format("sage_gateway_time_to_first_token_seconds")
        + "p95 time to first token (ms).",
        "ttft_p95_ms",
    ),
    (
        "sage_class_slo_attainment",
        "gauge",
        "Share of requests with an SLO that met it.",
        "slo_attainment",
    ),
]
_PER_CLASS_AND_MODEL: list[Column] = [
    (
        "sage_gateway_request_duration_seconds",
        "histogram",
        "Seconds from a request's arrival to the last byte of its answer (queueing included).",
        "duration",
    ),
    (
        "sage_gateway_time_to_first_token_seconds",
        "histogram",
        "Seconds from a request's arrival to the first byte of its answer (answered ones).",
        "ttft",
    ),
    (
        "sage_gateway_queue_time_seconds",
        "histogram",
        "Seconds a request waited in the gateway for an instance.",
        "queue",
    ),
]
_PER_INSTANCE: list[Column] = [
    ("sage_instance_requests_total", "counter", "Requests an instance finished.", "requests"),
    ("sage_instance_errors_total", "counter", "Requests an instance failed.", "errors"),
    ("sage_instance_in_flight", "gauge", "Requests running on an instance.", "in_flight"),
    ("sage_instance_healthy", "gauge", "1 when the instance is in rotation.", "healthy"),
    (
        "sage_instance_latency_p95_ms",
        "gauge",
        DEPRECATED.format("sage_instance_request_duration_seconds") + "p95 request latency (ms).",
        "p95_ms",
    ),
    (
        "sage_instance_ttft_p95_ms",
        "gauge",
        DEPRECATED.format("sage_instance_time_to_first_token_seconds")
        + "p95 time to first byte (ms).",
        "ttft_p95_ms",
    ),
    (
        "sage_instance_max_concurrent_requests",
        "gauge",
        "Requests an instance may run at once.",
        "max_concurrent_requests",
    ),
    (
        "sage_instance_queued",
        "gauge",
        "Requests waiting in the gateway for the instance's type and model.",
        "queued",
    ),
    (
        "sage_instance_slo_attainment",
        "gauge",
        "Share of an instance's requests with an SLO that met it.",
        "slo_attainment",
    ),
    (
        "sage_instance_request_duration_seconds",
        "histogram",
        "Seconds from sending a request to an instance to the last byte of its answer.",
        "duration",
    ),
    (
        "sage_instance_time_to_first_token_seconds",
        "histogram",
        "Seconds from sending a request to an instance to the first byte of its answer.",
        "ttft",
    ),
]


def gateway_families(
    total: int, registry: InstanceRegistry, dispatcher: Dispatcher
) -> list[MetricFamily]:
    """Gateway totals, per-lane queues, per-class, per-class-and-model and per-instance
    figures.

    Per instance, ``sage_instance_queued`` is the queue of its (type, model) lane, the
    same for every instance of the model (requests wait per model, not per instance);
    ``sage_instance_slo_attainment`` is left out for an instance that served no request
    with an SLO. Labels are bounded: classes by ``MAX_CLASSES``, models and instances by
    the registry.

    Args:
        total: API requests the gateway received.
        registry: The instances.
        dispatcher: The control plane.
    """
    state = dispatcher.describe()
    requests = MetricFamily(
        "sage_gateway_requests_total", "counter", "Requests received by the gateway."
    )
    requests.add(total)
    waiting = MetricFamily("sage_gateway_waiting", "gauge", "Requests waiting for a free instance.")
    waiting.add(state["queued"])
    retries = MetricFamily(
        "sage_gateway_retries_total",
        "counter",
        "Requests sent again after their instance failed.",
    )
    retries.add(state["retries"])
    policy_active = MetricFamily(
        "sage_gateway_policy_active", "gauge", "1 for the scheduling policy in use now."
    )
    for policy in SchedulingPolicyType:
        if policy is not SchedulingPolicyType.ADAPTIVE:
            policy_active.add(int(policy == dispatcher.active_policy), policy=policy)
    queued = MetricFamily("sage_gateway_queued", "gauge", "Requests waiting, per lane.")
    for lane in state["lanes"]:
        queued.add(lane["queued"], type=lane["kind"], model=lane["model"])
    families = [requests, waiting, retries, policy_active, queued]
    families += columns(
        _PER_CLASS, (({"class": name}, figures) for name, figures in state["classes"].items())
    )
    families += columns(
        _PER_CLASS_AND_MODEL,
        (
            (
                {"model": model, "class": name},
                {"duration": series.duration, "ttft": series.ttft, "queue": series.queue},
            )
            for name, stats in dispatcher.classes.items()
            for model, series in stats.models.items()
        ),
    )
    rows = []
    for instance in registry.all():
        described = instance.describe()
        labels = {
            "instance": described["instance_id"],
            "model": described["model_name"],
            "type": described["instance_type"],
        }
        histograms = {"duration": instance.latency.histogram, "ttft": instance.ttft.histogram}
        rows.append((labels, {**described, **histograms}))
    return [*families, *columns(_PER_INSTANCE, rows)]


def snapshot(
    total: int,
    registry: InstanceRegistry | None,
    dispatcher: Dispatcher | None,
    config: UnifiedServerConfig,
) -> dict[str, Any]:
    """The gateway's state as JSON-ready data (before it started: its policy only).

    Keys: ``total_requests``, ``rejected`` (refused with 429: the queue was full),
    ``policy``, ``active_policy``, ``policy_switches``, ``queued``, ``lanes`` (per kind and
    model: queued, P95 ms per token), ``classes`` (per request class: requests, errors,
    latency percentiles, TTFT, SLO attainment), ``embedding_batches``,
    ``batched_requests``, ``retries`` and ``instances`` (each instance's ``describe()``).
    """
    instances = registry.all() if registry is not None else []
    if dispatcher is not None:
        state: dict[str, Any] = {"rejected": dispatcher.rejected, **dispatcher.describe()}
    else:
        policy = str(config.scheduling_policy)
        state = {"rejected": 0, "policy": policy, "active_policy": policy, "queued": 0}
    return {
        "total_requests": total,
        **state,
        "instances": [i.describe() for i in instances],
    }
