"""``ControlPlaneVLLMService``'s configuration: the seed's dict, checked before anything
starts (every key and value named in its error, with the fix).

Beside our own keys it takes the SAGE reference's request defaults and routing key, so a
reference config runs unchanged where the meaning is the same (and is refused, naming the key
and the fix, where it is not):

=========================== ====================================================================
``routing_strategy``        the gateway's routing policy (:class:`RoutingPolicyType`);
                            the reference's ``load_balanced`` is ``least_loaded`` and
                            ``affinity`` (per-user stickiness) is ``session``
``default_priority``        priority of a request that passes none: an integer (lower is
                            served first) or a reference name, :data:`PRIORITY_NAMES`
``default_slo_deadline_ms`` latency objective (ms) of a request that passes none
``default_max_tokens``      ``max_tokens`` of a generate/chat call that passes none
=========================== ====================================================================
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from sage.common.core.scheduling import scheduling_problem
from sage.common.errors import ConfigError, unknown_key
from sage.inference.config import (
    BackendInstanceConfig,
    RoutingPolicyType,
    SchedulingPolicyType,
    UnifiedServerConfig,
)

__all__ = [
    "GATEWAY_HOST",
    "PRIORITY_NAMES",
    "ROUTING_ALIASES",
    "TOP_KEYS",
    "ControlPlaneServiceConfig",
    "parse_priority",
    "parse_service_config",
]

GATEWAY_HOST = "127.0.0.1"
"""The in-process gateway listens on loopback."""

TOP_KEYS = (
    "scheduling_policy",
    "routing_strategy",
    "instances",
    "gateway_port",
    "request_timeout_s",
    "default_priority",
    "default_slo_deadline_ms",
    "default_max_tokens",
)
_REQUIRED_INSTANCE_KEYS = ("port", "model_name")

PRIORITY_NAMES = {"CRITICAL": 0, "HIGH": 1, "NORMAL": 2, "LOW": 3, "BACKGROUND": 4}
"""The SAGE reference's ``RequestPriority`` names and their values: the same scale as ours
(an integer, lower served first), so a name stands for its value."""

ROUTING_ALIASES = {"load_balanced": "least_loaded", "affinity": "session"}
"""The reference's ``routing_strategy`` names with the same meaning as one of ours."""

_NO_EQUIVALENT = {
    "locality": "the reference hashed model and user to an instance; use prefix_aware to "
    "place requests where their prompt prefix is cached, or session to keep a user on one "
    "instance",
    "topology_aware": "instances here are plain HTTP endpoints without GPU topology",
    "random": "use round_robin to spread requests evenly",
}
_ROUTING_CHOICES = (
    "least_loaded (or load_balanced), round_robin, prefix_aware (or cache_aware), "
    "session (or affinity)"
)
_PRIORITY_CHOICES = ", ".join(f"{name} ({value})" for name, value in PRIORITY_NAMES.items())


