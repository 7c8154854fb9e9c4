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

    def token_limit(self, default: int) -> int:
        """``max_completion_tokens``, else ``max_tokens``, else ``default``."""
        return self.max_completion_tokens or self.max_tokens or default


class AssistantMessage(BaseModel):
    """The message of an answer (what a server sends; read leniently: other servers add
    fields such as ``refusal`` or ``tool_calls``)."""

    role: str = "assistant"
    content: str | None = None

    def text(self) -> str:
        """The answer's text."""
        return self.content or ""


class DeltaMessage(BaseModel):
    """The increment of a streamed message."""

    role: str | None = None
    content: str | None = None


class Choice(BaseModel):
    """One completed chat choice."""

    index: int = 0
    message: AssistantMessage
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
