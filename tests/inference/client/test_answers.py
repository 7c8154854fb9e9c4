"""The client reads answers through the protocol's models: what another OpenAI-compatible
server adds is accepted, what is not an OpenAI answer is a clear error."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from sage.common.errors import GatewayError
from sage.inference.client.answers import answer_text, raise_for, stream_piece, vectors

URL = "http://127.0.0.1:9/v1/chat/completions"


def answer(body: Any, status: int = 200) -> httpx.Response:
    return httpx.Response(status, content=orjson.dumps(body), request=httpx.Request("POST", URL))


def test_a_chat_answer_with_fields_sage_does_not_send_is_read() -> None:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "system_fingerprint": "fp",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi", "refusal": None},
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2, "x": {}},
    }
    assert answer_text(answer(body), "chat") == "hi"


def test_streamed_events_give_their_text() -> None:
    chunk = {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": "pi"}}]}
    assert stream_piece("data: " + orjson.dumps(chunk).decode(), "chat", URL) == "pi"
    usage_only = {"id": "c", "model": "m", "choices": [], "usage": {"total_tokens": 3}}
    assert stream_piece("data: " + orjson.dumps(usage_only).decode(), "chat", URL) is None
    assert stream_piece("data: [DONE]", "chat", URL) is None
    assert stream_piece(": keep-alive", "chat", URL) is None
    event = {"id": "c", "model": "m", "choices": [{"text": "ce", "index": 0}]}
    assert stream_piece("data: " + orjson.dumps(event).decode(), "completion", URL) == "ce"


def test_something_else_is_an_error_naming_the_server_and_the_field() -> None:
    with pytest.raises(GatewayError, match=r"9/v1/chat.*ChatCompletionResponse \(choices"):
        answer_text(answer({"model": "m", "answer": "hi"}), "chat")


def test_embeddings_come_back_in_input_order() -> None:
    body = {
        "object": "list",
        "model": "e",
        "data": [
            {"object": "embedding", "index": 1, "embedding": [1.0]},
            {"object": "embedding", "index": 0, "embedding": [0.0]},
        ],
    }
    assert vectors(answer(body)) == [[0.0], [1.0]]


def test_an_error_answer_names_the_status_and_the_param() -> None:
    error = {"error": {"message": "bad", "type": "invalid_request_error", "param": "model"}}
    with pytest.raises(GatewayError) as err:
        raise_for(answer(error, status=404))
    assert (err.value.status, err.value.param) == (404, "model") and "bad" in str(err.value)
    with pytest.raises(GatewayError, match="502 from"):
        raise_for(httpx.Response(502, content=b"<html>", request=httpx.Request("GET", URL)))
