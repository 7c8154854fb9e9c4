"""The OpenAI-compatible wire format: pydantic models shared by servers, client and tests.

Fields follow the order of the OpenAI API reference (https://platform.openai.com/docs/api-reference).
Fields SAGE adds come last, each with a description. Unknown fields are accepted and logged
(as vLLM does), so newer SDKs keep working. Errors are :class:`ErrorResponse` objects with the
offending ``param`` named.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from sage.common.config.ports import SagePorts

__all__ = [
    "CLASS_HEADER",
    "SCHEDULING_HEADERS",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatMessage",
    "Choice",
    "ChunkChoice",
    "CompletionChoice",
    "CompletionRequest",
    "CompletionResponse",
    "DeltaMessage",
    "EmbeddingData",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "ErrorDetail",
    "ErrorResponse",
    "FinishReason",
    "InstanceSpec",
    "ModelCard",
    "ModelList",
    "Priority",
    "SchedulingFields",
    "SloMs",
    "Usage",
    "error_from_validation",
    "new_id",
    "openai_error",
]

logger = logging.getLogger(__name__)


def new_id(prefix: str) -> str:
    """``"chatcmpl-3f2a..."``: an id in OpenAI's style."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class WireModel(BaseModel):
    """Base of every request model: unknown fields are kept, logged once, and ignored."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="after")
    def _log_unknown(self) -> WireModel:
        extra = self.model_extra
        if extra:
            logger.debug("%s: ignoring unsupported fields %s", type(self).__name__, sorted(extra))
        return self


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


def error_from_validation(exc: ValidationError) -> ErrorResponse:
    """The first validation problem as an OpenAI-style error naming the parameter."""
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first.get("loc", ())) or None
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


class Usage(BaseModel):
    """Token counts of a request."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


# -- chat ---------------------------------------------------------------------------------


class ChatMessage(WireModel):
    """One message of a conversation."""

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        """The text of the message (text parts joined, for content given as parts)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(
            str(part.get("text", "")) for part in self.content if part.get("type") == "text"
        )


class ChatCompletionRequest(WireModel):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    model: str
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=1, description="Only one choice per request is supported.")
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    user: str | None = None
    priority: Priority = None
    slo_ms: SloMs = None

    def token_limit(self, default: int) -> int:
        """``max_completion_tokens``, else ``max_tokens``, else ``default``."""
        return self.max_completion_tokens or self.max_tokens or default


class DeltaMessage(BaseModel):
    """The increment of a streamed message."""

    role: str | None = None
    content: str | None = None


class Choice(BaseModel):
    """One completed chat choice."""

    index: int = 0
    message: ChatMessage
    finish_reason: FinishReason | None = "stop"


class ChatCompletionResponse(BaseModel):
    """The answer to a non-streamed chat request."""

    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage = Field(default_factory=Usage)


class ChunkChoice(BaseModel):
    """One choice of a streamed chunk."""

    index: int = 0
    delta: DeltaMessage
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat answer."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


# -- completions --------------------------------------------------------------------------


# What the validators below accept, for the JSON schema (OpenAPI) of the requests.
_ONE_PROMPT_SCHEMA: dict[str, Any] = {
    "title": "Prompt",
    "description": "The prompt, or a list holding exactly one prompt.",
    "anyOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
    ],
}
_TEXTS_SCHEMA: dict[str, Any] = {
    "title": "Input",
    "description": "A non-empty text, or a non-empty list of non-empty texts.",
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
    ],
}


class CompletionRequest(WireModel):
    """``POST /v1/completions`` (one prompt string per request)."""

    model: str
    prompt: Annotated[str | list[str], WithJsonSchema(_ONE_PROMPT_SCHEMA)]
    max_tokens: int | None = Field(default=16, ge=1)
    n: int = Field(default=1, ge=1, le=1, description="Only one choice per request is supported.")
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    user: str | None = None
    priority: Priority = None
    slo_ms: SloMs = None

    def prompt_text(self) -> str:
        """The prompt (a one-element list is accepted)."""
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ValueError("prompt: one prompt per request is supported")
        return self.prompt[0]


class CompletionChoice(BaseModel):
    """One completed text choice."""

    text: str
    index: int = 0
    logprobs: None = None
    finish_reason: FinishReason | None = "stop"


class CompletionResponse(BaseModel):
    """The answer to a completion request (also each streamed event)."""

    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = Field(default_factory=Usage)


# -- embeddings ---------------------------------------------------------------------------


class EmbeddingRequest(WireModel):
    """``POST /v1/embeddings``."""

    input: Annotated[str | list[str], WithJsonSchema(_TEXTS_SCHEMA)]
    model: str
    dimensions: int | None = Field(default=None, ge=1)
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None
    priority: Priority = None
    slo_ms: SloMs = None

    @field_validator("input")
    @classmethod
    def _non_empty(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise ValueError("input must not be empty")
        if any(not t for t in texts):
            raise ValueError("input must not contain empty strings")
        return value

    def texts(self) -> list[str]:
        """The inputs as a list."""
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbeddingData(BaseModel):
    """One embedding."""

    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str
    index: int


class EmbeddingResponse(BaseModel):
    """The answer to an embedding request."""

    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage = Field(default_factory=Usage)


# -- models ---------------------------------------------------------------------------------


class ModelCard(BaseModel):
    """One served model."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "sage"


class ModelList(BaseModel):
    """``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


# -- management -----------------------------------------------------------------------------


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

    @field_validator("instance_id")
    @classmethod
    def _addressable(cls, value: str | None) -> str | None:
        if value in (".", ".."):  # a URL path normalises these away: it could not be removed
            raise ValueError("instance_id must not be '.' or '..'")
        return value