@dataclass(frozen=True)
class ControlPlaneServiceConfig:
    """The validated form of the service's dict config.

    Attributes:
        scheduling_policy: How the gateway orders requests.
        instances: The engine servers behind the gateway (LLM and embedding).
        gateway_port: Port of the in-process gateway (0: any free port); it binds loopback.
        request_timeout_s: Longest an instance may take to answer one request.
        routing_policy: Which instance of a model a request goes to (``routing_strategy``).
        default_priority: Priority of a request that passes none (``default_priority``;
            0, the gateway's own default, unless set).
        default_slo_ms: Latency objective of a request that passes none
            (``default_slo_deadline_ms``; ``None``: none).
        default_max_tokens: ``max_tokens`` of a generate/chat call that passes none
            (``None``: the client's and engine's own defaults).
    """

    scheduling_policy: SchedulingPolicyType
    instances: tuple[BackendInstanceConfig, ...]
    gateway_port: int = 0
    request_timeout_s: float = 600.0
    routing_policy: RoutingPolicyType = RoutingPolicyType.LEAST_LOADED
    default_priority: int = 0
    default_slo_ms: float | None = None
    default_max_tokens: int | None = None

    def server_config(self) -> UnifiedServerConfig:
        """The gateway's configuration (fresh objects each call, so a restart starts clean).

        The default priority and SLO are the gateway's: it gives them to every request that
        names none in its body or headers, so they show in its per-class figures.
        """
        copies = [dataclasses.replace(i) for i in self.instances]
        return UnifiedServerConfig(
            host=GATEWAY_HOST,
            port=self.gateway_port,
            scheduling_policy=self.scheduling_policy,
            routing_policy=self.routing_policy,
            llm_backends=[c for c in copies if c.instance_type == "llm"],
            embedding_backends=[c for c in copies if c.instance_type == "embedding"],
            request_timeout_s=self.request_timeout_s,
            default_priority=self.default_priority,
            default_slo_ms=self.default_slo_ms,
        )

    def request_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments of a generate/chat call, in the client's terms.

        ``max_tokens`` becomes :attr:`default_max_tokens` when the call passes none (nor
        ``max_completion_tokens``); the reference's ``slo_deadline_ms`` becomes ``slo_ms``;
        a ``priority`` name (``"HIGH"``) becomes its value (:data:`PRIORITY_NAMES`).

        Raises:
            ConfigError: an unknown priority name, or ``slo_ms`` and ``slo_deadline_ms``
                both given.
        """
        out = dict(options)
        if "slo_deadline_ms" in out:
            if "slo_ms" in out:
                raise ConfigError(
                    "slo_ms and slo_deadline_ms are one setting (slo_deadline_ms is the SAGE "
                    "reference's name); pass one"
                )
            out["slo_ms"] = out.pop("slo_deadline_ms")
        if isinstance(out.get("priority"), str | Enum):
            out["priority"] = parse_priority(out["priority"], "priority")
        given = (out.get(k) for k in ("max_tokens", "max_completion_tokens"))
        if self.default_max_tokens is not None and all(g is None for g in given):
            out["max_tokens"] = self.default_max_tokens
        return out


def _int(value: object, key: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{key}={value!r} is invalid; use an integer from {low} to {high}")
    return value


def parse_priority(value: object, key: str = "default_priority") -> int:
    """A priority on our scale (an integer, lower served first) from an integer or a
    reference name (any case; a ``RequestPriority`` member works too).

    Example:
        >>> parse_priority("HIGH"), parse_priority("normal"), parse_priority(7)
        (1, 2, 7)

    Raises:
        ConfigError: neither a 64-bit integer nor a name of :data:`PRIORITY_NAMES`; the
            message names ``key`` and the accepted values.
    """
    name = value.name if isinstance(value, Enum) else value
    if isinstance(name, str) and name.strip().upper() in PRIORITY_NAMES:
        return PRIORITY_NAMES[name.strip().upper()]
    if isinstance(value, int) and scheduling_problem("priority", value) is None:
        return value
    raise ConfigError(
        f"{key}={value!r} is invalid; use an integer (lower is served first) or one of "
        f"{_PRIORITY_CHOICES}"
    )


def _routing(value: object) -> RoutingPolicyType:
    """``routing_strategy``: one of our routing policies, or a reference name meaning one."""
    name = value.strip().lower().replace("-", "_") if isinstance(value, str) else None
    if name in _NO_EQUIVALENT:
        raise ConfigError(
            f"routing_strategy={value!r} has no equivalent here ({_NO_EQUIVALENT[name]}); "
            f"use one of: {_ROUTING_CHOICES}"
        )
    if name is not None:  # a RoutingPolicyType is a str too
        try:
            return RoutingPolicyType.parse(ROUTING_ALIASES.get(name, name))
        except ConfigError:
            pass
    raise ConfigError(f"routing_strategy={value!r} is unknown; use one of: {_ROUTING_CHOICES}")


def _positive(value: object, key: str, fix: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{key}={value!r} is invalid; {fix}")
    return float(value)


def _max_tokens(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"default_max_tokens={value!r} is invalid; use an integer >= 1 (the max_tokens of "
            "a generate/chat call that passes none), or leave it out for the engine's default"
        )
    return value


def parse_service_config(raw: Mapping[str, Any]) -> ControlPlaneServiceConfig:
    """Validate the seed's dict config.

    Keys: ``scheduling_policy`` (a :class:`SchedulingPolicyType` name, default ``fifo``),
    ``instances`` (a non-empty list of dicts with ``port`` and ``model_name`` required and
    ``instance_id``, ``host``, ``instance_type``, ``max_concurrent_requests``, ``api_key``
    optional), ``gateway_port`` (default 0: any free port), ``request_timeout_s``, and the
    reference's ``routing_strategy`` (default ``least_loaded``), ``default_priority``
    (default 0), ``default_slo_deadline_ms`` and ``default_max_tokens`` (default: none);
    see the module docstring.

    Raises:
        ConfigError: an unknown key, a missing or wrong-typed value, an unknown policy, or two
            instances with the same id; the message names the key and how to fix it.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"ControlPlaneVLLMService config is {type(raw).__name__}; pass a dict with "
            f"{', '.join(TOP_KEYS)}"
        )
    for key in raw:
        if key not in TOP_KEYS:
            raise unknown_key(key, "ControlPlaneVLLMService config", TOP_KEYS)
    try:
        policy = SchedulingPolicyType.parse(raw.get("scheduling_policy", "fifo"))
    except ConfigError as exc:
        raise ConfigError(f"scheduling_policy: {exc}") from None
    listed = raw.get("instances")
    if not isinstance(listed, Sequence) or isinstance(listed, str) or not listed:
        raise ConfigError(
            f"instances={listed!r} is invalid; list at least one engine server, e.g. "
            "'instances': [{'instance_id': 'llm-1', 'host': 'localhost', 'port': 8001, "
            "'model_name': 'Qwen/Qwen2.5-7B-Instruct'}]"
        )
    instances = tuple(
        BackendInstanceConfig.from_mapping(
            item, f"instances[{i}]", required=_REQUIRED_INSTANCE_KEYS
        )
        for i, item in enumerate(listed)
    )
    seen: dict[str, int] = {}
    for index, instance in enumerate(instances):
        if instance.id in seen:
            raise ConfigError(
                f"instances[{index}]: instance_id {instance.id!r} is already used by "
                f"instances[{seen[instance.id]}]; give each instance its own instance_id"
            )
        seen[instance.id] = index
    timeout = _positive(
        raw.get("request_timeout_s", 600.0), "request_timeout_s", "use a positive number of seconds"
    )
    slo = raw.get("default_slo_deadline_ms")
    return ControlPlaneServiceConfig(
        scheduling_policy=policy,
        instances=instances,
        gateway_port=_int(raw.get("gateway_port", 0), "gateway_port", 0, 65535),
        request_timeout_s=timeout,
        routing_policy=_routing(raw.get("routing_strategy", RoutingPolicyType.LEAST_LOADED)),
        default_priority=parse_priority(raw.get("default_priority", 0)),
        default_slo_ms=None
        if slo is None
        else _positive(
            slo,
            "default_slo_deadline_ms",
            "use a positive number of milliseconds, or None for no deadline",
        ),
        default_max_tokens=_max_tokens(raw.get("default_max_tokens")),
    )
