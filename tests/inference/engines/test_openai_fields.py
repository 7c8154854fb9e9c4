"""Every request field of the OpenAI chat, completions and embeddings APIs, on every engine
SAGE serves: honoured (the answer shows it), or refused with a 400 naming it
(``unsupported_parameter``); never accepted and silently dropped."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sage.inference.deploy.stack import LocalStack
from sage.inference.protocol import (
    OPENAI_FIELDS,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)
from sage.inference.protocol.fields import ENGINE_OPTIONAL, INERT

# A value for every OpenAI field that is not its default, nor a value that asks for nothing
# more (fields.INERT), so an engine that ignored it would answer as if it were absent.
SAMPLES: dict[str, Any] = {
    "audio": {"voice": "alloy", "format": "wav"},
    "best_of": 1,
    "dimensions": 8,
    "echo": True,
    "encoding_format": "base64",
    "frequency_penalty": 1.5,
    "function_call": "auto",
    "functions": [{"name": "f", "parameters": {"type": "object"}}],
    "logit_bias": {"42": -100},
    "logprobs": True,
    "max_completion_tokens": 3,
    "max_tokens": 3,
    "metadata": {"k": "v"},
    "modalities": ["text", "audio"],
    "n": 1,
    "parallel_tool_calls": False,
    "prediction": {"type": "content", "content": "x"},
    "presence_penalty": 1.0,
    "prompt_cache_key": "k",
    "reasoning_effort": "low",
    "response_format": {"type": "json_object"},
    "safety_identifier": "u",
    "seed": 7,
    "service_tier": "auto",
    "stop": ["\n"],
    "store": True,
    "stream": True,
    "stream_options": {"include_usage": True},
    "suffix": "!",
    "temperature": 0.5,
    "tool_choice": "auto",
    "tools": [{"type": "function", "function": {"name": "f"}}],
    "top_logprobs": 2,
    "top_p": 0.5,
    "user": "someone",
    "verbosity": "low",
    "web_search_options": {},
}
# where an endpoint's field takes another type (completions' logprobs counts alternatives)
SAMPLES_OF: dict[tuple[str, str], Any] = {("completions", "logprobs"): 2}
BASE: dict[str, dict[str, Any]] = {
    "chat": {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3},
    "completions": {"prompt": "Hello", "max_tokens": 3},
    "embeddings": {"input": ["hello"]},
}
PATHS = {"chat": "/chat/completions", "completions": "/completions", "embeddings": "/embeddings"}
DECLARED = {
    "chat": set(ChatCompletionRequest.model_fields),
    "completions": set(CompletionRequest.model_fields),
    "embeddings": set(EmbeddingRequest.model_fields),
}
ENGINES = ("stub", "simulated", "cpu", "transformers")


class Engines:
    """One engine server per engine kind, each reached directly (not through a gateway)."""

    def __init__(self, stacks: dict[str, LocalStack]) -> None:
        self.stacks = stacks

    def url(self, engine: str, endpoint: str) -> str:
        stack = self.stacks[engine]
        port = stack.embedding_port if endpoint == "embeddings" else stack.llm_ports[0]
        return f"http://127.0.0.1:{port}/v1{PATHS[endpoint]}"

    def model(self, engine: str, endpoint: str) -> str:
        stack = self.stacks[engine]
        server = stack.embedding_server if endpoint == "embeddings" else stack.llm_servers[0]
        assert server is not None
        return str(server.engine.model_name)

    def honoured(self, engine: str, endpoint: str) -> set[str]:
        """The fields the engine serving ``endpoint`` implements."""
        stack = self.stacks[engine]
        server = stack.embedding_server if endpoint == "embeddings" else stack.llm_servers[0]
        assert server is not None
        honours = getattr(server.engine, "honours", frozenset())
        return DECLARED[endpoint] - (ENGINE_OPTIONAL[endpoint] - honours)


@pytest.fixture(scope="module")
def engines() -> Iterator[Engines]:
    stacks = {
        "stub": LocalStack("stub-llm", "stub-emb", engine="stub", gateway_port=None),
        "simulated": LocalStack("sim-llm", "sim-emb", engine="simulated", gateway_port=None),
        "cpu": LocalStack("smollm2", "all-minilm-l6-v2", gateway_port=None),  # llama.cpp
        "transformers": LocalStack(
            "smollm2", "all-minilm-l6-v2", engine="transformers", gateway_port=None
        ),
    }
    for stack in stacks.values():
        stack.start()
    try:
        yield Engines(stacks)
    finally:
        for stack in stacks.values():
            stack.stop()


def _send(url: str, body: dict[str, Any]) -> httpx.Response:
    with httpx.Client(timeout=120) as client:
        if body.get("stream"):
            with client.stream("POST", url, json=body) as answer:
                answer.read()
                return answer
        return client.post(url, json=body)


CASES = [
    (engine, endpoint, name)
    for engine in ENGINES
    for endpoint, names in OPENAI_FIELDS.items()
    for name in sorted(names - {"model", "messages", "prompt", "input"})
]


@pytest.mark.slow
@pytest.mark.parametrize(("engine", "endpoint", "name"), CASES)
def test_every_openai_field_is_honoured_or_refused_by_name(
    engines: Engines, engine: str, endpoint: str, name: str
) -> None:
    sample = SAMPLES_OF.get((endpoint, name), SAMPLES[name])
    body = {**BASE[endpoint], "model": engines.model(engine, endpoint), name: sample}
    answer = _send(engines.url(engine, endpoint), body)
    if name in engines.honoured(engine, endpoint):
        assert answer.status_code == 200, answer.text
    else:
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert (error["param"], error["code"]) == (name, "unsupported_parameter")
        assert "not implemented by" in error["message"] or "do not implement" in error["message"]


INERT_CASES = [
    (engine, endpoint, name)
    for engine in ENGINES
    for endpoint, fields in INERT.items()
    for name in sorted(fields)
]
# what vllm-router 0.1.17 sends an engine for {"model", "messages"/"prompt", "max_tokens": 3}
ROUTED = {
    "chat": {
        "stream": False,
        "logprobs": False,
        "no_stop_trim": False,
        "ignore_eos": False,
        "continue_final_message": False,
        "skip_special_tokens": True,
        "separate_reasoning": True,
        "stream_reasoning": True,
        "return_hidden_states": False,
        "include_reasoning": True,
    },
    "completions": {
        "stream": False,
        "echo": False,
        "no_stop_trim": False,
        "ignore_eos": False,
        "skip_special_tokens": True,
        "return_hidden_states": False,
    },
}


@pytest.mark.slow
@pytest.mark.parametrize(("engine", "endpoint", "name"), INERT_CASES)
def test_a_field_that_asks_for_nothing_more_is_answered_and_any_other_value_refused(
    engines: Engines, engine: str, endpoint: str, name: str
) -> None:
    url, model = engines.url(engine, endpoint), engines.model(engine, endpoint)
    plain = _send(url, {**BASE[endpoint], "model": model, "temperature": 0})
    for value in (None, *INERT[endpoint][name]):
        body = {**BASE[endpoint], "model": model, "temperature": 0, name: value}
        answer = _send(url, body)
        assert answer.status_code == 200, (name, value, answer.text)
        if engine != "simulated":  # the others answer a greedy request the same every time
            assert _text(answer, endpoint) == _text(plain, endpoint), (name, value)
    for other in ("yes", 1, {"type": "other"}):  # a value that asks for more (or another type)
        answer = _send(url, {**BASE[endpoint], "model": model, name: other})
        if name in engines.honoured(engine, endpoint) and answer.status_code == 200:
            continue  # the engine implements the field, and this value is a valid one
        assert answer.status_code == 400, (name, other)
        assert answer.json()["error"]["param"].split(".")[0] == name  # or a part of it


@pytest.mark.slow
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_what_vllm_router_forwards_is_answered(engines: Engines, endpoint: str) -> None:
    for engine in ("stub", "cpu", "transformers"):
        body = {**BASE[endpoint], "model": engines.model(engine, endpoint), **ROUTED[endpoint]}
        answer = _send(engines.url(engine, endpoint), body)
        assert answer.status_code == 200, answer.text


@pytest.mark.slow
@pytest.mark.parametrize("endpoint", ["chat", "completions", "embeddings"])
def test_a_field_of_no_openai_api_is_refused(engines: Engines, endpoint: str) -> None:
    body = {**BASE[endpoint], "model": engines.model("stub", endpoint), "frequency_penality": 1}
    answer = _send(engines.url("stub", endpoint), body)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["param"], error["code"]) == ("frequency_penality", "unsupported_parameter")
    assert "not a parameter of the OpenAI" in error["message"]


@pytest.mark.slow
def test_image_content_is_refused_not_skipped(engines: Engines) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    body = {
        "model": "stub-llm",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "What?"}, image]}],
    }
    answer = _send(engines.url("stub", "chat"), body)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"].startswith("messages.0.content")


# -- what the CPU engine does with the fields it honours -----------------------------------------


def _text(answer: httpx.Response, endpoint: str) -> str:
    assert answer.status_code == 200, answer.text
    choice = answer.json()["choices"][0]
    return str(choice["message"]["content"] if endpoint == "chat" else choice["text"])


def _first_token(engine: Any, text: str) -> tuple[int, str]:
    """The first token of ``text`` on ``engine``'s vocabulary, and its text."""
    if engine.engine_name == "llama.cpp":
        token = engine.model.tokenize(text, add_special=False)[0]
        return token, engine.model.piece(token).decode()
    token = engine.tokenizer.encode(text, add_special_tokens=False)[0]
    return token, engine.tokenizer.decode([token])


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["cpu", "transformers"])
def test_the_cpu_engines_honour_logit_bias_penalties_echo_and_usage(
    engines: Engines, engine: str
) -> None:
    url = engines.url(engine, "completions")
    base = {"model": "smollm2", "prompt": "One, two, three, one, two,", "max_tokens": 12}
    greedy = _text(_send(url, {**base, "temperature": 0}), "completions")
    forced, piece = _first_token(engines.stacks[engine].llm_servers[0].engine, " banana")
    biased = _text(
        _send(url, {**base, "temperature": 0, "logit_bias": {str(forced): 100}}), "completions"
    )
    assert biased.startswith(piece * 3)
    penalised = _text(
        _send(url, {**base, "temperature": 0, "frequency_penalty": 2.0, "presence_penalty": 2.0}),
        "completions",
    )
    assert penalised != greedy  # the repeated numbers are pushed down
    echoed = _text(_send(url, {**base, "temperature": 0, "echo": True}), "completions")
    assert echoed == base["prompt"] + greedy
    streamed = _send(
        url, {**base, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 3}
    )
    assert '"usage":{"prompt_tokens"' in streamed.text.replace(" ", "")
    too_far = _send(url, {**base, "logit_bias": {"999999": 1}})
    assert too_far.status_code == 400 and too_far.json()["error"]["param"] == "logit_bias"
