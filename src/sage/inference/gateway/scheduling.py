"""A request as the control plane sees it: its scheduling fields, with the defaults of its
API key and model, and the tokens that predict what it costs."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

from sage.common.http import Request
from sage.inference.config import UnifiedServerConfig
from sage.inference.control_plane.batching import texts_of
from sage.inference.control_plane.queues import PendingRequest
from sage.inference.gateway.auth import bearer_of
from sage.inference.gateway.errors import gateway_error
from sage.inference.protocol import SCHEDULING_HEADERS, SchedulingFields

__all__ = ["pending_request", "predicted_tokens"]


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
) -> tuple[PendingRequest, bytes]:
    """The request as the dispatcher sees it, and the body to send on.

    Priority and SLO come from the body (``priority``, ``slo_ms``), else the headers
    (``x-sage-priority``, ``x-sage-slo-ms``), else the defaults of the caller's API key,
    of the model, of the gateway. The body fields are removed before forwarding (an
    engine such as vLLM may refuse a priority it does not schedule by).

    Raises:
        HttpError: a scheduling field is invalid (400 naming it).
    """
    fields = _fields(request, body)
    priority, slo_ms = fields.priority, fields.slo_ms
    defaults = []
    key = bearer_of(request) if config.api_key_defaults else None
    if key is not None and key in config.api_key_defaults:
        defaults.append(config.api_key_defaults[key])
    if model in config.model_defaults:
        defaults.append(config.model_defaults[model])
    for default in defaults:
        priority = default.priority if priority is None else priority
        slo_ms = default.slo_ms if slo_ms is None else slo_ms
    payload = request.body
    if any(name in body for name in SCHEDULING_HEADERS):
        payload = orjson.dumps({k: v for k, v in body.items() if k not in SCHEDULING_HEADERS})
    pending = PendingRequest(
        arrival=arrival,
        kind=kind,
        model=model,
        priority=config.default_priority if priority is None else priority,
        slo_ms=config.default_slo_ms if slo_ms is None else slo_ms,
        tokens=predicted_tokens(kind, body),
    )
    return pending, payload
