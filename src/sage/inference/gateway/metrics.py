"""The gateway's figures: Prometheus families for scrapers, and a JSON snapshot for the
management API and ``ControlPlaneVLLMService.get_metrics``."""

from __future__ import annotations

from typing import Any

from sage.common.observability.prometheus import Column, MetricFamily, columns
from sage.inference.config import RoutingPolicyType, SchedulingPolicyType, UnifiedServerConfig
from sage.inference.control_plane.dispatcher import Dispatcher
from sage.inference.control_plane.instances import InstanceRegistry
from sage.inference.gateway.tenants import Tenants

__all__ = ["gateway_families", "snapshot", "tenant_states"]

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
    total: int, registry: InstanceRegistry, dispatcher: Dispatcher, tenants: Tenants | None = None
) -> list[MetricFamily]:
    """Gateway totals, per-lane queues, per-class, per-class-and-model, per-tenant and
    per-instance figures.

    Per instance, ``sage_instance_queued`` is the queue of its (type, model) lane, the
    same for every instance of the model (requests wait per model, not per instance);
    ``sage_instance_slo_attainment`` is left out for an instance that served no request
    with an SLO. Labels are bounded: classes by ``MAX_CLASSES``, models and instances by
    the registry.

    Args:
        total: API requests the gateway received.
        registry: The instances.
        dispatcher: The control plane.
        tenants: The tenants' counts and limits (``None``: no tenant figures).
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
    families = [requests, waiting, retries, policy_active, queued, *_routing(state["routing"])]
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
    if tenants is not None:
        families += _tenants(tenants, dispatcher, state)
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


def _routing(state: dict[str, Any]) -> list[MetricFamily]:
    """The router's policy and counters (:meth:`~.routing.Router.describe`)."""
    active = MetricFamily("sage_gateway_routing_active", "gauge", "1 for the routing policy.")
    for policy in RoutingPolicyType:
        active.add(int(policy == state["policy"]), policy=policy)
    families = [active]
    for name, key, text in (
        ("prefix_hits", "prefix_hits", "Requests placed where part of their prompt was cached."),
        (
            "prefix_cached_tokens",
            "prefix_cached_tokens",
            "Prompt tokens expected cached where requests were placed (estimated).",
        ),
        ("session_hits", "session_hits", "Requests kept on their session's instance."),
        ("session_moves", "session_moves", "Sessions moved off a down, full or busy instance."),
    ):
        family = MetricFamily(f"sage_gateway_routing_{name}_total", "counter", text)
        family.add(state[key])
        families.append(family)
    return families


def snapshot(
    total: int,
    registry: InstanceRegistry | None,
    dispatcher: Dispatcher | None,
    config: UnifiedServerConfig,
    tenants: Tenants | None = None,
) -> dict[str, Any]:
    """The gateway's state as JSON-ready data (before it started: its policy only).

    Keys: ``total_requests``, ``rejected`` (refused with 429: the queue was full),
    ``policy``, ``active_policy``, ``policy_switches``, ``queued``, ``lanes`` (per kind and
    model: queued, P95 ms per token), ``classes`` (per request class: requests, errors,
    latency percentiles, TTFT, SLO attainment), ``embedding_batches``,
    ``batched_requests``, ``retries``, ``instances`` (each instance's ``describe()``) and
    ``tenants`` (:func:`tenant_states`).
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
        "tenants": tenant_states(tenants, dispatcher, state.get("lanes", ())),
    }


_PER_TENANT: list[Column] = [
    (
        "sage_tenant_requests_total",
        "counter",
        "API requests received from a tenant (rate-limited ones included).",
        "requests",
    ),
    (
        "sage_tenant_rate_limited_total",
        "counter",
        "Requests of a tenant refused with 429: over its rpm or tpm limit.",
        "rate_limited",
    ),
    (
        "sage_tenant_tokens_total",
        "counter",
        "Tokens charged to a tenant at admission (prompt estimate + max_tokens).",
        "tokens",
    ),
    ("sage_tenant_queued", "gauge", "Requests of a tenant waiting for an instance.", "queued"),
]


def _tenants(tenants: Tenants, dispatcher: Dispatcher, state: dict[str, Any]) -> list[MetricFamily]:
    """Per tenant: counts, queue, fair share's counters per lane, latency per model."""
    families = columns(_PER_TENANT, (({"tenant": n}, c) for n, c in tenants.describe().items()))
    virtual = MetricFamily(
        "sage_tenant_virtual_tokens",
        "gauge",
        "Fair share: tokens a tenant was served in a lane, divided by its weight.",
    )
    for lane in state["lanes"]:
        for name, value in lane.get("virtual_tokens", {}).items():
            virtual.add(value, tenant=name, type=lane["kind"], model=lane["model"])
    duration = MetricFamily(
        "sage_tenant_request_duration_seconds",
        "histogram",
        "Seconds from a tenant's request's arrival to the last byte of its answer.",
    )
    for name, stats in dispatcher.tenants.items():
        for model, series in stats.models.items():
            duration.add_histogram(series.duration, tenant=name, model=model)
    return [*families, virtual, duration]


def tenant_states(
    tenants: Tenants | None, dispatcher: Dispatcher | None, lanes: Any = ()
) -> dict[str, dict[str, Any]]:
    """Per tenant, JSON-ready: ``weight``, ``rpm``, ``tpm``, ``requests``, ``rate_limited``,
    ``tokens``, ``queued``; ``answered``, ``errors`` and latency percentiles of its answered
    requests (``p50_ms``, ``p95_ms``, ``p99_ms``, ``ttft_p95_ms``; ``None`` before any);
    ``virtual_tokens`` (fair share's counter per lane ``"type/model"``)."""
    if tenants is None:
        return {}
    states: dict[str, dict[str, Any]] = {}
    for name, described in tenants.describe().items():
        stats = dispatcher.tenants.get(name) if dispatcher is not None else None
        figures = stats.describe() if stats is not None else {}
        states[name] = {
            **described,
            "answered": figures.get("requests", 0),
            "errors": figures.get("errors", 0),
            **{k: figures.get(k) for k in ("p50_ms", "p95_ms", "p99_ms", "ttft_p95_ms")},
            "virtual_tokens": {
                f"{lane['kind']}/{lane['model']}": lane["virtual_tokens"][name]
                for lane in lanes
                if name in lane.get("virtual_tokens", {})
            },
        }
    return states
