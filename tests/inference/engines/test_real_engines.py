"""The CPU engines with the real packaged models, served and used through every client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from metric_names import histogram_count, shaped
from sage.common.core.functions.map_function import MapFunction
from sage.common.errors import ConfigError
from sage.inference import (
    UnifiedInferenceClient,
)
from sage.inference.client.embedding import EmbeddingClientAdapter, EmbeddingFactory
from sage.inference.deploy.stack import LocalStack
from sage.inference.engines.base import Delta, SamplingParams
from sage.inference.engines.factory import build_engine
from sage.kernel.api.local_environment import LocalEnvironment
from sage.middleware.services.llm import LLMService

pytestmark = pytest.mark.slow


class RealStack(LocalStack):
    """SmolLM2 and MiniLM engine servers behind a gateway, with the engines at hand."""

    def __init__(self) -> None:
        super().__init__("smollm2", "all-minilm-l6-v2")
        self.start()
        assert self.embedding_server is not None and self.embedding_port is not None
        self.llm_engine: Any = self.llm_servers[0].engine
        self.llm_port, self.emb_port = self.llm_ports[0], self.embedding_port


@pytest.fixture(scope="module")
def stack() -> Iterator[RealStack]:
    with RealStack() as s:
        yield s


QUESTION = [{"role": "user", "content": "What is a Python list? Answer in one sentence."}]


def test_openai_sdk_against_the_real_engines_and_the_gateway(stack: RealStack) -> None:
    for port in (stack.port, stack.llm_port):
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0
        )
        chat = client.chat.completions.create(
            model="smollm2", messages=QUESTION, max_tokens=24, temperature=0
        )
        text = chat.choices[0].message.content or ""
        assert "list" in text.lower() and chat.usage is not None
        assert chat.usage.prompt_tokens > 10 and 0 < chat.usage.completion_tokens <= 24
        streamed = client.chat.completions.create(
            model="smollm2", messages=QUESTION, max_tokens=24, temperature=0, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == text
        completion = client.completions.create(
            model="smollm2", prompt="The capital of France is", max_tokens=8, temperature=0
        )
        assert "Paris" in completion.choices[0].text
        assert "smollm2" in [m.id for m in client.models.list()]
    for port in (stack.port, stack.emb_port):
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0
        )
        data = client.embeddings.create(
            model="all-minilm-l6-v2", input=["a cat sat", "a kitten sat", "stock prices"]
        ).data
        cat, kitten, stocks = (np.array(d.embedding) for d in data)
        assert len(cat) == 384 and abs(np.linalg.norm(cat) - 1) < 1e-4
        assert cat @ kitten > cat @ stocks + 0.2  # real semantics, not hashing


RHYMES = [
    f"Give one word that rhymes with {w}."
    for w in ("cat", "sun", "tree", "blue", "cold", "rain", "star", "moon")
]


async def _alone_and_together(
    engine: Any, params: SamplingParams
) -> tuple[list[list[Delta]], list[list[Delta]]]:
    async def ask(q: str) -> list[Delta]:
        return [d async for d in engine.generate(params, messages=[{"role": "user", "content": q}])]

    alone = [await ask(q) for q in RHYMES]
    together = list(await asyncio.gather(*(ask(q) for q in RHYMES)))
    return alone, together


def _text(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


def test_llama_cpp_batches_concurrent_requests_without_cross_talk(stack: RealStack) -> None:
    """Eight prompts of different lengths decode together, each continuing only its own
    sequence. (llama.cpp's kernels are not batch-invariant, as vLLM's are not: a row's
    place in a batch moves its log-probabilities by up to about 0.2 on this Q4_1 model,
    which may flip a near tie; so the check is on continuations the model is sure of.)"""
    engine = stack.llm_engine
    assert engine.engine_name == "llama.cpp"
    words = ["cat", "sun", "tree", "blue", "cold", "rain", "star", "moon"]
    params = SamplingParams(max_tokens=8, temperature=0.0)

    async def continue_(word: str, times: int) -> str:
        prompt = ", ".join([word] * times) + ","
        return "".join([d.text async for d in engine.generate(params, prompt=prompt)])

    async def together() -> list[str]:
        return list(await asyncio.gather(*(continue_(w, 12 + 2 * i) for i, w in enumerate(words))))

    steps_before = engine.steps
    answers = stack.call(together(), timeout=300)
    for word, answer in zip(words, answers, strict=True):
        assert answer.split(",")[:4] == [f" {word}"] * 4, (word, answer)
    assert engine.steps - steps_before < 0.5 * 8 * 8  # they shared their decoding steps


def test_the_transformers_engine_answers_in_a_batch_as_if_alone() -> None:
    """The transformers engine (Hugging Face checkpoints) is batch-invariant: left-padded
    rows with explicit positions reproduce single-sequence greedy output exactly."""
    engine: Any = build_engine("llm", "smollm2", "transformers", max_batch=8)
    params = SamplingParams(max_tokens=12, temperature=0.0)

    async def run() -> tuple[list[list[Delta]], list[list[Delta]], int]:
        await engine.start()
        try:
            before = engine.steps
            alone, together = await _alone_and_together(engine, params)
            return alone, together, engine.steps - before
        finally:
            await engine.stop()

    alone, together, steps = asyncio.run(run())
    assert [_text(d) for d in together] == [_text(d) for d in alone]
    assert steps < 8 * 12 + 0.5 * 8 * 12  # the 8 batched sequences shared their steps


def test_stop_strings_and_context_limit(stack: RealStack) -> None:
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{stack.port}/v1", api_key="none", max_retries=0
    )
    counted = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Count from 1 to 10 separated by commas."}],
        max_tokens=40,
        temperature=0,
        stop=["5"],
    )
    assert "5" not in (counted.choices[0].message.content or "")
    assert counted.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=9000)
    assert "context" in str(info.value)


def test_the_real_engine_counts_its_tokens_and_times_them(stack: RealStack) -> None:
    url = f"http://127.0.0.1:{stack.llm_port}"

    def scrape() -> dict[str, Any]:
        return shaped(httpx.get(url + "/metrics").text)

    def total(families: dict[str, Any], name: str) -> float:
        return sum(s.value for s in families[name].samples)

    before = scrape()
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    chat = client.chat.completions.create(
        model="smollm2", messages=QUESTION, max_tokens=12, temperature=0
    )
    assert chat.usage is not None and chat.usage.completion_tokens > 1
    after = scrape()
    generated = total(after, "sage_engine_generation_tokens") - total(
        before, "sage_engine_generation_tokens"
    )
    prompt = total(after, "sage_engine_prompt_tokens") - total(before, "sage_engine_prompt_tokens")
    assert (prompt, generated) == (chat.usage.prompt_tokens, chat.usage.completion_tokens)
    per_token = "sage_engine_time_per_output_token_seconds"
    assert histogram_count(after[per_token]) == histogram_count(before[per_token]) + 1
    # a real model's first tokens take real time, less than the whole requests took

    def seconds(name: str) -> float:
        return sum(s.value for s in after[name].samples if s.name.endswith("_sum"))

    first = seconds("sage_engine_time_to_first_token_seconds")
    assert 0 < first < seconds("sage_engine_request_duration_seconds")


def test_unified_client_in_all_three_modes(
    stack: RealStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    via_gateway = UnifiedInferenceClient.create(
        control_plane_url=f"http://127.0.0.1:{stack.port}/v1"
    )
    assert (via_gateway.mode, via_gateway.llm_model, via_gateway.embedding_model) == (
        "control_plane",
        "smollm2",
        "all-minilm-l6-v2",
    )
    answer = via_gateway.chat(QUESTION, max_tokens=16, temperature=0)
    assert "".join(via_gateway.chat(QUESTION, max_tokens=16, temperature=0, stream=True)) == answer
    assert len(via_gateway.embed("hello")) == 384 and len(via_gateway.embed(["a", "b"])) == 2
    assert asyncio.run(via_gateway.achat(QUESTION, max_tokens=16, temperature=0)) == answer
    assert via_gateway.get_status()["llm"]["healthy"] is True

    # local engine ports, found without a gateway
    monkeypatch.setenv("SAGE_GATEWAY_PORT", "1")
    monkeypatch.setenv("SAGE_LLM_PORT", str(stack.llm_port))
    monkeypatch.setenv("SAGE_EMBEDDING_PORT", str(stack.emb_port))
    local = UnifiedInferenceClient.create(env_file=None)
    assert local.mode == "local" and local.chat(QUESTION, max_tokens=16, temperature=0) == answer
    assert np.allclose(local.embed("hello"), via_gateway.embed("hello"), atol=1e-5)

    embedded = UnifiedInferenceClient.create(embedded=True)
    try:
        assert embedded.chat(QUESTION, max_tokens=16, temperature=0) == answer
        assert np.allclose(embedded.embed("hello"), via_gateway.embed("hello"), atol=1e-5)
        again = UnifiedInferenceClient.create(embedded=True)  # shares the loaded engines
        assert "".join(again.chat(QUESTION, max_tokens=16, temperature=0, stream=True)) == answer
    finally:
        UnifiedInferenceClient.shutdown_embedded()


def test_llm_service_in_a_pipeline(stack: RealStack) -> None:
    class Answer(MapFunction):
        def execute(self, question: str) -> tuple[str, str]:
            return question, self.call_service["llm_service"].chat(
                question, max_tokens=12, temperature=0
            )

    env = LocalEnvironment("llm_pipeline")
    env.register_service(
        "llm_service", LLMService, control_plane_url=f"http://127.0.0.1:{stack.port}/v1"
    )
    out: list[tuple[str, str]] = []
    questions = ["What is 2+2?", "Name a color.", "Say hi."]
    env.from_collection(questions).map(Answer, parallelism=3).sink(out.append)
    env.submit()
    assert sorted(q for q, _ in out) == sorted(questions)
    assert all(answer for _, answer in out)


def test_embedding_factory() -> None:
    raw = EmbeddingFactory.create("hf", model="all-minilm-l6-v2")
    one = raw.embed("one text")
    assert len(one) == 384
    batch = EmbeddingClientAdapter(raw).embed(["one text", "two texts"])
    assert np.allclose(batch[0], one, atol=1e-5)
    hashed = EmbeddingFactory.create("hash", dim=32)
    assert (
        hashed.embed("same words") == hashed.embed("same words") and len(hashed.embed("x y")) == 32
    )
    with pytest.raises(TypeError, match="EmbeddingClientAdapter"):
        raw.embed(["a", "b"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="use one of hf, hash, openai"):
        EmbeddingFactory.create("word2vec")


def test_unknown_hub_model_is_a_clear_error() -> None:
    from sage.inference.engines.models import resolve_model

    with pytest.raises(ConfigError, match=r"not available offline.*smollm2.*local copy"):
        resolve_model("Qwen/Qwen2.5-7B-Instruct", "llm")


def test_embeddings_run_on_onnx_runtime_as_sentence_transformers_would(stack: RealStack) -> None:
    engine: Any = stack.embedding_server.engine if stack.embedding_server else None
    assert engine is not None and engine.backend == "onnxruntime"
    texts = ["a cat sat", "the rules of the with statement", "x" * 3000]  # one truncated
    vectors, tokens = stack.call(engine.embed(texts), timeout=60)
    reference = engine.model.encode(texts, normalize_embeddings=True)
    assert np.abs(np.array(vectors) - reference).max() < 1e-5
    counted = engine.model.tokenizer(texts, truncation=True, max_length=engine.model.max_seq_length)
    assert tokens == sum(len(ids) for ids in counted["input_ids"])
