"""How ``ControlPlaneVLLMService`` reports a failed request: the client's transport errors as
:class:`GatewayError`, and a gateway's 502-504 explained by the instances that are down."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from sage.common.errors import GatewayError

__all__ = ["as_gateway_error", "explain", "wants_states"]


def as_gateway_error(
    exc: GatewayError | httpx.HTTPError, url: str, timeout_s: float
) -> GatewayError:
    """``exc`` as a :class:`GatewayError` (transport failures of the client included).

    Args:
        exc: What the client raised.
        url: The gateway's URL (named in the message).
        timeout_s: How long the client waited (named when it timed out).
    """
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, httpx.TimeoutException):
        return GatewayError(
            f"no answer from the control plane at {url} within {timeout_s:g} s (requests "
            "queued behind others, or a slow instance); raise request_timeout_s in the "
            "config to wait longer",
            504,
        )
    return GatewayError(
        f"the control plane at {url} could not be reached ({type(exc).__name__}: {exc}); "
        "was cleanup() called meanwhile?"
    )


def wants_states(exc: GatewayError) -> bool:
    """Whether the error may come from an unreachable instance (502-504)."""
    return exc.status in (502, 503, 504)


def explain(exc: GatewayError, states: Sequence[dict[str, Any]]) -> GatewayError:
    """``exc`` with each unhealthy instance and its last error appended (if any)."""
    down = [
        f"{s['instance_id']} ({s['model_name']} at {s['host']}:{s['port']}): "
        f"{s['last_error'] or 'not answering'}"
        for s in states
        if not s["healthy"]
    ]
    if not down:
        return exc
    return GatewayError(
        f"{exc}; unhealthy instances: {'; '.join(down)}. Start their engine servers "
        "(e.g. `sage llm serve`) or fix host/port in the ControlPlaneVLLMService config",
        exc.status,
        exc.param,
    )
