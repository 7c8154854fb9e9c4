"""The wire format of the inference stack: pydantic models shared by the gateway, the engine
servers, the client, the OpenAPI document and the tests (one schema, one place).

One module per endpoint group, as vLLM lays out its protocol: :mod:`.chat`,
:mod:`.completions`, :mod:`.embeddings`, :mod:`.models`, :mod:`.management`, and
:mod:`.base` for what they share. Fields follow the order of the OpenAI API reference
(https://platform.openai.com/docs/api-reference); fields SAGE adds come last, each with a
description. Unknown request fields are accepted and logged (as vLLM does), so newer SDKs
keep working. Errors are :class:`ErrorResponse` objects with the offending ``param`` named.
"""

from sage.inference.protocol.base import (
    CLASS_HEADER,
    SCHEDULING_HEADERS,
    ErrorDetail,
    ErrorResponse,
    FinishReason,
    Priority,
    SchedulingFields,
    SloMs,
    Usage,
    WireModel,
    error_from_validation,
    new_id,
    openai_error,
)
from sage.inference.protocol.chat import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    Choice,
    ChunkChoice,
    DeltaMessage,
)
from sage.inference.protocol.completions import (
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
)
from sage.inference.protocol.embeddings import EmbeddingData, EmbeddingRequest, EmbeddingResponse
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
    "GatewayHealth",
    "GatewayMetrics",
    "InstanceAdded",
    "InstanceList",
    "InstanceRemoved",
    "InstanceSpec",
    "InstanceState",
    "ModelCard",
    "ModelList",
    "PolicyChange",
    "PolicyName",
    "PolicyState",
    "Priority",
    "SchedulingFields",
    "SloMs",
    "Usage",
    "WireModel",
    "error_from_validation",
    "new_id",
    "openai_error",
]
