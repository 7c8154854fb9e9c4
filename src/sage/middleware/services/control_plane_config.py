"""``ControlPlaneVLLMService``'s configuration: the seed's dict, checked before anything
starts (every key and value named in its error, with the fix)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sage.common.errors import ConfigError, unknown_key
from sage.inference.config import (
    BackendInstanceConfig,
    SchedulingPolicyType,
    UnifiedServerConfig,
)

__all__ = ["GATEWAY_HOST", "TOP_KEYS", "ControlPlaneServiceConfig", "parse_service_config"]

GATEWAY_HOST = "127.0.0.1"
"""The in-process gateway listens on loopback."""

TOP_KEYS = ("scheduling_policy", "instances", "gateway_port", "request_timeout_s")
_REQUIRED_INSTANCE_KEYS = ("port", "model_name")


@dataclass(frozen=True)
class ControlPlaneServiceConfig:
    """The validated form of the service's dict config.

    Attributes:
        scheduling_policy: How the gateway orders requests.
        instances: The engine servers behind the gateway (LLM and embedding).
        gateway_port: Port of the in-process gateway (0: any free port); it binds loopback.
        request_timeout_s: Longest an instance may take to answer one request.
    """

    scheduling_policy: SchedulingPolicyType
    instances: tuple[BackendInstanceConfig, ...]
    gateway_port: int = 0
    request_timeout_s: float = 600.0

    def server_config(self) -> UnifiedServerConfig:
        """The gateway's configuration (fresh objects each call, so a restart starts clean)."""
        copies = [dataclasses.replace(i) for i in self.instances]
        return UnifiedServerConfig(
            host=GATEWAY_HOST,
            port=self.gateway_port,
            scheduling_policy=self.scheduling_policy,
            llm_backends=[c for c in copies if c.instance_type == "llm"],
            embedding_backends=[c for c in copies if c.instance_type == "embedding"],
            request_timeout_s=self.request_timeout_s,
        )


def _int(value: object, key: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{key}={value!r} is invalid; use an integer from {low} to {high}")
    return value


def parse_service_config(raw: Mapping[str, Any]) -> ControlPlaneServiceConfig:
    """Validate the seed's dict config.

    Keys: ``scheduling_policy`` (a :class:`SchedulingPolicyType` name, default ``fifo``),
    ``instances`` (a non-empty list of dicts with ``port`` and ``model_name`` required and
    ``instance_id``, ``host``, ``instance_type``, ``max_concurrent_requests``, ``api_key``
    optional), ``gateway_port`` (default 0: any free port) and ``request_timeout_s``.

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
    timeout = raw.get("request_timeout_s", 600.0)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ConfigError(
            f"request_timeout_s={timeout!r} is invalid; use a positive number of seconds"
        )
    return ControlPlaneServiceConfig(
        scheduling_policy=policy,
        instances=instances,
        gateway_port=_int(raw.get("gateway_port", 0), "gateway_port", 0, 65535),
        request_timeout_s=float(timeout),
    )
