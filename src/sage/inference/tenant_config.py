"""Tenants of the gateway and the scheduling defaults of requests that give none.

Part of the gateway's configuration (:class:`~sage.inference.config.UnifiedServerConfig`'s
``tenants``, ``model_defaults``, ``api_key_defaults``); importable from
:mod:`sage.inference.config` as well.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from sage.common.errors import ConfigError, unknown_key

__all__ = ["DEFAULT_TENANT", "RequestDefaults", "TenantConfig"]

DEFAULT_TENANT = "default"
"""The tenant of requests whose API key belongs to no configured tenant (or that send none)."""
_TENANT_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_TENANT_KEY = re.compile(r"[!-~]+")


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
