"""The wire format of the inference stack: pydantic models shared by the gateway, the engine
servers, the client, the OpenAPI document and the tests (one schema, one place).

One module per endpoint group, as vLLM lays out its protocol: :mod:`.chat`,
:mod:`.completions`, :mod:`.embeddings`, :mod:`.models`, :mod:`.management`, and
:mod:`.base` for what they share. Fields follow the order of the OpenAI API reference
(https://platform.openai.com/docs/api-reference); fields SAGE adds come last, each with a
description. A request model declares the fields SAGE's engines honour; any other field is
refused with a 400 naming it (code ``unsupported_parameter``; :mod:`.fields` lists the
OpenAI API's fields), never accepted and silently dropped. Errors are
:class:`ErrorResponse` objects with the offending ``param`` named.
"""

from sage.inference.protocol.base import (
    CLASS_HEADER,
    SCHEDULING_HEADERS,
    ApiRequest,
    ErrorDetail,
    ErrorResponse,
    FinishReason,
    LogitBias,
    Penalty,
    Priority,
    SamplingRequest,
    SchedulingFields,
    SloMs,
    StreamOptions,
    Usage,
    WireModel,
    error_from_validation,
    new_id,
    openai_error,
)
from sage.inference.protocol.chat import (
    AssistantMessage,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    Choice,
    ChunkChoice,
    DeltaMessage,
    TextPart,
)
from sage.inference.protocol.completions import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
)
from sage.inference.protocol.embeddings import EmbeddingData, EmbeddingRequest, EmbeddingResponse
from sage.inference.protocol.fields import OPENAI_FIELDS, unsupported
from sage.inference.protocol.management import (
    GatewayHealth,
    GatewayMetrics,
    InstanceAdded,
    InstanceList,
    InstanceRemoved,
    InstanceSpec,
    InstanceState,
    PolicyChange,
    PolicyName,
    PolicyState,
)
from sage.inference.protocol.models import ModelCard, ModelList

__all__ = [
    "CLASS_HEADER",
    "OPENAI_FIELDS",
    "SCHEDULING_HEADERS",
    "ApiRequest",
    "AssistantMessage",
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
    "GatewayHealth",
    "GatewayMetrics",
    "InstanceAdded",
    "InstanceList",
    "InstanceRemoved",
    "InstanceSpec",
    "InstanceState",
    "LogitBias",
    "ModelCard",
    "ModelList",
    "Penalty",
    "PolicyChange",
    "PolicyName",
    "PolicyState",
    "Priority",
    "SamplingRequest",
    "SchedulingFields",
    "SloMs",
    "StreamOptions",
    "TextPart",
    "Usage",
    "WireModel",
    "error_from_validation",
    "new_id",
    "openai_error",
    "unsupported",
]
