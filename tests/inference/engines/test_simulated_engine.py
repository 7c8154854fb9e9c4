"""The GPU-instance simulator engines: profile, timing model, batching, serving.

Timing lower bounds are solid (the simulator sleeps at least the modelled time on a virtual
deadline clock), so they are asserted tightly; upper bounds are loose because the host is
noisy.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from sage.common.errors import ConfigError
from sage.inference.deploy.processes import SpawnError, spawn, terminate
from sage.inference.deploy.stack import LocalStack
from sage.inference.engines.base import Delta, SamplingParams
from sage.inference.engines.factory import ENGINES, build_engine
from sage.inference.engines.simulated import (
    SIMULATED_TEXT,
    SimulatedEmbeddingEngine,
    SimulatedLLMEngine,
    SimulatorProfile,
)
from sage.inference.engines.stub import StubEmbeddingEngine

SLACK_S = 0.002  # timer granularity; the simulator never ends a step earlier than this


def expected_text(n: int) -> str:
    words = SIMULATED_TEXT.split()
    return " ".join(words[i % len(words)] for i in range(n))


class Run:
    """One request through an engine: when it was sent, when each delta came."""

    def __init__(self) -> None:
        self.sent = 0.0
        self.times: list[float] = []
        self.deltas: list[Delta] = []

    @property
    def ttft(self) -> float:
        return self.times[0] - self.sent

    @property
    def elapsed(self) -> float:
        return self.times[-1] - self.sent

    @property
    def tpot(self) -> float:
        return (self.times[-1] - self.times[0]) / (len(self.times) - 1)


async def run(engine: SimulatedLLMEngine, max_tokens: int, prompt: str = "hi") -> Run:
    record = Run()
    record.sent = time.perf_counter()
    async for delta in engine.generate(SamplingParams(max_tokens=max_tokens), prompt=prompt):
        record.times.append(time.perf_counter())
        record.deltas.append(delta)
    return record


async def run_many(engine: SimulatedLLMEngine, n: int, max_tokens: int) -> list[Run]:
    await engine.start()
    try:
        return list(await asyncio.gather(*(run(engine, max_tokens) for _ in range(n))))
    finally:
        await engine.stop()


# -- the profile --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"max_batch": 0}, "max_batch"),
        ({"embed_max_batch": 1.5}, "embed_max_batch"),
        ({"decode_base_ms": 0}, "decode_base_ms"),
        ({"prefill_ms_per_token": -1}, "prefill_ms_per_token"),
        ({"embed_call_ms": float("nan")}, "embed_call_ms"),
        ({"decode_ms_per_seq": "fast"}, "decode_ms_per_seq"),
        ({"max_batch": True}, "max_batch"),
        ({"chars_per_token": 0}, "chars_per_token"),
        ({"max_batchh": 4}, "max_batchh"),
    ],
)
def test_profile_validation_names_the_field(values: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        SimulatorProfile.from_mapping(values)


def test_profile_json_round_trip_and_the_timing_formulas() -> None:
    with pytest.raises(ConfigError, match="JSON"):
        SimulatorProfile.from_json("{max_batch: 4}")
    with pytest.raises(ConfigError, match="object"):
        SimulatorProfile.from_json("[4]")
    profile = SimulatorProfile.from_json('{"max_batch": 8, "decode_base_ms": 10}')
    assert profile.decode_base_ms == 10.0 and profile.max_batch == 8
    assert SimulatorProfile.from_json(profile.to_json()) == profile
    assert profile.step_s(1) == pytest.approx(0.0104)
    assert profile.step_s(8) == pytest.approx(0.0132)
    assert profile.prefill_s(200) == pytest.approx(0.010)
    assert profile.tokens("") == 1 and profile.tokens("x" * 40) == 11
    # embeddings: one pass up to embed_max_batch texts, then another
    assert profile.embed_s(256) == pytest.approx(0.010 + 0.064)
    assert profile.embed_s(257) == pytest.approx(0.020 + 0.06425)
    # capacity = B / (O * step_s(B) + B * prefill_s(P))
    assert profile.capacity_rps(200, 100) == pytest.approx(8 / (100 * 0.0132 + 8 * 0.010))
    assert profile.capacity_rps(200, 200) < profile.capacity_rps(200, 100)
    assert SimulatorProfile(max_batch=32).capacity_rps(200, 100) > profile.capacity_rps(200, 100)
    with pytest.raises(ConfigError, match="mean_output_tokens"):
        profile.capacity_rps(200, 0)


# -- the LLM simulator's timing -------------------------------------------------------------


def test_one_request_takes_its_prefill_plus_one_step_per_token() -> None:
    profile = SimulatorProfile(prefill_ms_per_token=0.5, decode_base_ms=10, decode_ms_per_seq=1)
    engine = SimulatedLLMEngine("sim", profile)
    prompt = "x" * 399  # 100 tokens: 50 ms of prefill
    (record,) = asyncio.run(run_many_prompt(engine, prompt, 10))
    model = profile.prefill_s(100) + 10 * profile.step_s(1)
    assert model == pytest.approx(0.160)
    assert model - SLACK_S <= record.elapsed < 3 * model
    assert record.ttft >= profile.prefill_s(100) + profile.step_s(1) - SLACK_S
    assert "".join(d.text for d in record.deltas) == expected_text(10)
    assert len(record.deltas) == 10
    last = record.deltas[-1]
    assert (last.finish_reason, last.prompt_tokens, last.completion_tokens) == ("length", 100, 10)
    assert all(d.finish_reason is None for d in record.deltas[:-1])
    assert engine.steps == 10


async def run_many_prompt(engine: SimulatedLLMEngine, prompt: str, max_tokens: int) -> list[Run]:
    await engine.start()
    try:
        return [await run(engine, max_tokens, prompt)]
    finally:
        await engine.stop()


def test_concurrent_requests_share_steps() -> None:
    profile = SimulatorProfile(decode_base_ms=10, decode_ms_per_seq=1)
    (single,) = asyncio.run(run_many(SimulatedLLMEngine("sim", profile), 1, 10))
    batch = asyncio.run(run_many(SimulatedLLMEngine("sim", profile), 8, 10))
    slowest = max(r.elapsed for r in batch)
    assert slowest >= 8 * profile.prefill_s(1) + 10 * profile.step_s(8) - SLACK_S
    assert slowest < 4 * single.elapsed
    assert all(r.deltas[-1].completion_tokens == 10 for r in batch)


def test_more_than_max_batch_requests_run_in_waves() -> None:
    profile = SimulatorProfile(decode_base_ms=10, decode_ms_per_seq=5, max_batch=4)
    engine = SimulatedLLMEngine("sim", profile)
    seen: list[tuple[int, int]] = []

    async def main() -> list[Run]:
        await engine.start()
        try:
            first = engine.generate(SamplingParams(max_tokens=6), prompt="hi")
            others = [asyncio.ensure_future(run(engine, 6)) for _ in range(4)]
            first_run = Run()
            first_run.sent = time.perf_counter()
            async for delta in first:
                first_run.times.append(time.perf_counter())
                first_run.deltas.append(delta)
                seen.append((engine.running, engine.waiting))
            return [first_run, *await asyncio.gather(*others)]
        finally:
            await engine.stop()

    runs = asyncio.run(main())
    # the first step admitted four (the batch limit); the fifth waited in the FIFO
    assert seen[0] == (4, 1)
    fifth = runs[4]
    assert fifth.times[0] > runs[0].times[-1]  # it started after the first wave finished
    assert fifth.times[0] - runs[0].times[0] >= 6 * profile.step_s(1)
    assert max(r.times[0] for r in runs[:4]) < fifth.times[0]


def test_time_per_output_token_grows_with_the_batch() -> None:
    profile = SimulatorProfile(decode_base_ms=5, decode_ms_per_seq=2)
    (alone,) = asyncio.run(run_many(SimulatedLLMEngine("sim", profile), 1, 8))
    full = asyncio.run(run_many(SimulatedLLMEngine("sim", profile), 16, 8))
    assert profile.step_s(16) / profile.step_s(1) > 5
    assert min(r.tpot for r in full) > 2 * alone.tpot


def test_a_closed_request_leaves_the_batch_and_stop_ends_the_rest() -> None:
    engine = SimulatedLLMEngine("sim", SimulatorProfile(decode_base_ms=1))

    async def main() -> None:
        await engine.start()
        gone = engine.generate(SamplingParams(max_tokens=10_000), prompt="hi")
        assert (await anext(gone)).text == "This"
        assert engine.running == 1
        await gone.aclose()  # type: ignore[attr-defined]
        assert engine.running == 0 and engine.waiting == 0
        await asyncio.sleep(0.01)  # the step in flight (1 ms) ends
        steps = engine.steps
        await asyncio.sleep(0.03)  # idle: the loop takes no steps
        assert engine.steps == steps
        record = await run(engine, 3)  # the engine still serves
        assert record.deltas[-1].completion_tokens == 3
        cut = engine.generate(SamplingParams(max_tokens=10_000), prompt="hi")
        await anext(cut)
        await engine.stop()
        with pytest.raises(RuntimeError, match="simulator"):
            await anext(cut)

    asyncio.run(main())


# -- the embedding simulator -------------------------------------------------------------


def test_embedding_calls_run_one_at_a_time_in_passes() -> None:
    profile = SimulatorProfile(embed_call_ms=20, embed_ms_per_text=0.5, embed_max_batch=4)
    engine = SimulatedEmbeddingEngine("sim-embed", profile)
    texts = [f"text {i}" for i in range(10)]

    async def main() -> tuple[float, float, list[list[float]], int]:
        await engine.start()
        started = time.perf_counter()
        vectors, tokens = await engine.embed(texts)
        one = time.perf_counter() - started
        started = time.perf_counter()
        await asyncio.gather(engine.embed(["a"]), engine.embed(["b"]), engine.embed(["c"]))
        three = time.perf_counter() - started
        return one, three, vectors, tokens

    one, three, vectors, tokens = asyncio.run(main())
    assert profile.embed_s(10) == pytest.approx(0.065)  # three passes
    assert profile.embed_s(10) - SLACK_S <= one < 3 * profile.embed_s(10)
    assert three >= 3 * profile.embed_s(1) - SLACK_S  # one GPU: the calls took turns
    assert tokens == sum(profile.tokens(t) for t in texts)
    assert len(vectors) == 10 and all(len(v) == 384 for v in vectors)
    assert all(math.isclose(sum(x * x for x in v), 1.0) for v in vectors)
    same, _ = asyncio.run(StubEmbeddingEngine("x", 384).embed(texts))
    assert vectors == same and vectors[0] != vectors[1]
    assert engine.calls == 4


# -- serving ------------------------------------------------------------------------------

FAST = SimulatorProfile(decode_base_ms=2, decode_ms_per_seq=0.1, embed_call_ms=2)


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack("sim-7b", "sim-embed", engine="simulated", profile=FAST) as s:
        yield s


def test_openai_sdk_against_the_simulator_servers_and_the_gateway(stack: LocalStack) -> None:
    assert stack.port is not None and stack.embedding_port is not None
    for url in (stack.llm_url, stack.gateway_url):
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        assert "sim-7b" in [m.id for m in client.models.list()]
        chat = client.chat.completions.create(
            model="sim-7b", messages=[{"role": "user", "content": "hello there"}], max_tokens=5
        )
        assert chat.choices[0].message.content == expected_text(5)
        assert chat.choices[0].finish_reason == "length" and chat.usage is not None
        assert (chat.usage.prompt_tokens, chat.usage.completion_tokens) == (3, 5)
        assert chat.usage.total_tokens == 8
        chunks = list(
            client.chat.completions.create(
                model="sim-7b",
                messages=[{"role": "user", "content": "hello there"}],
                max_tokens=20,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        pieces = [c.choices[0].delta.content for c in chunks if c.choices]
        assert "".join(p or "" for p in pieces) == expected_text(20)
        assert len([p for p in pieces if p]) == 20  # one chunk per simulated step
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 20
        text = client.completions.create(model="sim-7b", prompt="x" * 40, max_tokens=3)
        assert text.choices[0].text == expected_text(3) and text.usage is not None
        assert text.usage.prompt_tokens == 11
        streamed = client.completions.create(model="sim-7b", prompt="x", max_tokens=4, stream=True)
        assert "".join(c.choices[0].text for c in streamed) == expected_text(4)
    for url in (stack.embedding_url, stack.gateway_url):
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        vectors = client.embeddings.create(model="sim-embed", input=["a", "b", "c"])
        assert [d.index for d in vectors.data] == [0, 1, 2]
        assert len(vectors.data[0].embedding) == 384 and vectors.usage.prompt_tokens == 3


def test_build_engine_and_a_spawned_simulator_process(tmp_path: Path) -> None:
    assert "simulated" in ENGINES
    llm = build_engine("llm", "x", "simulated")
    assert isinstance(llm, SimulatedLLMEngine) and llm.model_name == "x"
    assert llm.profile == SimulatorProfile()
    embedding = build_engine("embedding", "e", "simulated", profile={"embed_call_ms": 1})
    assert isinstance(embedding, SimulatedEmbeddingEngine)
    assert embedding.profile.embed_call_ms == 1.0
    with pytest.raises(ConfigError, match="bogus"):
        build_engine("llm", "x", "simulated", profile={"bogus": 1})

    args = ["engine", "--kind", "llm", "--model", "sim-llm", "--engine", "simulated"]
    log = tmp_path / "sim.log"
    pid, port = spawn([*args, "--port", "0", "--sim-profile", '{"max_batch": 8}'], log, 60)
    try:
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["sim-llm"]
        reply = httpx.post(
            f"http://127.0.0.1:{port}/v1/completions",
            json={"model": "sim-llm", "prompt": "hi", "max_tokens": 2},
            timeout=10,
        ).json()
        assert reply["choices"][0]["text"] == expected_text(2)
    finally:
        terminate(pid)
    assert "LLM simulator 'sim-llm' started" in log.read_text()
    assert "max_batch=8" in log.read_text()
    with pytest.raises(SpawnError, match="max_batch"):
        spawn([*args, "--port", "0", "--sim-profile", '{"max_batch": 0}'], log, 60)
