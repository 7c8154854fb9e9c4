"""``POST /v1/chat/completions``: the request, the answer, and a streamed answer's events."""

from __future__ import annotations

import time
from typing import ClassVar, Literal

from pydantic import (
    BaseModel,
    Field,
)

from sage.inference.protocol.base import (
    FinishReason,
    SamplingRequest,
    Usage,
    WireModel,
    new_id,
)
from sage.inference.protocol.tools import (
    ResponseFormat,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
)


class TextPart(WireModel):
    """A part of a message's content: SAGE's engines read text (an image or audio part is
    refused, not skipped)."""

    type: Literal["text"]
    text: str


class ChatMessage(WireModel):
    """One message of a conversation, as a request carries it."""

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(
        default=None, description="An assistant message's calls (the conversation so far)."
    )
    tool_call_id: str | None = Field(
        default=None, description="A tool message's answer is to this call."
    )

    def text(self) -> str:
        """The text of the message (its parts joined, for content given as parts)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingRequest):
    """``POST /v1/chat/completions``: the fields SAGE's engines honour (any other OpenAI
    field is refused, see :mod:`.fields`)."""

    endpoint: ClassVar[str] = "chat"

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = Field(
        default=None, strict=True, description="Return each answer token's log-probability."
    )
    top_logprobs: int | None = Field(
        default=None,
        strict=True,
        ge=0,
        le=20,
        description="With logprobs: this many likeliest alternatives.",
    )

    response_format: ResponseFormat | None = Field(
        default=None, description="text, json_object, or json_schema (grammar-constrained)."
    )
    tools: list[Tool] | None = Field(default=None, description="Functions the model may call.")
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None

    def logprobs_asked(self) -> int | None:
        """Alternatives per token when log-probabilities are asked for, else ``None``."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def token_limit(self, default: int) -> int:
        """``max_completion_tokens``, else ``max_tokens``, else ``default``."""
        return self.max_completion_tokens or self.max_tokens or default


class AssistantMessage(BaseModel):
    """The message of an answer (what a server sends; read leniently: other servers add
    fields such as ``refusal`` or ``tool_calls``)."""

    role: str = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None

    def text(self) -> str:
        """The answer's text."""
        return self.content or ""


class DeltaMessage(BaseModel):
    """The increment of a streamed message."""

    role: str | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class TopLogprob(BaseModel):
    """A likely token at one place of the answer."""

    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    """One answer token, its log-probability, and the likeliest alternatives there."""

    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    """A chat choice's ``logprobs``: one entry per answer token."""

    content: list[TokenLogprob] | None = None


class Choice(BaseModel):
    """One completed chat choice."""

    index: int = 0
    message: AssistantMessage
    finish_reason: FinishReason | None = "stop"
    logprobs: ChoiceLogprobs | None = None


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
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed chat answer."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
