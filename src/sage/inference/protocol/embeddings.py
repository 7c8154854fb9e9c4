"""``POST /v1/embeddings``: the request and the answer."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    Field,
    WithJsonSchema,
    field_validator,
)

from sage.inference.protocol.base import ApiRequest, Usage

# What the validator below accepts, for the JSON schema (OpenAPI) of the requests.
_TEXTS_SCHEMA: dict[str, Any] = {
    "title": "Input",
    "description": "A non-empty text, or a non-empty list of non-empty texts.",
    "anyOf": [
        {"type": "string", "minLength": 1},
        {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
    ],
}


class EmbeddingRequest(ApiRequest):
    """``POST /v1/embeddings``."""

    endpoint: ClassVar[str] = "embeddings"

    input: Annotated[str | list[str], WithJsonSchema(_TEXTS_SCHEMA)]
    dimensions: int | None = Field(default=None, ge=1)
    encoding_format: Literal["float", "base64"] = "float"

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
