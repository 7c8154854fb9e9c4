"""Structured outputs and tool calls with the official ``openai`` SDK against ``sage llm
serve`` (the llama.cpp engine behind the gateway): every answer parses and validates,
because the engine samples under the schema's grammar."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import openai
import pytest
from pydantic import BaseModel

from sage.common.config.ports import SagePorts

pytestmark = pytest.mark.slow

SAGE = [sys.executable, "-m", "sage.cli.main", "llm"]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    home = tmp_path_factory.mktemp("sage-home")
    env = {**os.environ, "SAGE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    llm, gateway = SagePorts.any_free_port(), SagePorts.any_free_port()
    served = subprocess.run(
        [*SAGE, "serve", "--no-embedding", "--port", str(llm), "--gateway-port", str(gateway)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert served.returncode == 0, served.stdout + served.stderr
    try:
        yield openai.OpenAI(
            base_url=f"http://127.0.0.1:{gateway}/v1", api_key="none", max_retries=0
        )
    finally:
        subprocess.run([*SAGE, "stop"], env=env, capture_output=True, timeout=120)


NAME = {"type": "string", "minLength": 1, "maxLength": 24}
SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "properties": {"city": NAME, "population": {"type": "integer", "minimum": 0}},
        "required": ["city", "population"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "title": NAME,
            "tags": {"type": "array", "items": NAME, "minItems": 1, "maxItems": 3},
        },
        "required": ["title", "tags"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "answer": {"type": "string", "enum": ["yes", "no", "unsure"]},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["answer", "confidence"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "person": {
                "type": "object",
                "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0}},
                "required": ["name", "age"],
                "additionalProperties": False,
            },
            "active": {"type": "boolean"},
        },
        "required": ["person", "active"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "steps": {"type": "array", "items": NAME, "minItems": 2, "maxItems": 4},
            "done": {"type": "boolean"},
            "note": {"anyOf": [NAME, {"type": "null"}]},
        },
        "required": ["steps", "done", "note"],
        "additionalProperties": False,
    },
]
TOPICS = ["Paris", "a recipe", "the weather", "a new employee", "moving house"]


def test_json_schema_answers_always_validate(client: openai.OpenAI) -> None:
    def ask(case: tuple[int, int]) -> tuple[dict[str, Any], str | None, str | None]:
        s, i = case
        answer = client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": f"Describe {TOPICS[i % 5]} as JSON."}],
            max_tokens=200,
            temperature=0.8,
            seed=i,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": f"s{s}", "schema": SCHEMAS[s], "strict": True},
            },
        )
        choice = answer.choices[0]
        return SCHEMAS[s], choice.message.content, choice.finish_reason

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, [(s, i) for s in range(5) for i in range(20)]))
    assert len(answers) == 100
    for schema, content, finish in answers:
        assert finish == "stop" and content is not None, content
        jsonschema.validate(json.loads(content), schema)


def test_json_object_and_the_sdks_parse_helper(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(
        model="smollm2",
        messages=[
            {"role": "user", "content": "Give a JSON object with the name and age of a cat."}
        ],
        max_tokens=120,
        temperature=0,
        response_format={"type": "json_object"},
    )
    # any JSON object: its strings and arrays have no bounds, so a question that invites a
    # short one (a small model may fill a long one until max_tokens cuts it off)
    assert isinstance(json.loads(plain.choices[0].message.content or ""), dict)

    class City(BaseModel):
        city: str
        population: int

    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    parsed = parse(
        model="smollm2",
        messages=[{"role": "user", "content": "The largest city of France?"}],
        response_format=City,
        max_tokens=120,
        temperature=0,
    )
    assert isinstance(parsed.choices[0].message.parsed, City)


TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city now.",
            "parameters": {
                "type": "object",
                "properties": {"city": NAME, "unit": {"type": "string", "enum": ["c", "f"]}},
                "required": ["city", "unit"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
                "additionalProperties": False,
            },
        },
    },
]
PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
QUESTION = [{"role": "user", "content": "What is the weather in Paris, and what is 2 + 3?"}]


def _check(calls: list[tuple[str, str]], only: str | None = None) -> None:
    assert calls
    for name, arguments in calls:
        assert only is None or name == only
        jsonschema.validate(json.loads(arguments), PARAMETERS[name])


@pytest.mark.parametrize("choice", ["required", "get_weather", "add"])
def test_a_required_or_named_call_validates_whole_and_streamed(
    client: openai.OpenAI, choice: str
) -> None:
    tool_choice: Any = (
        choice if choice == "required" else {"type": "function", "function": {"name": choice}}
    )
    only = None if choice == "required" else choice
    for seed in range(3):
        asked: dict[str, Any] = {
            "model": "smollm2",
            "messages": QUESTION,
            "tools": TOOLS,
            "tool_choice": tool_choice,
            "max_tokens": 120,
            "temperature": 0.7,
            "seed": seed,
        }
        answer = client.chat.completions.create(**asked)
        message = answer.choices[0].message
        assert answer.choices[0].finish_reason == "tool_calls" and message.tool_calls
        _check([(c.function.name, c.function.arguments) for c in message.tool_calls], only)  # type: ignore[union-attr]
        stream = client.chat.completions.create(**asked, stream=True)
        calls: dict[int, list[str]] = {}
        finish = None
        for chunk in stream:
            if not chunk.choices:
                continue
            for delta in chunk.choices[0].delta.tool_calls or ():
                entry = calls.setdefault(delta.index, ["", ""])
                assert delta.function is not None
                entry[0] += delta.function.name or ""
                entry[1] += delta.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        assert finish == "tool_calls"
        _check([(name, arguments) for name, arguments in calls.values()], only)


def test_a_tool_result_goes_back_into_the_conversation(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model="smollm2",
        messages=QUESTION,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=120,
        temperature=0,
    )
    call = (first.choices[0].message.tool_calls or [])[0]
    follow_up = client.chat.completions.create(
        model="smollm2",
        messages=[
            *QUESTION,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"},
        ],
        tools=TOOLS,  # type: ignore[arg-type]
        max_tokens=40,
        temperature=0,
    )
    choice = follow_up.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert choice.message.content or choice.message.tool_calls
    usage = follow_up.usage
    assert usage is not None and usage.prompt_tokens > (
        first.usage.prompt_tokens if first.usage else 0
    )


def test_a_call_of_an_unknown_function_is_refused_by_name(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="smollm2",
            messages=QUESTION,  # type: ignore[arg-type]
            tools=TOOLS,  # type: ignore[arg-type]
            tool_choice={"type": "function", "function": {"name": "send_email"}},
        )
    assert "send_email" in str(refused.value) and "tool_choice" in str(refused.value)


def test_a_field_no_engine_honours_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="smollm2",
            messages=QUESTION,  # type: ignore[arg-type]
            audio={"voice": "alloy", "format": "wav"},
            modalities=["text", "audio"],
        )
    assert (refused.value.code, refused.value.param) == ("unsupported_parameter", "audio")


def test_logprobs_with_three_alternatives_for_every_token(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model="smollm2",
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    choice = answer.choices[0]
    assert answer.usage is not None and choice.logprobs and choice.logprobs.content
    assert len(choice.logprobs.content) == answer.usage.completion_tokens
    assert all(len(token.top_logprobs) == 3 for token in choice.logprobs.content)
