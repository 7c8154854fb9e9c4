"""Gateway configuration: instances, policies, the server's own settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Literal, TypeVar

from pydantic import ValidationError

from sage.common.config.ports import SagePorts
from sage.common.errors import ConfigError, unknown_key
from sage.inference.protocol import InstanceSpec
from sage.inference.tenant_config import DEFAULT_TENANT, RequestDefaults, TenantConfig

__all__ = [
    "DEFAULT_TENANT",
    "BackendInstanceConfig",
    "RequestDefaults",
    "RoutingPolicyType",
    "SchedulingPolicyType",
    "TenantConfig",
    "UnifiedServerConfig",
    "parse_policies",
]


class SchedulingPolicyType(StrEnum):
    """How the control plane orders and places requests (policies: see ``control_plane``).

    Names on the command line and in configs: ``fifo``, ``priority``, ``slo_aware``,
    ``hybrid`` (also ``hybrid_slo``), ``adaptive``, ``cost_optimized`` (any case, ``-`` for
    ``_``: ``cost-optimized``).
    """

    FIFO = "fifo"
    PRIORITY = "priority"
    SLO_AWARE = "slo_aware"
    HYBRID = "hybrid"
    ADAPTIVE = "adaptive"
    COST_OPTIMIZED = "cost_optimized"

    @classmethod
    def parse(cls, value: Any) -> SchedulingPolicyType:
        """The policy named ``value``.

        Raises:
            ConfigError: an unknown name (the message lists the valid ones).
        """
        return _parse_name(cls, value, {"hybrid_slo": "hybrid"}, "scheduling policy")


class RoutingPolicyType(StrEnum):
    """Which of a model's instances a request is placed on (see
    :mod:`~sage.inference.control_plane.routing`).

    Names on the command line and in configs: ``least_loaded``, ``round_robin``,
    ``prefix_aware`` (also ``cache_aware``, vllm-router's name), ``session``.
    """

    LEAST_LOADED = "least_loaded"
    ROUND_ROBIN = "round_robin"
    PREFIX_AWARE = "prefix_aware"
    SESSION = "session"

    @classmethod
    def parse(cls, value: Any) -> RoutingPolicyType:
        """The routing policy named ``value``.

        Raises:
            ConfigError: an unknown name (the message lists the valid ones).
        """
        aliases = {"cache_aware": "prefix_aware", "prefix": "prefix_aware"}
        return _parse_name(cls, value, aliases, "routing policy")


_Policy = TypeVar("_Policy", bound=StrEnum)


def _parse_name(cls: type[_Policy], value: Any, aliases: dict[str, str], what: str) -> _Policy:
    """The member of ``cls`` named ``value`` (any case, ``-`` for ``_``, or an alias).

    Raises:
        ConfigError: an unknown name, listing the valid ones.
    """
    if isinstance(value, cls):
        return value
    name = str(value).strip().lower().replace("-", "_")
    try:
        return cls(aliases.get(name, name))
    except ValueError:
        names = ", ".join([m.value for m in cls] + list(aliases))
        raise ConfigError(f"unknown {what} {value!r}; use one of: {names}") from None


def parse_policies(name: str) -> tuple[SchedulingPolicyType, RoutingPolicyType]:
    """The scheduling and routing policies a combined name gives.

    ``"slo_aware"``: that scheduling policy, least-loaded routing; ``"prefix_aware"``: FIFO
    scheduling, that routing; ``"slo_aware+prefix_aware"``: both.

    Raises:
        ConfigError: a part that names neither kind of policy.
    """
    scheduling, routing = SchedulingPolicyType.FIFO, RoutingPolicyType.LEAST_LOADED
    for part in str(name).split("+"):
        try:
            scheduling = SchedulingPolicyType.parse(part)
        except ConfigError:
            try:
                routing = RoutingPolicyType.parse(part)
            except ConfigError:
                schedule = ", ".join(m.value for m in SchedulingPolicyType)
                route = ", ".join(m.value for m in RoutingPolicyType)
                raise ConfigError(
                    f"unknown policy {part!r} in {name!r}; use a scheduling policy "
                    f"({schedule}), a routing policy ({route}), or both as "
                    "'slo_aware+prefix_aware'"
                ) from None
    return scheduling, routing


def _hint(field_name: str) -> str:
    """How to fix ``field_name`` of an instance, from its schema (one source of the bounds)."""
    schema = InstanceSpec.model_json_schema()["properties"].get(field_name, {})
    options = [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]
    first = options[0] if options else {}
    if "enum" in first:
        return "use " + " or ".join(repr(v) for v in first["enum"])
    if first.get("type") == "integer" and "minimum" in first and "maximum" in first:
        return f"use an integer from {first['minimum']} to {first['maximum']}"
    if first.get("type") == "number" and "minimum" in first:
        return f"use a number >= {first['minimum']} or leave it out"
    if "const" in first:
        return f"use {first['const']!r}"
    described = schema.get("description")
    return f"use {first.get('type', 'a valid value')}" + (f" ({described})" if described else "")


def _invalid(exc: ValidationError, raw: Mapping[str, Any], where: str) -> ConfigError:
    """The first problem of an instance's fields, named as ``where.field`` with its fix."""
    problem = exc.errors()[0]
    field_name = str(problem["loc"][0]) if problem.get("loc") else "?"
    if problem["type"] == "extra_forbidden":
        return unknown_key(field_name, where, list(InstanceSpec.model_fields))
    return ConfigError(
        f"{where}.{field_name}={raw.get(field_name)!r} is invalid ({problem['msg']}); "
        f"{_hint(field_name)}"
    )


@dataclass
class BackendInstanceConfig:
    """One engine server the gateway sends requests to.

    Checked on construction against :class:`~sage.inference.protocol.InstanceSpec`, the
    one definition of an instance's fields (the management API checks new instances with
    it too).

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
        cost_per_1k_tokens: What 1,000 tokens served on it cost, in whatever currency the
            instances' costs are declared in (>= 0; ``None``: not declared). COST_OPTIMIZED
            places requests on the cheapest instance expected to meet their SLO; one without
            a cost counts as the dearest declared cost of its model, so it is used last.
            The gateway's figures add up the cost served (tokens x cost / 1000).

    Raises:
        ConfigError: a field is invalid (the message names it and the fix).
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
    cost_per_1k_tokens: float | None = None

    def __post_init__(self) -> None:
        fields = asdict(self)
        try:
            InstanceSpec.model_validate(fields, strict=True)
        except ValidationError as exc:
            raise _invalid(exc, fields, "instance") from None
        if self.host == "localhost":
            self.host = "127.0.0.1"  # skip the resolver: loopback by address
        if self.cost_per_1k_tokens is not None:
            self.cost_per_1k_tokens = float(self.cost_per_1k_tokens)
        if self.instance_id is None:
            self.instance_id = f"{self.host}:{self.port}"

    @classmethod
    def from_mapping(
        cls, raw: Any, where: str = "instance", *, required: tuple[str, ...] = ()
    ) -> BackendInstanceConfig:
        """An instance from a dict of its fields (a config file's, a service's config).

        Args:
            raw: The fields.
            where: How errors name it (``"instances[2]"``).
            required: Fields that must be given (the others have defaults).

        Raises:
            ConfigError: ``raw`` is not a dict, has an unknown or missing key, or a value
                that is invalid; the message names it and the fix.
        """
        if not isinstance(raw, Mapping):
            raise ConfigError(
                f"{where} is {type(raw).__name__}; each instance is a dict with "
                f"{', '.join(InstanceSpec.model_fields)}"
            )
        for key in required:
            if key not in raw:
                raise ConfigError(
                    f"{where}: {key!r} is missing; every instance needs "
                    f"{' and '.join(required)} (e.g. 'port': 8001, "
                    "'model_name': 'Qwen/Qwen2.5-7B-Instruct')"
                )
        try:
            spec = InstanceSpec.model_validate(dict(raw), strict=True)
        except ValidationError as exc:
            raise _invalid(exc, raw, where) from None
        return cls(**spec.model_dump())

    @property
    def id(self) -> str:
        """The instance id."""
        assert self.instance_id is not None
        return self.instance_id


LOG_LEVELS = ("debug", "info", "warning", "error")
"""The values of :attr:`UnifiedServerConfig.log_level`."""


class _DefaultSeconds(float):
    """A default number of seconds: tells "not given" from the same number given."""


@dataclass
class UnifiedServerConfig:
    """The gateway (``UnifiedAPIServer``).

    Attributes:
        host: Address to listen on (loopback unless told otherwise).
        port: Port to listen on.
        scheduling_policy: Request ordering policy (a :class:`SchedulingPolicyType` or name).
        routing_policy: Which instance a request goes to (a :class:`RoutingPolicyType` or
            name): ``least_loaded``, ``round_robin``, ``prefix_aware``, ``session``
            (``cost_optimized`` scheduling places requests by cost instead).
        routing_balance_slack: ``prefix_aware``/``session``: how many more requests in
            flight than the least loaded instance an instance may have and still get a
            request for its cached prefix or its session.
        prefix_block_chars: ``prefix_aware``: characters per hashed prompt block.
        prefix_cache_tokens: ``prefix_aware``: prompt tokens the gateway remembers per
            instance (about what its KV cache holds).
        enable_control_plane: Queue requests in the gateway and dispatch them by policy
            (off: forward at once to the least-loaded instance).
        llm_backends: Chat/completion instances.
        embedding_backends: Embedding instances.
        api_key: Require ``Authorization: Bearer <key>`` on the API. The gateway accepts this
            key, every key in ``api_key_file`` and ``SAGE_API_KEY`` from the environment (or
            ``.env``); with none of them the API is open. Keys are never logged.
        api_key_file: A file of accepted keys, one per line (``#`` starts a comment).
        max_body_bytes: Largest request body accepted.
        request_timeout_s: Longest a backend may take to answer (seconds); past it the
            request gets 503 and the instance leaves the rotation until a health check.
        request_timeout: The same setting under the SAGE reference's name (seconds): when
            given it sets ``request_timeout_s``; both given with different values is an error.
        health_check_interval_s: Seconds between health checks of each instance.
        default_priority: Priority of requests that give none (lower first).
        default_slo_ms: Latency objective of requests that give none (``None``: none).
        model_defaults: Per model name, the priority/SLO of its requests that give none.
        api_key_defaults: Per bearer token sent by a client, the same (checked before the
            model's); keys are never logged.
        tenants: Tenants by name (:class:`TenantConfig` or mappings of its fields): API keys
            with a weight, per-minute limits and defaults. A request's tenant is the one its
            key belongs to; requests with another key (``api_key``...) or none count as the
            tenant ``"default"`` (configure one of that name, without keys, to give them a
            weight or limits).
        fair_share: With ``tenants`` (and the control plane on), serve the tenants waiting
            in each priority band by weighted fair share of tokens, each tenant's requests in
            the policy's order (off: the policy's order across all tenants; limits and
            figures stay). On by default: weights that did nothing would surprise; off is
            for comparing, or for a policy's strict global order.
        priority_aging_s: PRIORITY: seconds of waiting worth one level (``None``: strict).
        embedding_batch_max_texts: SLO_AWARE/HYBRID/COST_OPTIMIZED: inputs per batched
            embedding call.
        embedding_batch_wait_ms: HYBRID: longest a batch waits to fill while its model is busy.
        max_queued_requests: Requests that may wait per model; beyond it a request gets 429
            with ``Retry-After`` (``None``: unbounded).
        max_tokens_limit: Largest ``max_tokens`` a request may ask for (``None``: any); a
            larger one gets 400 naming the limit.
        shutdown_grace_s: On stop, how long requests in progress may take to finish (new
            ones get 503 with ``Retry-After`` meanwhile) before connections are closed.
        stream_chunk_timeout_s: Longest an instance may pause between two events of a
            streamed answer; past it the stream is cut (the client sees it end early) and
            the instance's slot is given back.
        header_timeout_s: A request's head must arrive within this long (else 408).
        idle_timeout_s: A client connection idle this long is closed.
        enable_cors: Answer browsers' CORS preflights and allow ``cors_origins``.
        cors_origins: Origins a browser may call from when ``enable_cors`` (``["*"]``: any).
        log_level: ``"debug"``, ``"info"``, ``"warning"`` or ``"error"`` (any case): the level
            :meth:`UnifiedAPIServer.start_async` sets on the ``sage.inference`` loggers
            (process-wide; ``None``: leave them as the application configured them).
    """

    host: str = "127.0.0.1"
    port: int = SagePorts.GATEWAY_DEFAULT
    scheduling_policy: SchedulingPolicyType | str = SchedulingPolicyType.FIFO
    routing_policy: RoutingPolicyType | str = RoutingPolicyType.LEAST_LOADED
    routing_balance_slack: int = 4
    prefix_block_chars: int = 128
    prefix_cache_tokens: int = 16384
    enable_control_plane: bool = True
    llm_backends: list[BackendInstanceConfig] = field(default_factory=list)
    embedding_backends: list[BackendInstanceConfig] = field(default_factory=list)
    api_key: str | None = None
    api_key_file: str | None = None
    max_body_bytes: int = 8 * 1024 * 1024
    request_timeout_s: float = _DefaultSeconds(600.0)
    health_check_interval_s: float = 5.0
    default_priority: int = 0
    default_slo_ms: float | None = None
    model_defaults: dict[str, RequestDefaults] = field(default_factory=dict)
    api_key_defaults: dict[str, RequestDefaults] = field(default_factory=dict)
    tenants: dict[str, TenantConfig] = field(default_factory=dict)
    fair_share: bool = True
    priority_aging_s: float | None = 10.0
    embedding_batch_max_texts: int = 256
    embedding_batch_wait_ms: float = 5.0
    max_queued_requests: int | None = 4096
    max_tokens_limit: int | None = None
    shutdown_grace_s: float = 30.0
    stream_chunk_timeout_s: float = 120.0
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 75.0
    enable_cors: bool = False
    cors_origins: list[str] = field(default_factory=lambda: ["*"])
    request_timeout: float | None = None
    log_level: str | None = None

    def __post_init__(self) -> None:
        self.scheduling_policy = SchedulingPolicyType.parse(self.scheduling_policy)
        self.routing_policy = RoutingPolicyType.parse(self.routing_policy)
        for name in ("routing_balance_slack", "prefix_block_chars", "prefix_cache_tokens"):
            value = getattr(self, name)
            least = 0 if name == "routing_balance_slack" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{name}={value!r} is invalid; use an integer >= {least}")
        self._check_reference_names()
        for name in ("stream_chunk_timeout_s", "header_timeout_s", "idle_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"{name}={value!r} is invalid; use a number of seconds > 0")
        origins: Any = self.cors_origins  # a config file may give anything
        if isinstance(origins, str) or not all(isinstance(o, str) and o for o in origins):
            raise ConfigError(
                f"cors_origins={self.cors_origins!r} is invalid; use a list of origins such "
                "as ['https://app.example.com'], or ['*'] for any"
            )
        RequestDefaults(self.default_priority, self.default_slo_ms)  # validates both
        self.model_defaults = {k: RequestDefaults.of(v) for k, v in self.model_defaults.items()}
        self.api_key_defaults = {k: RequestDefaults.of(v) for k, v in self.api_key_defaults.items()}
        self._check_tenants()
        if self.embedding_batch_max_texts < 1:
            raise ConfigError(
                f"embedding_batch_max_texts={self.embedding_batch_max_texts} must be at least 1"
            )
        for name in ("max_queued_requests", "max_tokens_limit"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigError(f"{name}={value!r} is invalid; use an integer >= 1 or None")
        if self.embedding_batch_wait_ms < 0:
            raise ConfigError(
                f"embedding_batch_wait_ms={self.embedding_batch_wait_ms} must be >= 0"
            )
        for backend in self.embedding_backends:
            backend.instance_type = "embedding"

    def _check_reference_names(self) -> None:
        """Apply ``request_timeout`` to ``request_timeout_s`` and check both; normalize
        ``log_level``. A value is never accepted and then ignored."""
        alias, own = self.request_timeout, self.request_timeout_s
        for name, value in (("request_timeout", alias), ("request_timeout_s", own)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
            ):
                raise ConfigError(f"{name}={value!r} is invalid; use a number of seconds > 0")
        if alias is not None:
            if not isinstance(own, _DefaultSeconds) and own != alias:
                raise ConfigError(
                    f"request_timeout={alias!r} and request_timeout_s={own!r} disagree; they "
                    "are one setting (request_timeout is the SAGE reference's name): give one"
                )
            self.request_timeout_s = alias
        self.request_timeout_s = float(self.request_timeout_s)
        if self.log_level is not None:
            level = self.log_level.strip().lower() if isinstance(self.log_level, str) else None
            if level not in LOG_LEVELS:
                raise ConfigError(
                    f"log_level={self.log_level!r} is invalid; use one of "
                    f"{', '.join(LOG_LEVELS)} (any case), or None to leave the loggers alone"
                )
            self.log_level = level

    def _check_tenants(self) -> None:
        """Check ``tenants`` (dicts become :class:`TenantConfig`); no key in two tenants."""
        tenants: Any = self.tenants
        if not isinstance(tenants, Mapping):
            raise ConfigError(
                f"tenants is {type(tenants).__name__}; give a mapping of tenant name to "
                "{'api_keys': [...], 'weight': 1, 'rpm': ..., 'tpm': ...}"
            )
        self.tenants = {name: TenantConfig.of(name, value) for name, value in tenants.items()}
        owner: dict[str, str] = {}
        for name, tenant in self.tenants.items():
            for key in tenant.api_keys:
                if owner.setdefault(key, name) != name:
                    raise ConfigError(
                        f"tenants.{name}.api_keys: a key is also one of tenants.{owner[key]}'s; "
                        "give each key to one tenant"
                    )
