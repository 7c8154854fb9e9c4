"""Gateway configuration: instances, policies, the server's own settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from sage.common.config.ports import SagePorts
from sage.common.errors import ConfigError

__all__ = ["BackendInstanceConfig", "SchedulingPolicyType", "UnifiedServerConfig"]


class SchedulingPolicyType(StrEnum):
    """How the control plane orders and places requests (policies: see ``control_plane``).

    Names on the command line and in configs: ``fifo``, ``priority``, ``slo_aware``,
    ``hybrid`` (also ``hybrid_slo``), ``adaptive``.
    """

    FIFO = "fifo"
    PRIORITY = "priority"
    SLO_AWARE = "slo_aware"
    HYBRID = "hybrid"
    ADAPTIVE = "adaptive"

    @classmethod
    def parse(cls, value: Any) -> SchedulingPolicyType:
        """The policy named ``value``.

        Raises:
            ConfigError: an unknown name (the message lists the valid ones).
        """
        if isinstance(value, cls):
            return value
        name = str(value).strip().lower().replace("-", "_")
        if name == "hybrid_slo":
            return cls.HYBRID
        try:
            return cls(name)
        except ValueError:
            names = ", ".join([m.value for m in cls] + ["hybrid_slo"])
            raise ConfigError(f"unknown scheduling policy {value!r}; use one of: {names}") from None


@dataclass
class BackendInstanceConfig:
    """One engine server the gateway sends requests to.

    Attributes:
        host: Host of the engine's OpenAI-compatible server.
        port: Its port.
        model_name: The model it serves (what requests name in ``model``).
        instance_type: ``"llm"`` (chat/completions) or ``"embedding"``.
        max_concurrent_requests: Requests in flight on it at most; more wait in the gateway.
        instance_id: Unique name (default ``host:port``).
        api_key: Sent as a bearer token to the instance, if it needs one.
        tls: Connect with HTTPS (remote endpoints).
        base_path: Path prefix of its API (``/v1``).
    """

    host: str = "127.0.0.1"
    port: int = SagePorts.LLM_DEFAULT
    model_name: str = "smollm2"
    instance_type: Literal["llm", "embedding"] = "llm"
    max_concurrent_requests: int = 64
    instance_id: str | None = None
    api_key: str | None = None
    tls: bool = False
    base_path: str = "/v1"

    def __post_init__(self) -> None:
        if self.instance_type not in ("llm", "embedding"):
            raise ConfigError(
                f"instance_type={self.instance_type!r} is invalid; use 'llm' or 'embedding'"
            )
        if self.max_concurrent_requests < 1:
            raise ConfigError(
                f"max_concurrent_requests={self.max_concurrent_requests} must be at least 1"
            )
        if self.host == "localhost":
            self.host = "127.0.0.1"  # skip the resolver: loopback by address
        if self.instance_id is None:
            self.instance_id = f"{self.host}:{self.port}"

    @property
    def id(self) -> str:
        """The instance id."""
        assert self.instance_id is not None
        return self.instance_id


@dataclass
class UnifiedServerConfig:
    """The gateway (``UnifiedAPIServer``).

    Attributes:
        host: Address to listen on (loopback unless told otherwise).
        port: Port to listen on.
        scheduling_policy: Request ordering policy (a :class:`SchedulingPolicyType` or name).
        enable_control_plane: Queue requests in the gateway and dispatch them by policy
            (off: forward at once to the least-loaded instance).
        llm_backends: Chat/completion instances.
        embedding_backends: Embedding instances.
        api_key: Require ``Authorization: Bearer <key>`` on the API (``None``: no key).
        max_body_bytes: Largest request body accepted.
        request_timeout_s: Longest a backend may take to answer.
        health_check_interval_s: Seconds between health checks of each instance.
    """

    host: str = "127.0.0.1"
    port: int = SagePorts.GATEWAY_DEFAULT
    scheduling_policy: SchedulingPolicyType | str = SchedulingPolicyType.FIFO
    enable_control_plane: bool = True
    llm_backends: list[BackendInstanceConfig] = field(default_factory=list)
    embedding_backends: list[BackendInstanceConfig] = field(default_factory=list)
    api_key: str | None = None
    max_body_bytes: int = 8 * 1024 * 1024
    request_timeout_s: float = 600.0
    health_check_interval_s: float = 5.0

    def __post_init__(self) -> None:
        self.scheduling_policy = SchedulingPolicyType.parse(self.scheduling_policy)
        for backend in self.embedding_backends:
            backend.instance_type = "embedding"
