"""The llama.cpp engine serving the packaged SmolLM2 GGUF, through the official ``openai``
SDK: its prefix cache, log-probabilities, sampling fields, cancellation and a full KV cache."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from sage.common.errors import ConfigError
from sage.inference.deploy.stack import LocalStack
from sage.inference.engines.models import resolve_model

pytestmark = pytest.mark.slow

NO_END = {"0": -100, "2": -100, "4": -100}  # SmolLM2's end-of-generation tokens, banned


@pytest.fixture(scope="module")
def served() -> Iterator[LocalStack]:
    with LocalStack("smollm2", None, gateway_port=None) as stack:
        yield stack


@pytest.fixture(scope="module")
def client(served: LocalStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.llm_url, api_key="none", max_retries=0)


def _engine(stack: LocalStack) -> Any:
    return stack.llm_servers[0].engine


def test_it_is_the_default_cpu_engine_and_keeps_the_weights_quantised(served: LocalStack) -> None:
    engine = _engine(served)
    assert engine.engine_name == "llama.cpp"
    served = engine.model.path  # the package's Q4_1 file requantised once to Q8_0, cached
    assert served.name.endswith(".q8_0.gguf") and served.parent.name == "models"
    assert engine.model.size_bytes == served.stat().st_size < 160 * 2**20  # 143 MB, not 540


def test_a_shared_prefix_is_not_computed_again(client: openai.OpenAI) -> None:
    context = " ".join(f"Fact {i}: the value of item {i} is {i * 7}." for i in range(60))
    system = {"role": "system", "content": "Answer from these facts. " + context}
    first = client.chat.completions.create(
        model="smollm2",
        messages=[system, {"role": "user", "content": "What is item 3?"}],
        max_tokens=4,
        temperature=0,
    )
    second = client.chat.completions.create(
        model="smollm2",
        messages=[system, {"role": "user", "content": "What is item 12?"}],
        max_tokens=4,
        temperature=0,
    )
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens > 700
    details = second.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    # all of the system message, none of the new question
    assert first.usage.prompt_tokens - 20 < details.cached_tokens < second.usage.prompt_tokens


def test_logprobs_come_with_every_token(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Name three colors."}],
        max_tokens=10,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    choice = chat.choices[0]
    assert chat.usage is not None and choice.logprobs is not None and choice.logprobs.content
    tokens = choice.logprobs.content
    assert len(tokens) == chat.usage.completion_tokens
    assert "".join(t.token for t in tokens).startswith(choice.message.content or "?")
    for token in tokens:
        assert len(token.top_logprobs) == 3 and token.logprob <= 0
        assert token.top_logprobs[0].token == token.token  # greedy: the likeliest one
        assert token.top_logprobs[0].logprob >= token.top_logprobs[-1].logprob
    streamed = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Name three colors."}],
        max_tokens=10,
        temperature=0,
        logprobs=True,
        stream=True,
    )
    pieces = [
        t.token
        for c in streamed
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content or ()
    ]
    assert pieces == [t.token for t in tokens]
    completion = client.completions.create(
        model="smollm2", prompt="The capital of France is", max_tokens=4, temperature=0, logprobs=2
    )
    legacy = completion.choices[0].logprobs
    assert legacy is not None and legacy.tokens and legacy.top_logprobs
    assert len(legacy.tokens) == len(legacy.token_logprobs) == len(legacy.top_logprobs) == 4
    assert all(len(alternatives) == 2 for alternatives in legacy.top_logprobs)


def test_sampling_fields_are_honoured(client: openai.OpenAI) -> None:
    def ask(**fields: Any) -> str:
        answer = client.completions.create(
            model="smollm2", prompt="Once upon a time", max_tokens=16, **fields
        )
        return answer.choices[0].text

    greedy = ask(temperature=0)
    assert ask(temperature=1.5, extra_body={"top_k": 1}) == greedy  # one candidate: greedy
    assert ask(temperature=1.5, extra_body={"min_p": 1.0}) == greedy  # only the likeliest
    seeded = [ask(temperature=1.5, seed=11) for _ in range(2)]
    assert seeded[0] == seeded[1]
    assert len({ask(temperature=1.5, seed=s) for s in range(4)}) > 1


def test_a_client_that_leaves_frees_its_slot() -> None:
    """With one slot, a request after a client hung up mid-stream is answered at all only
    if the engine gave that slot back (it would otherwise wait for 2,000 tokens)."""
    with LocalStack("smollm2", None, gateway_port=None, max_batch=1) as stack:
        engine = _engine(stack)
        with httpx.Client(timeout=60) as http:
            body = {
                "model": "smollm2",
                "prompt": "Count:",
                "max_tokens": 2000,
                "stream": True,
                "logit_bias": NO_END,
            }
            with http.stream("POST", stack.llm_url + "/completions", json=body) as answer:
                for line in answer.iter_lines():
                    if line.startswith("data: {"):
                        break  # generating; now hang up
            steps = engine.steps
            after = http.post(
                stack.llm_url + "/completions",
                json={"model": "smollm2", "prompt": "Hi", "max_tokens": 2},
            )
        assert after.status_code == 200
        assert engine.steps - steps < 100  # the abandoned one did not run to its end


def test_each_slot_has_its_part_of_the_kv_cache() -> None:
    with LocalStack("smollm2", None, gateway_port=None, max_batch=2, kv_tokens=512) as stack:
        engine = _engine(stack)
        assert (engine.context_length, engine.kv_tokens) == (256, 512)
        body = {"model": "smollm2", "prompt": "Go:", "max_tokens": 300}
        refused = httpx.post(stack.llm_url + "/completions", json=body, timeout=60)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "max_tokens"
        body = {"model": "smollm2", "prompt": "Go:", "max_tokens": 240, "logit_bias": NO_END}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(
                pool.map(
                    lambda _: httpx.post(stack.llm_url + "/completions", json=body, timeout=120),
                    range(2),
                )
            )
        assert [a.json()["usage"]["completion_tokens"] for a in answers] == [240, 240]


def test_a_schema_that_cannot_be_enforced_is_refused_by_name(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Hi"}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
            },
        )
    assert "response_format" in str(refused.value) and "nonsense" in str(refused.value)
    answer = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert answer.choices[0].message.content is not None  # the engine goes on


def test_gguf_files_by_path_and_in_the_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundled = resolve_model("smollm2", "llm")
    assert bundled.gguf_file is not None
    path = bundled.path / bundled.gguf_file
    by_path = resolve_model(str(path), "llm")
    assert (by_path.path, by_path.gguf_file) == (bundled.path, bundled.gguf_file)
    snapshot = tmp_path / "hub" / "models--org--Tiny-GGUF" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    for name in ("tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf"):
        (snapshot / name).write_bytes(b"GGUF")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    chosen = resolve_model("org/Tiny-GGUF:q8_0", "llm")
    assert (chosen.path, chosen.gguf_file) == (snapshot, "tiny-Q8_0.gguf")
    with pytest.raises(ConfigError, match=r"several GGUF files.*Q4_K_M"):
        resolve_model("org/Tiny-GGUF", "llm")
