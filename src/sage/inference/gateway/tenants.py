"""Tenants at the gateway: who sent a request (its API key), whether the tenant's rate
limits let it in, the ``x-ratelimit-*`` headers of its answer, and each tenant's counts.

A request's tenant is the one its bearer key belongs to (``UnifiedServerConfig.tenants``);
any other key, or none, makes it the ``default`` tenant's. Over a limit, the answer is 429
``rate_limit_exceeded`` naming the limit, with ``Retry-After`` (whole seconds) and OpenAI's
headers; a limited tenant's other answers carry the same headers:

=================================  ====================================================
``x-ratelimit-limit-requests``     its requests per minute (``rpm``)
``x-ratelimit-remaining-requests`` requests left now
``x-ratelimit-reset-requests``     until the request budget is full again (``"1s"``)
``x-ratelimit-limit-tokens``       its tokens per minute (``tpm``)
``x-ratelimit-remaining-tokens``   tokens left now
``x-ratelimit-reset-tokens``       until the token budget is full again (``"6m0s"``)
=================================  ====================================================

Durations are written as OpenAI writes them (Go's duration format: ``"20ms"``, ``"1.5s"``,
``"6m0s"``). A tenant without a limit gets no header for it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sage.common.http import HttpError, Request
from sage.inference.config import DEFAULT_TENANT, TenantConfig, UnifiedServerConfig
from sage.inference.control_plane.ratelimit import LimitState, RateLimiter, Verdict
from sage.inference.gateway.auth import bearer_of
from sage.inference.gateway.errors import gateway_error

__all__ = ["TenantCounts", "Tenants", "duration_text", "ratelimit_headers", "usage_tokens"]

_UNITS = {"rpm": "requests", "tpm": "tokens"}
_TOTAL = re.compile(rb'"total_tokens"\s*:\s*(\d+)')


def duration_text(seconds: float) -> str:
    """``seconds`` as OpenAI writes a reset time: ``"0s"``, ``"20ms"``, ``"1.5s"``, ``"6m0s"``,
    ``"1h0m0s"`` (Go's duration format), rounded up to the millisecond."""
    ms = math.ceil(round(seconds * 1000, 6))
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    minutes, ms = divmod(ms, 60_000)
    hours, minutes = divmod(minutes, 60)
    text = f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text


def ratelimit_headers(verdict: Verdict) -> dict[str, str]:
    """The ``x-ratelimit-*`` headers of a decision (only the limits the tenant has)."""
    headers: dict[str, str] = {}
    for unit, state in (("requests", verdict.requests), ("tokens", verdict.tokens)):
        if state is not None:
            headers[f"x-ratelimit-limit-{unit}"] = str(state.limit)
            headers[f"x-ratelimit-remaining-{unit}"] = str(max(0, state.remaining))
            headers[f"x-ratelimit-reset-{unit}"] = duration_text(state.reset_s)
    return headers


@dataclass
class TenantCounts:
    """What the gateway counted of one tenant.

    Attributes:
        requests: API requests received (those refused by its limits included).
        rate_limited: Requests refused with 429: over its ``rpm`` or ``tpm``.
        tokens: Tokens charged to its limits: prompt estimate plus ``max_tokens`` of each
            admitted request.
        queued: Requests waiting in the gateway for an instance now.
    """

    requests: int = 0
    rate_limited: int = 0
    tokens: int = 0
    queued: int = 0


class Tenants:
    """The configured tenants and ``default``: who sent a request, its limits, the counts.

    Args:
        config: The gateway's configuration (its ``tenants``).
        clock: Monotonic seconds (the dispatcher's; tests pass a fake one).
    """

    def __init__(self, config: UnifiedServerConfig, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.configs: dict[str, TenantConfig] = {DEFAULT_TENANT: TenantConfig()}
        self.configs.update(config.tenants)
        self._of_key = {key: name for name, t in config.tenants.items() for key in t.api_keys}
        now = clock()
        self._limits = {
            name: RateLimiter(t.rpm, t.tpm, now)
            for name, t in self.configs.items()
            if t.rpm is not None or t.tpm is not None
        }
        self.counts = {name: TenantCounts() for name in self.configs}
        self.fair_share = bool(config.tenants and config.fair_share and config.enable_control_plane)

    @property
    def weights(self) -> dict[str, float] | None:
        """Each tenant's weight when fair share is on (``None``: off)."""
        return {n: t.weight for n, t in self.configs.items()} if self.fair_share else None

    def name_of(self, request: Request) -> str:
        """The tenant of ``request`` (by its bearer key; ``default`` for any other)."""
        if not self._of_key:
            return DEFAULT_TENANT
        key = bearer_of(request)
        return DEFAULT_TENANT if key is None else self._of_key.get(key, DEFAULT_TENANT)

    def admit(self, name: str, tokens: int) -> dict[str, str]:
        """Count a request of tenant ``name`` predicted to cost ``tokens``; the
        ``x-ratelimit-*`` headers for its answer (none for a tenant without limits).

        Raises:
            HttpError: 429 ``rate_limit_exceeded`` (over ``rpm`` or ``tpm``: the message
                names the limit; ``Retry-After`` and the ``x-ratelimit-*`` headers say when
                to come back), or 400 ``request_too_large`` (more tokens than ``tpm``
                allows in a whole minute).
        """
        counts = self.counts[name]
        counts.requests += 1
        limiter = self._limits.get(name)
        if limiter is None:
            counts.tokens += tokens
            return {}
        if not limiter.fits(tokens):
            raise gateway_error(
                400,
                f"this request counts {tokens} tokens (prompt estimate + max_tokens), more "
                f"than tenant {name!r} may use in a minute (tpm={self.configs[name].tpm}); "
                "ask for fewer max_tokens or send a shorter prompt",
                param="max_tokens",
                code="request_too_large",
            )
        verdict = limiter.admit(tokens, self.clock())
        headers = ratelimit_headers(verdict)
        if not verdict.admitted:
            counts.rate_limited += 1
            raise self._refusal(name, tokens, verdict, headers)
        counts.tokens += tokens
        return headers

    def _refusal(
        self, name: str, tokens: int, verdict: Verdict, headers: dict[str, str]
    ) -> HttpError:
        retry = max(1, math.ceil(verdict.retry_after_s))
        parts = []
        for limit in verdict.exceeded:
            state = verdict.requests if limit == "rpm" else verdict.tokens
            assert isinstance(state, LimitState)
            unit = _UNITS[limit]
            needed = 1 if limit == "rpm" else tokens
            parts.append(
                f"{unit} per minute ({limit}) limit {state.limit}, remaining {state.remaining}, "
                f"requested {needed}"
            )
        return gateway_error(
            429,
            f"rate limit of tenant {name!r} reached: {'; '.join(parts)}; retry after {retry} s",
            code="rate_limit_exceeded",
            headers={"retry-after": str(retry), **headers},
        )

    def describe(self) -> dict[str, dict[str, Any]]:
        """Per tenant: its weight, limits and counts (JSON-ready)."""
        return {
            name: {
                "weight": config.weight,
                "rpm": config.rpm,
                "tpm": config.tpm,
                **asdict(self.counts[name]),
            }
            for name, config in self.configs.items()
        }


def usage_tokens(answer: bytes) -> int | None:
    """``usage.total_tokens`` of an OpenAI-style answer, found from its end without parsing
    the rest (``None``: not there). A ``"total_tokens"`` inside generated text is escaped
    (``\\"total_tokens\\"``), so only the real key matches."""
    at = answer.rfind(b'"total_tokens"')
    if at < 0:
        return None
    found = _TOTAL.match(answer, at)
    return int(found.group(1)) if found else None
