"""Gateway configuration: instances, policies, the server's own settings."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any, Literal, TypeVar

from pydantic import ValidationError

from sage.common.config.ports import SagePorts
from sage.common.errors import ConfigError, unknown_key
from sage.inference.protocol import InstanceSpec

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

DEFAULT_TENANT = "default"
"""The tenant of requests whose API key belongs to no configured tenant (or that send none)."""
_TENANT_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_TENANT_KEY = re.compile(r"[!-~]+")


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

    def __post_init__(self) -> None:
        fields = asdict(self)
        try:
            InstanceSpec.model_validate(fields, strict=True)
        except ValidationError as exc:
            raise _invalid(exc, fields, "instance") from None
        if self.host == "localhost":
            self.host = "127.0.0.1"  # skip the resolver: loopback by address
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


@dataclass
class RequestDefaults:
    """Scheduling defaults for requests that do not say (per API key or per model).

    Attributes:
        priority: Lower is more urgent (``None``: fall through to the next default).
        slo_ms: Latency objective in milliseconds (``None``: fall through).
    """

    priority: int | None = None
    slo_ms: float | None = None

    def __post_init__(self) -> None:
        if self.priority is not None and (
            isinstance(self.priority, bool) or not isinstance(self.priority, int)
        ):
            raise ConfigError(f"priority={self.priority!r} must be an integer (lower first)")
        if self.slo_ms is not None and not (
            isinstance(self.slo_ms, int | float) and self.slo_ms > 0
        ):
            raise ConfigError(f"slo_ms={self.slo_ms!r} must be a positive number of ms")

    @classmethod
    def of(cls, value: RequestDefaults | dict[str, Any]) -> RequestDefaults:
        """From a mapping such as ``{"priority": 0, "slo_ms": 2000}``.

        Raises:
            ConfigError: an unknown key or a bad value.
        """
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict) or set(value) - {"priority", "slo_ms"}:
            raise ConfigError(
                f"request defaults {value!r} must be a mapping with 'priority' and/or 'slo_ms'"
            )
        return cls(**value)


@dataclass
class TenantConfig:
    """One tenant of the gateway: the API keys that identify it, its share, its limits.

    Example (a config file's ``tenants``)::

        {"acme": {"api_keys": ["sk-acme-1"], "weight": 2, "rpm": 600, "tpm": 200000},
         "hobby": {"api_keys": ["sk-hobby"], "rpm": 60, "priority": 5}}

    Attributes:
        weight: Its share when tenants wait for the same model: fair share serves each
            tenant tokens in proportion to its weight (2 gets twice what 1 gets).
        api_keys: Bearer keys that identify it; each is an accepted key of the gateway.
        rpm: Requests per minute at most (``None``: no limit); beyond it, 429.
        tpm: Tokens per minute at most, counted when a request is admitted as its prompt
            estimate plus ``max_tokens`` (``None``: no limit); beyond it, 429.
        priority: Priority of its requests that give none (``None``: the model's/gateway's).
        slo_ms: Latency objective of its requests that give none (``None``: likewise).
    """

    weight: float = 1.0
    api_keys: list[str] = field(default_factory=list)
    rpm: int | None = None
    tpm: int | None = None
    priority: int | None = None
    slo_ms: float | None = None

    @classmethod
    def of(cls, name: Any, value: Any) -> TenantConfig:
        """Tenant ``name`` from a mapping of its fields (or a :class:`TenantConfig`), checked.

        Raises:
            ConfigError: a bad name, an unknown key or a bad value, named as
                ``tenants.<name>.<field>`` with the fix.
        """
        if not isinstance(name, str) or not _TENANT_NAME.fullmatch(name):
            raise ConfigError(
                f"tenant name {name!r} is invalid; use 1 to 64 letters, digits, '.', '_' or '-'"
            )
        where = f"tenants.{name}"
        if isinstance(value, Mapping):
            valid = [f.name for f in fields(cls)]
            for key in value:
                if key not in valid:
                    raise unknown_key(key, where, valid)
            value = cls(**value)
        if not isinstance(value, cls):
            raise ConfigError(
                f"{where} is {type(value).__name__}; give a mapping such as "
                "{'api_keys': ['sk-...'], 'weight': 1, 'rpm': 60, 'tpm': 100000}"
            )
        value.check(where)
        return value

    def check(self, where: str = "tenant") -> None:
        """Raise :class:`ConfigError` naming ``where.<field>`` if a field is out of range."""
        weight = self.weight
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
            or weight <= 0
        ):
            raise ConfigError(f"{where}.weight={weight!r} is invalid; use a number > 0, e.g. 1")
        keys: Any = self.api_keys
        if isinstance(keys, str) or not isinstance(keys, list):
            raise ConfigError(f"{where}.api_keys={keys!r} is invalid; use a list of keys")
        for key in keys:
            if not isinstance(key, str) or not _TENANT_KEY.fullmatch(key):
                raise ConfigError(
                    f"{where}.api_keys holds an invalid key (a {type(key).__name__}); each key "
                    "is printable ASCII without spaces"
                )
        for limit in ("rpm", "tpm"):
            value = getattr(self, limit)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigError(
                    f"{where}.{limit}={value!r} is invalid; use an integer >= 1 (per minute) "
                    "or None for no limit"
                )
        try:
            RequestDefaults(self.priority, self.slo_ms)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


@dataclass
class UnifiedServerConfig:
    """The gateway (``UnifiedAPIServer``).

    Attributes:
        host: Address to listen on (loopback unless told otherwise).
        port: Port to listen on.
        scheduling_policy: Request ordering policy (a :class:`SchedulingPolicyType` or name).
        routing_policy: Which instance a request goes to (a :class:`RoutingPolicyType` or
            name): ``least_loaded``, ``round_robin``, ``prefix_aware``, ``session``.
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
        request_timeout_s: Longest a backend may take to answer.
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
        embedding_batch_max_texts: SLO_AWARE/HYBRID: inputs per batched embedding call.
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
    request_timeout_s: float = 600.0
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

    def __post_init__(self) -> None:
        self.scheduling_policy = SchedulingPolicyType.parse(self.scheduling_policy)
        self.routing_policy = RoutingPolicyType.parse(self.routing_policy)
        for name in ("routing_balance_slack", "prefix_block_chars", "prefix_cache_tokens"):
            value = getattr(self, name)
            least = 0 if name == "routing_balance_slack" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{name}={value!r} is invalid; use an integer >= {least}")
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
