"""A request as the control plane sees it: its scheduling fields, with the defaults of its
API key and model, and the tokens that predict what it costs."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from sage.common.http import Request
from sage.inference.config import (
    DEFAULT_TENANT,
    RequestDefaults,
    TenantConfig,
    UnifiedServerConfig,
)
from sage.inference.control_plane.batching import texts_of
from sage.inference.control_plane.prefixes import content_text, prompt_blocks, prompt_text
from sage.inference.control_plane.queues import PendingRequest
from sage.inference.control_plane.routing import Router
from sage.inference.gateway.auth import bearer_of
from sage.inference.gateway.errors import gateway_error
from sage.inference.protocol import SCHEDULING_HEADERS, SESSION_HEADER, SchedulingFields

__all__ = ["charged_tokens", "pending_request", "place_by", "predicted_tokens"]


def predicted_tokens(kind: str, body: dict[str, Any]) -> int:
    """Tokens whose cost predicts the request's service time.

    For generation, the tokens to decode (``max_tokens``; the engine's 256 when absent):
    decoding dominates, and a prompt token costs a small fraction of a generated one, so
    counting prompt tokens too would make long prompts look many times slower than they
    are. For embeddings, the input tokens (about 4 characters a token).
    """
    if kind == "embedding":
        return sum(len(text) for text in texts_of(body) or ()) // 4 + 1
    limit = body.get("max_tokens", body.get("max_completion_tokens"))
    return limit if isinstance(limit, int) and limit > 0 else 256


def charged_tokens(kind: str, body: dict[str, Any], predicted: int | None = None) -> int:
    """Tokens a request is charged to its tenant (rate limits, fair share): for generation
    the prompt's estimate (about 4 characters a token) plus ``max_tokens``, as OpenAI counts
    a request against its TPM limit; for embeddings the inputs' estimate. ``predicted``:
    its :func:`predicted_tokens`, when already known."""
    if predicted is None:
        predicted = predicted_tokens(kind, body)
    if kind == "embedding":
        return predicted
    return _prompt_chars(body) // 4 + 1 + predicted


def _prompt_chars(body: dict[str, Any]) -> int:
    """Characters of a chat's messages (their text parts) or a completion's prompt (a token
    id counts as 4); parts of any other shape count 0 (the engine validates them)."""
    prompt = body.get("prompt")
    if prompt is not None:
        items = prompt if isinstance(prompt, list) else [prompt]
        return sum(len(p) if isinstance(p, str) else 4 for p in items)
    messages = body.get("messages")
    return sum(
        len(content_text(message.get("content")))
        for message in (messages if isinstance(messages, list) else ())
        if isinstance(message, dict)
    )


def _fields(request: Request, body: dict[str, Any]) -> SchedulingFields:
    try:
        return SchedulingFields.of(body, request.headers)
    except ValidationError as exc:
        name = str(exc.errors()[0]["loc"][0])
        must = "a 64-bit integer" if name == "priority" else "a finite number > 0"
        raise gateway_error(
            400,
            f"{name!r} must be {must} (body field {name!r} or header {SCHEDULING_HEADERS[name]!r})",
            param=name,
        ) from None


def pending_request(
    request: Request,
    kind: str,
    model: str,
    body: dict[str, Any],
    config: UnifiedServerConfig,
    arrival: float,
    tenant: str = DEFAULT_TENANT,
) -> tuple[PendingRequest, bytes]:
    """The request as the dispatcher sees it, and the body to send on.

    Priority and SLO come from the body (``priority``, ``slo_ms``), else the headers
    (``x-sage-priority``, ``x-sage-slo-ms``), else the defaults of the caller's API key,
    of its ``tenant``, of the model, of the gateway. The body fields are removed before
    forwarding (an engine such as vLLM may refuse a priority it does not schedule by).
    Its ``cost`` is what its tenant is charged (:func:`charged_tokens`).

    Raises:
        HttpError: a scheduling field is invalid (400 naming it).
    """
    fields = _fields(request, body)
    priority, slo_ms = fields.priority, fields.slo_ms
    defaults: list[RequestDefaults | TenantConfig] = []
    key = bearer_of(request) if config.api_key_defaults else None
    if key is not None and key in config.api_key_defaults:
        defaults.append(config.api_key_defaults[key])
    tenant_config = config.tenants.get(tenant)
    if tenant_config is not None:
        defaults.append(tenant_config)
    if model in config.model_defaults:
        defaults.append(config.model_defaults[model])
    for default in defaults:
        priority = default.priority if priority is None else priority
        slo_ms = default.slo_ms if slo_ms is None else slo_ms
    payload = request.body
    tokens = predicted_tokens(kind, body)
    if any(name in body for name in SCHEDULING_HEADERS):
        payload = orjson.dumps({k: v for k, v in body.items() if k not in SCHEDULING_HEADERS})
    pending = PendingRequest(
        arrival=arrival,
        kind=kind,
        model=model,
        priority=config.default_priority if priority is None else priority,
        slo_ms=config.default_slo_ms if slo_ms is None else slo_ms,
        tokens=tokens,
        tenant=tenant,
        cost=charged_tokens(kind, body, tokens),
    )
    return pending, payload


def place_by(
    pending: PendingRequest, request: Request, body: dict[str, Any], router: Router
) -> None:
    """Fill in what ``router``'s policy places ``pending`` by: its prompt's prefix blocks
    (``prefix_aware``, chat and completions only), or its session (``session``: the
    ``x-sage-session`` header, else the body's ``user``). Nothing for other policies, so
    that they pay nothing for it."""
    if router.wants_prefix and pending.kind == "llm":
        pending.prefix = prompt_blocks(prompt_text(body), router.block_chars)
    elif router.wants_session:
        session = request.headers.get(SESSION_HEADER) or body.get("user")
        pending.session = session if isinstance(session, str) and session else None
