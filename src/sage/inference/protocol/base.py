"""What every part of the wire format shares: the request models' base (a field they do
not declare is refused by name), OpenAI-style errors, SAGE's scheduling fields, token usage."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from sage.inference.protocol.fields import is_inert, unsupported


def new_id(prefix: str) -> str:
    """``"chatcmpl-3f2a..."``: an id in OpenAI's style."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class WireModel(BaseModel):
    """Base of every request model: a field it does not declare is refused (never accepted
    and silently dropped); :func:`error_from_validation` names it, with code
    ``unsupported_parameter`` (:mod:`.fields` says whether it is an OpenAI parameter).

    Attributes:
        endpoint: The group of the OpenAI API the model belongs to (``"chat"``...).
    """

    model_config = ConfigDict(extra="forbid")
    endpoint: ClassVar[str] = ""

    @model_validator(mode="before")
    @classmethod
    def _inert_fields(cls, data: Any) -> Any:
        """Drop the undeclared fields whose value asks for nothing more (:data:`.INERT`)."""
        if isinstance(data, dict) and cls.endpoint:
            declared = cls.model_fields
            drop = [
                key
                for key, value in data.items()
                if key not in declared and is_inert(cls.endpoint, key, value)
            ]
            if drop:
                data = {k: v for k, v in data.items() if k not in drop}
        return data


class ErrorDetail(BaseModel):
    """The ``error`` object of an OpenAI error response."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """``{"error": {...}}`` with an HTTP status alongside."""

    error: ErrorDetail

    @staticmethod
    def of(
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> ErrorResponse:
        return ErrorResponse(error=ErrorDetail(message=message, type=type, param=param, code=code))


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> bytes:
    """The body of an OpenAI-style error answer with HTTP ``status``."""
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return orjson.dumps(
        {"error": {"message": message, "type": kind, "param": param, "code": code or str(status)}}
    )


_FIELD = re.compile(r"[a-z][a-z0-9_]*")


def _is_field(part: int | str) -> bool:
    """Whether a part of a validation error's location names a field or an index (not a
    union member pydantic tried: ``literal['a','b']``, ``JsonSchemaFormat``, ``_Json``)."""
    return isinstance(part, int) or bool(_FIELD.fullmatch(part))


def error_from_validation(exc: ValidationError, endpoint: str = "") -> ErrorResponse:
    """The first validation problem as an OpenAI-style error naming the parameter; a field
    the model does not declare gets code ``unsupported_parameter``."""
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first.get("loc", ()) if _is_field(p)) or None
    if first.get("type") == "extra_forbidden" and param is not None:
        return ErrorResponse.of(
            f"{param}: {unsupported(endpoint, param)}", param=param, code="unsupported_parameter"
        )
    return ErrorResponse.of(
        f"{param}: {first.get('msg', 'invalid value')}" if param else str(exc), param=param
    )


# -- SAGE's scheduling fields ----------------------------------------------------------------


def _not_a_bool(value: Any) -> Any:
    if isinstance(value, bool):  # a bool is an int to Python, never a priority or an SLO
        raise ValueError("a boolean is not a number")
    return value


Priority = Annotated[
    int | None,
    BeforeValidator(_not_a_bool),
    Field(
        ge=-(2**63),
        lt=2**63,
        description="SAGE: scheduling priority (lower first), a 64-bit integer.",
    ),
]
"""A request's ``priority`` (body field, or header ``x-sage-priority``)."""

SloMs = Annotated[
    float | None,
    BeforeValidator(_not_a_bool),
    Field(
        gt=0,
        allow_inf_nan=False,
        description="SAGE: latency objective in ms, a finite number > 0.",
    ),
]
"""A request's ``slo_ms`` (body field, or header ``x-sage-slo-ms``)."""

