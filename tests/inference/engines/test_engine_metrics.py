"""An engine server's ``GET /metrics``: requests, errors and requests running per endpoint,
latency, time to first token and time per output token as histograms in seconds, prompt
and generated tokens as counters — checked against the answers' own usage figures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import httpx
import pytest

from metric_names import histogram_count, missing, shaped
from sage.common.concurrency import LoopThread
from sage.inference.engines.base import Delta, SamplingParams
from sage.inference.engines.server import EngineServer
from sage.inference.engines.stub import StubEmbeddingEngine, StubLLMEngine

CHAT = {"model": "stub-llm", "messages": [{"role": "user", "content": "say it"}]}


class TroubledEngine(StubLLMEngine):
    """Fails after its first token when the prompt says ``fail``; waits for ``gate`` after
    its first token when it says ``wait``."""

    def __init__(self) -> None:
        super().__init__("stub-llm")
        self.gate = asyncio.Event()

    async def generate(
        self,
        params: SamplingParams,
        *,
        messages: Sequence[dict[str, Any]] | None = None,
        prompt: str | None = None,
    ) -> AsyncIterator[Delta]:
        text = prompt or str(messages)
        if "fail" in text or "wait" in text:
            yield Delta("first")
            if "fail" in text:
                raise RuntimeError("the engine broke")
            await self.gate.wait()
        async for delta in super().generate(params, messages=messages, prompt=prompt):
            yield delta


class Served:
    """Engine servers on a loop thread, their URLs, and a scrape of each."""

    def __init__(self) -> None:
        self.loop = LoopThread("sage-test-engine-metrics")
        self.llm_engine = TroubledEngine()
        self.llm = EngineServer(self.llm_engine)
        self.emb = EngineServer(StubEmbeddingEngine("stub-emb"))
        self.llm_url = f"http://127.0.0.1:{self.loop.call(self.llm.start())}"
        self.emb_url = f"http://127.0.0.1:{self.loop.call(self.emb.start())}"

    def scrape(self, url: str) -> dict[str, Any]:
        answer = httpx.get(url + "/metrics")
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert not missing(answer.text, "Engine servers")
        return shaped(answer.text)

    def close(self) -> None:
        for server in (self.llm, self.emb):
            self.loop.call(server.stop())
        self.loop.stop()


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served()
    yield s
    s.close()


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    return sum(s.value for s in families[name].samples if labels.items() <= s.labels.items())


def wait_until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "the condition never held"


def test_tokens_latency_and_requests_match_what_the_answers_say(served: Served) -> None:
    prompt_tokens = completion_tokens = 0
    with httpx.Client(base_url=served.llm_url) as client:
        for max_tokens in (1, 3, 8):
            answer = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": max_tokens})
            usage = answer.json()["usage"]
            prompt_tokens += usage["prompt_tokens"]
            completion_tokens += usage["completion_tokens"]
        answer = client.post(
            "/v1/completions", json={"model": "stub-llm", "prompt": "one two", "max_tokens": 4}
        )
        prompt_tokens += answer.json()["usage"]["prompt_tokens"]
        completion_tokens += answer.json()["usage"]["completion_tokens"]
        stream = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
        with client.stream("POST", "/v1/chat/completions", json=stream) as events:
            body = events.read()
        assert b"[DONE]" in body
        usage = [line for line in body.split(b"\n") if b'"usage"' in line][-1]
        streamed = httpx.Response(200, content=usage.removeprefix(b"data: ")).json()["usage"]
        prompt_tokens += streamed["prompt_tokens"]
        completion_tokens += streamed["completion_tokens"]
        refused = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": -1})
        assert refused.status_code == 400  # refused before the engine: not an engine request
    families = served.scrape(served.llm_url)
    assert value(families, "sage_engine_requests", endpoint="chat") == 4
    assert value(families, "sage_engine_requests", endpoint="completions") == 1
    assert value(families, "sage_engine_errors") == 0
    assert value(families, "sage_engine_requests_running") == 0
    assert value(families, "sage_engine_prompt_tokens") == prompt_tokens
    assert value(families, "sage_engine_generation_tokens") == completion_tokens > 0
    duration = families["sage_engine_request_duration_seconds"]
    assert histogram_count(duration, model="stub-llm", endpoint="chat") == 4
    assert histogram_count(families["sage_engine_time_to_first_token_seconds"]) == 5
    # one sample per request of two tokens or more: max_tokens 3, 8, 4 and the stream
    assert histogram_count(families["sage_engine_time_per_output_token_seconds"]) == 4

    texts = ["a cat sat", "on the mat"]
    answer = httpx.post(
        served.emb_url + "/v1/embeddings", json={"model": "stub-emb", "input": texts}
    )
    families = served.scrape(served.emb_url)
    assert value(families, "sage_engine_requests", endpoint="embeddings") == 1
    assert value(families, "sage_engine_prompt_tokens") == answer.json()["usage"]["prompt_tokens"]
    assert histogram_count(families["sage_engine_request_duration_seconds"]) == 1


def test_failed_and_abandoned_requests_are_counted_and_stop_running(served: Served) -> None:
    failed = httpx.post(
        served.llm_url + "/v1/completions",
        json={"model": "stub-llm", "prompt": "please fail", "max_tokens": 4},
    )
    assert failed.status_code == 500
    families = served.scrape(served.llm_url)
    assert value(families, "sage_engine_errors", endpoint="completions") == 1
    assert value(families, "sage_engine_requests", endpoint="completions") == 1
    assert value(families, "sage_engine_requests_running") == 0

    waiting = {"model": "stub-llm", "prompt": "wait", "max_tokens": 4, "stream": True}
    with (
        httpx.Client(base_url=served.llm_url) as client,
        client.stream("POST", "/v1/completions", json=waiting) as events,
    ):
        chunks = events.iter_bytes()  # (dropping the iterator would close the response)
        assert b"first" in next(chunks)
        running = served.scrape(served.llm_url)
        assert value(running, "sage_engine_requests_running") == 1
    # the client went away: its request is cancelled at once, no next token needed

    def stopped() -> bool:
        families = served.scrape(served.llm_url)
        return value(families, "sage_engine_requests_running") == 0

    wait_until(stopped)
    families = served.scrape(served.llm_url)
    assert value(families, "sage_engine_requests", endpoint="completions") == 2
    assert value(families, "sage_engine_errors", endpoint="completions") == 1
