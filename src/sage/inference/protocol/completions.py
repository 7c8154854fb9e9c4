"""``POST /v1/completions``: the request and the answer (also each streamed event)."""

from __future__ import annotations

import time
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    Field,
    WithJsonSchema,
)

from sage.inference.protocol.base import (
    FinishReason,
    SamplingRequest,
    Usage,
    new_id,
)

# What the validators below accept, for the JSON schema (OpenAPI) of the requests.
_ONE_PROMPT_SCHEMA: dict[str, Any] = {
    "title": "Prompt",
    "description": "The prompt, or a list holding exactly one prompt.",
    "anyOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
    ],
}


class CompletionRequest(SamplingRequest):
    """``POST /v1/completions`` (one prompt string per request): the fields SAGE's engines
    honour (any other OpenAI field is refused, see :mod:`.fields`)."""

    endpoint: ClassVar[str] = "completions"

    prompt: Annotated[str | list[str], WithJsonSchema(_ONE_PROMPT_SCHEMA)]
    best_of: int = Field(default=1, ge=1, le=1, description="Only 1 is supported.")
    echo: bool = Field(default=False, description="Answer with the prompt before the completion.")
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(
        default=None,
        strict=True,
        ge=0,
        le=5,
        description="Return each answer token's log-probability and this many likeliest "
        "alternatives.",
    )

    def prompt_text(self) -> str:
        """The prompt (a one-element list is accepted)."""
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ValueError("prompt: one prompt per request is supported")
        return self.prompt[0]


class CompletionLogprobs(BaseModel):
    """A completion choice's ``logprobs`` (the legacy shape: parallel lists per token)."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float] = Field(default_factory=list)
    top_logprobs: list[dict[str, float]] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    """One completed text choice."""

    text: str
    index: int = 0
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = "stop"


class CompletionResponse(BaseModel):
    """The answer to a completion request (also each streamed event)."""

    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = Field(default_factory=Usage)
