"""Reading the answers of an OpenAI-compatible server through the protocol's models: a
chat or completion answer, one event of a streamed one, embeddings, an error."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel, ValidationError

from sage.common.errors import GatewayError
from sage.inference.protocol import (
    ChatCompletionChunk,
    ChatCompletionResponse,
    CompletionResponse,
    EmbeddingResponse,
    ErrorResponse,
)

__all__ = ["answer_text", "raise_for", "stream_piece", "vectors"]


def _parse(model: type[BaseModel], content: bytes | str, where: str) -> Any:
    try:
        return model.model_validate_json(content)
    except ValidationError as exc:
        problem = exc.errors()[0]
        field = ".".join(str(p) for p in problem.get("loc", ())) or "the answer"
        raise GatewayError(
            f"{where} answered with something that is not an OpenAI {model.__name__} "
            f"({field}: {problem.get('msg')}); is it an OpenAI-compatible server?"
        ) from None


def raise_for(response: httpx.Response) -> None:
    """Raise a :class:`GatewayError` for an error answer (with the ``param`` it names)."""
    if response.status_code < 400:
        return
    try:
        error = ErrorResponse.model_validate_json(response.content).error
        message, param = error.message, error.param
    except ValidationError:
        message, param = response.text, None
    raise GatewayError(
        f"{response.status_code} from {response.url}: {message}", response.status_code, param
    )


def answer_text(response: httpx.Response, kind: str) -> str:
    """The text of a non-streamed ``chat`` or ``completion`` answer."""
    raise_for(response)
    where = str(response.url)
    if kind == "chat":
        chat: ChatCompletionResponse = _parse(ChatCompletionResponse, response.content, where)
        return chat.choices[0].message.text() if chat.choices else ""
    completion: CompletionResponse = _parse(CompletionResponse, response.content, where)
    return completion.choices[0].text if completion.choices else ""


def stream_piece(line: str, kind: str, where: str) -> str | None:
    """The text one server-sent event line of a streamed answer carries (``None``: none)."""
    if not line.startswith("data: ") or line == "data: [DONE]":
        return None
    if kind == "chat":
        chunk: ChatCompletionChunk = _parse(ChatCompletionChunk, line[6:], where)
        piece = chunk.choices[0].delta.content if chunk.choices else None
    else:
        event: CompletionResponse = _parse(CompletionResponse, line[6:], where)
        piece = event.choices[0].text if event.choices else None
    return piece or None


def vectors(response: httpx.Response) -> list[list[float]]:
    """The embeddings of an ``/embeddings`` answer, in input order."""
    raise_for(response)
    answer: EmbeddingResponse = _parse(EmbeddingResponse, response.content, str(response.url))
    ordered = sorted(answer.data, key=lambda d: d.index)
    if any(isinstance(d.embedding, str) for d in ordered):
        raise GatewayError(
            f"{response.url} answered with base64 embeddings although floats were asked for"
        )
    return [list(d.embedding) for d in ordered]  # type: ignore[arg-type]
