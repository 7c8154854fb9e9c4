"""The gateway's management API and health: an instance to add, instances and their
state, how to remove one (at once, or draining it first), the scheduling policy, the
gateway's figures."""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
)

from sage.common.config.ports import SagePorts

logger = logging.getLogger(__name__)


class InstanceSpec(BaseModel):
    """``POST /v1/management/instances``: an engine server to put behind the gateway.

    The fields of ``BackendInstanceConfig``, checked before anything is registered: a host
    or key that cannot go into an HTTP request, a port out of range or a non-positive limit
    gets 400 naming the field. Unknown fields are refused (a typo must not go unnoticed).
    """

    model_config = ConfigDict(extra="forbid")

    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9._:%-]+$",
        description="Host name or IP address of the engine's OpenAI-compatible server.",
    )
    port: int = Field(default=SagePorts.LLM_DEFAULT, ge=1, le=65535)
    model_name: str = Field(default="smollm2", min_length=1, description="The model it serves.")
    instance_type: Literal["llm", "embedding"] = "llm"
    max_concurrent_requests: int = Field(default=64, ge=1, le=1_000_000)
    instance_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        pattern=r"^[^\x00-\x20/\x7f]+$",
        description="Unique name, without '/' or whitespace, not '.' or '..' (which no URL "
        "can name); default host:port.",
        json_schema_extra={"not": {"enum": [".", ".."]}},
    )
    api_key: str | None = Field(
        default=None,
        min_length=1,
        pattern=r"^[!-~]+$",
        description="Bearer token sent to the instance (printable ASCII, no spaces).",
    )
    tls: bool = False
    base_path: str = Field(
        default="/v1",
        pattern=r"^(/[!-~]*)?$",
        description="Path prefix of its API: empty or starting with '/', no spaces.",
    )
    cost_per_1k_tokens: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        strict=True,  # a number, even over HTTP: true or "1" is a mistake, not a price
        description="What 1,000 tokens served on it cost, in the currency all instances' "
        "costs are declared in (cost_optimized places requests on the cheapest instance "
        "expected to meet their SLO); none: it counts as its model's dearest.",
    )

    @field_validator("instance_id")
    @classmethod
    def _addressable(cls, value: str | None) -> str | None:
        if value in (".", ".."):  # a URL path normalises these away: it could not be removed
            raise ValueError("instance_id must not be '.' or '..'")
        return value


PolicyName = Literal["fifo", "priority", "slo_aware", "hybrid", "adaptive", "cost_optimized"]
RoutingName = Literal["least_loaded", "round_robin", "prefix_aware", "session"]


class GatewayHealth(BaseModel):
    """``GET /health``: the gateway is up; how many of its instances are in rotation."""

    status: Literal["ok"]
    instances: int = Field(ge=0)
    healthy: int = Field(ge=0)
    policy: PolicyName
    active_policy: PolicyName | None


class InstanceState(BaseModel):
    """One instance as the management routes describe it."""

    instance_id: str
    host: str
    port: int
    model_name: str
    instance_type: Literal["llm", "embedding"]
    max_concurrent_requests: int
    healthy: bool
    draining: bool = Field(
        default=False,
        description="Being drained: it gets no new request; it is removed once those in "
        "flight are done.",
    )
    in_flight: int
    queued: int = Field(description="Requests waiting in the gateway for its type and model.")
    requests: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    ttft_p95_ms: float | None
    slo_requests: int = Field(description="Requests it served that carried an SLO.")
    slo_attainment: float | None = Field(description="Share of those that met it.")
    cost_per_1k_tokens: float | None = Field(
        default=None, description="Its declared cost of 1,000 tokens (None: not declared)."
    )
    cost: float | None = Field(
        default=None,
        description="Cost served on it: tokens of its answered requests x cost_per_1k_tokens "
        "/ 1000, in the declared currency (None: no cost declared).",
    )
    last_error: str


class InstanceList(BaseModel):
    """``GET /v1/management/instances``."""

    instances: list[InstanceState]


class InstanceAdded(BaseModel):
    """``POST /v1/management/instances`` (201): the new instance and its configuration."""

    instance: InstanceState
    config: dict[str, Any]


class DrainOptions(BaseModel):
    """The query of ``DELETE /v1/management/instances/{instance_id}``.

    Without ``drain`` the instance is removed at once (requests in flight on it run on
    over connections of their own). With ``drain=true`` it first gets no new request (those
    waiting go to the model's other instances) and the call returns once its requests in
    flight are done; after ``timeout_s`` with some still running, it is put back in rotation
    and the call answers 409 (code ``drain_timeout``) saying how many. Draining the last
    healthy instance of a model is refused (409, code ``last_instance``) unless
    ``force=true``: requests for the model would then fail.
    """

    model_config = ConfigDict(extra="forbid")

    drain: bool = Field(
        default=False, description="Wait for its requests in flight before removing it."
    )
    timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="drain=true: seconds to wait for its requests in flight.",
    )
    force: bool = Field(
        default=False,
        description="drain=true: drain it even when it is its model's last healthy instance.",
    )


class InstanceRemoved(BaseModel):
    """``DELETE /v1/management/instances/{instance_id}``."""

    removed: str
    drained: int | None = Field(
        default=None,
        description="drain=true: requests that were in flight when the drain began (all "
        "finished before it was removed); absent for a removal at once.",
    )


class PolicyState(BaseModel):
    """``GET|PUT /v1/management/policy``: the configured policy and the one in use now
    (they differ under ``adaptive``), and the routing policy."""

    policy: PolicyName
    active_policy: PolicyName
    routing: RoutingName


class PolicyChange(BaseModel):
    """``PUT /v1/management/policy``: the scheduling policy, the routing policy, or both
    (names are case-insensitive; ``hybrid_slo`` is ``hybrid``, ``cache_aware`` is
    ``prefix_aware``)."""

    policy: PolicyName | Literal["hybrid_slo"] | None = None
    routing: RoutingName | Literal["cache_aware"] | None = None


class TenantState(BaseModel):
    """One tenant as ``GET /v1/management/metrics`` describes it."""

    weight: float = Field(description="Its share under fair share (relative to the others).")
    rpm: int | None = Field(description="Requests per minute it may send (None: no limit).")
    tpm: int | None = Field(description="Tokens per minute it may use (None: no limit).")
    requests: int = Field(description="API requests received from it (refused ones included).")
    rate_limited: int = Field(description="Requests refused with 429: over its rpm or tpm.")
    tokens: int = Field(description="Tokens charged at admission (prompt estimate + max_tokens).")
    queued: int = Field(description="Requests of it waiting for an instance now.")
    answered: int = Field(description="Requests answered (failed ones included).")
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    ttft_p95_ms: float | None
    virtual_tokens: dict[str, float] = Field(
        description="Fair share: tokens served in each lane ('type/model') over its weight."
    )


class GatewayMetrics(BaseModel):
    """``GET /v1/management/metrics``: counters, queues, per-class, per-tenant and
    per-instance figures (``UnifiedAPIServer.metrics_snapshot``)."""

    model_config = ConfigDict(extra="allow")

    total_requests: int
    rejected: int
    policy: PolicyName
    active_policy: PolicyName
    queued: int
    cost: float = Field(
        default=0.0,
        description="Cost served, all instances: tokens answered x their cost_per_1k_tokens "
        "/ 1000, in the currency the instances' costs are declared in (instances without a "
        "cost add nothing).",
    )
    instances: list[InstanceState]
    tenants: dict[str, TenantState] = Field(default_factory=dict)