SCHEDULING_HEADERS = {"priority": "x-sage-priority", "slo_ms": "x-sage-slo-ms"}
"""The header that may carry each scheduling field instead of the body."""
CLASS_HEADER = "x-sage-class"
"""Names the request's class in the gateway's metrics (``llm:p0`` by default)."""
SESSION_HEADER = "x-sage-session"
"""Names the conversation a request belongs to, for the gateway's ``session`` routing (the
body's ``user`` is the fallback)."""


class SchedulingFields(BaseModel):
    """SAGE's scheduling fields of an API request, from its body or its headers.

    The gateway reads them (and removes them from the body before forwarding); the client
    sends them; the request models below declare them with the same types.

    Example:
        >>> SchedulingFields.of({"priority": 0}, {"x-sage-slo-ms": "2000"})
        SchedulingFields(priority=0, slo_ms=2000.0)
    """

    model_config = ConfigDict(frozen=True)

    priority: Priority = None
    slo_ms: SloMs = None

    @classmethod
    def of(cls, body: Mapping[str, Any], headers: Mapping[str, str]) -> SchedulingFields:
        """The fields of a request: a body field wins over its header.

        Raises:
            ValidationError: a field is invalid (its ``loc`` names it).
        """
        raw = {
            name: value
            for name, header in SCHEDULING_HEADERS.items()
            if (value := body.get(name, headers.get(header))) is not None
        }
        return cls.model_validate(raw) if raw else _NO_FIELDS  # most requests give none

    def headers(self) -> dict[str, str]:
        """The fields as headers (for a client that leaves the body alone)."""
        return {
            SCHEDULING_HEADERS[name]: str(value)
            for name, value in self.model_dump().items()
            if value is not None
        }


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]
"""Why a choice ended (SAGE's engines say ``stop`` or ``length``; other servers the rest)."""


_NO_FIELDS = SchedulingFields()


class StreamOptions(WireModel):
    """``stream_options`` of a streamed request."""

    include_usage: bool = Field(
        default=False, description="Send a last event with the request's token counts."
    )


def _token_biases(value: dict[str, float] | None) -> dict[str, float] | None:
    for token, bias in (value or {}).items():
        if not token.isdigit():
            raise ValueError(f"key {token!r} is not a token id (a non-negative integer)")
        if not -100.0 <= bias <= 100.0:
            raise ValueError(f"the bias of token {token} is {bias}; use -100 to 100")
    return value


LogitBias = Annotated[
    dict[str, float] | None,
    AfterValidator(_token_biases),
    Field(
        description="Added to the logits of the tokens named by id before sampling "
        "(-100 to 100; -100 bans a token, 100 all but forces it)."
    ),
]
"""A request's ``logit_bias``: token id (as a string) to bias."""

Penalty = Annotated[float | None, Field(ge=-2.0, le=2.0)]
"""``frequency_penalty`` / ``presence_penalty``: subtracted from the logits of tokens already
generated, per occurrence / once (OpenAI's formula)."""


class ApiRequest(WireModel):
    """What every API request carries: its model, its end user, SAGE's scheduling fields."""

    model: str
    user: str | None = Field(default=None, description="The end user's id (logged).")
    priority: Priority = None
    slo_ms: SloMs = None


class SamplingRequest(ApiRequest):
    """The sampling fields that chat and completion requests share."""

    frequency_penalty: Penalty = None
    logit_bias: LogitBias = None
    n: int = Field(default=1, ge=1, le=1, description="Only one choice per request is supported.")
    presence_penalty: Penalty = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(
        default=None,
        ge=-1,
        description="Sample among the k likeliest tokens (0 or -1: all; vLLM's and "
        "llama.cpp's extension).",
    )
    min_p: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Drop tokens less likely than min_p times the likeliest (vLLM's and "
        "llama.cpp's extension).",
    )


class PromptTokensDetails(BaseModel):
    """What of the prompt was not computed again."""

    cached_tokens: int = 0


class Usage(BaseModel):
    """Token counts of a request."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None
