"""Errors as the gateway answers them: OpenAI's shape, with the offending ``param`` named."""

from __future__ import annotations

from sage.common.http import HttpError
from sage.inference.protocol import openai_error

__all__ = ["error_body", "gateway_error"]


def gateway_error(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> HttpError:
    """The error to raise from a handler: ``status`` with an OpenAI-style body."""
    return HttpError(status, message, openai_error(status, message, param, code), headers)


def error_body(status: int, message: str) -> bytes:
    """The body of an error the HTTP core raises itself (413, 404, a malformed request)."""
    return openai_error(status, message)
