"""Cancellation that reaches the engine: a client that disconnects (or times out) takes its
request out of the gateway's queue, or out of the engine, which frees the slot at its next
step.

The acceptance runs on the real CPU engine (the bundled SmolLM2 on llama.cpp), behind the
gateway and on its own: 50 streamed chats closed by their clients mid-answer leave the engine
with nothing running within 1 s of the last close, and none was computed in more than one
step after it was cancelled. The queue case needs only the GPU simulator behind the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from metric_names import missing
from sage.inference.deploy.stack import LocalStack
from sage.inference.engines.llamacpp import LlamaCppEngine

logger = logging.getLogger(__name__)

NO_END = {"0": -100, "2": -100, "4": -100}  # SmolLM2's end-of-generation tokens, banned
STREAMS = 50


def _request(path: str, body: dict[str, Any]) -> bytes:
    data = orjson.dumps(body)
    return (
        b"POST %s HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (path.encode(), len(data), data)
    )


async def _stream_then_leave(port: int, path: str, body: dict[str, Any], events: int) -> float:
    """Stream ``body``'s answer, read ``events`` events of it, close; when it closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_request(path, body))
        received = b""
        while received.count(b"data: {") < events:
            chunk = await reader.read(65536)
            assert chunk, f"the answer ended before {events} events: {received[:300]!r}"
            received += chunk
        assert received.startswith(b"HTTP/1.1 200"), received[:300]
        assert b"[DONE]" not in received  # mid-answer
    finally:
        writer.close()
    return time.perf_counter()


async def _until(
    condition: Callable[[], bool], deadline: float, state: Callable[[], object] = str
) -> float:
    """Wait until ``condition()`` holds (polling the servers' state); when it did.

    Raises:
        AssertionError: it still does not hold at ``deadline`` (perf_counter); the message
            has ``state()``.
    """
    while not condition():
        assert time.perf_counter() < deadline, f"still not so at the deadline: {state()}"
        await asyncio.sleep(0.002)
    return time.perf_counter()


async def _until_idle(stack: LocalStack, deadline: float) -> float:
    """Wait until nothing runs: in the engine (its slots and its queue), its server and the
    gateway's instance; when that was."""
    engine, server, gateway = _engine(stack), stack.llm_servers[0], stack.gateway
    assert gateway is not None and gateway.registry is not None
    instances = gateway.registry.all()

    def busy() -> dict[str, int]:
        counts = {
            "engine slots": engine.figures.running,
            "engine queue": engine.figures.waiting,
            "engine server": server.figures.running,
            "gateway": sum(i.in_flight for i in instances),
        }
        return {name: n for name, n in counts.items() if n}

    return await _until(lambda: not busy(), deadline, lambda: (busy(), engine.step_figures()))


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LocalStack]:
    """SmolLM2 on llama.cpp with a slot for each of the streams, behind a gateway.

    One thread: llama.cpp's threads wait for each other at every layer, spinning, and on
    a machine busy with other work a step of two threads can stall for a second or more
    (seen here), which would time the machine, not the cancellation.
    """
    with LocalStack("smollm2", None, max_batch=STREAMS, threads=1) as stack:
        yield stack


def _engine(stack: LocalStack) -> LlamaCppEngine:
    engine = stack.llm_servers[0].engine
    assert isinstance(engine, LlamaCppEngine)
    return engine


@pytest.mark.slow
@pytest.mark.parametrize("through", ["gateway", "engine"])
def test_fifty_streams_closed_mid_answer_stop_at_the_engine_s_next_step(
    smollm2: LocalStack, through: str
) -> None:
    engine = _engine(smollm2)
    port = smollm2.port if through == "gateway" else smollm2.llm_ports[0]
    assert port is not None
    before = engine.step_figures()
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Count from one to a thousand."}],
        "max_tokens": 256,  # about 250 steps: every stream is mid-answer when it closes
        "stream": True,
        "logit_bias": NO_END,
    }

    async def run() -> tuple[float, float, int, int]:
        closes = await asyncio.gather(
            *(
                _stream_then_leave(port, "/v1/chat/completions", body, events=3 + i % 5)
                for i in range(STREAMS)
            )
        )
        last, steps = max(closes), engine.steps
        idle = await _until_idle(smollm2, deadline=last + 1.0)
        return last, idle, steps, engine.steps

    last, idle, steps_at_last, steps_at_idle = asyncio.run(run())
    after = engine.step_figures()
    assert after.cancelled - before.cancelled == STREAMS
    assert after.max_steps_after_cancel <= 1  # none computed beyond the step under way
    logger.info(
        "%s: idle %.0f ms after the last close, %d steps later; %d steps after cancellation "
        "in all (most for one request: %d)",
        through,
        (idle - last) * 1000,
        steps_at_idle - steps_at_last,
        after.steps_after_cancel - before.steps_after_cancel,
        after.max_steps_after_cancel,
    )
    # the same, as the engine server reports it
    health = httpx.get(f"http://127.0.0.1:{smollm2.llm_ports[0]}/health").json()
    assert health["running"] == 0 and health["scheduler"]["running"] == 0
    assert health["scheduler"]["cancelled"] == after.cancelled
    metrics = httpx.get(f"http://127.0.0.1:{smollm2.llm_ports[0]}/metrics").text
    assert not missing(metrics, "Engine servers", "Stepping engines (llama.cpp)")
    assert 'sage_engine_sequences_running{model="smollm2"} 0.0' in metrics
    assert f'sage_engine_cancelled_total{{model="smollm2"}} {after.cancelled}.0' in metrics
    most = after.max_steps_after_cancel
    assert f'sage_engine_steps_after_cancel_max{{model="smollm2"}} {most}.0' in metrics


@pytest.mark.slow
@pytest.mark.parametrize("through", ["gateway", "engine"])
def test_a_request_whose_client_times_out_is_cancelled_in_the_engine(
    smollm2: LocalStack, through: str
) -> None:
    """Not streamed: nothing is written until the answer is whole, so only the handler's
    cancellation (the gateway closing its connection to the engine) can stop it."""
    engine = _engine(smollm2)
    url = smollm2.gateway_url if through == "gateway" else smollm2.llm_url
    before = engine.step_figures()
    body = {"model": "smollm2", "prompt": "Count:", "max_tokens": 300, "logit_bias": NO_END}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/completions", json=body, timeout=httpx.Timeout(60, read=0.5))
    gave_up = time.perf_counter()
    idle = asyncio.run(_until_idle(smollm2, deadline=gave_up + 1.0))
    after = engine.step_figures()
    assert after.cancelled - before.cancelled == 1
    assert after.max_steps_after_cancel <= 1
    assert after.steps - before.steps < 300  # it did not run to its end
    logger.info("%s: idle %.0f ms after the client gave up", through, (idle - gave_up) * 1000)
    answer = httpx.post(url + "/completions", json={**body, "max_tokens": 2}, timeout=60)
    assert answer.status_code == 200  # serving on


def test_a_queued_request_whose_client_leaves_leaves_the_queue() -> None:
    """One slot, held by a stream: the next request waits in the gateway's queue; its client
    hangs up, and the queue is empty at once, without the request ever reaching the engine."""
    with LocalStack(
        "sim-llm",
        None,
        engine="simulated",
        max_concurrent_requests=1,
        profile={"decode_base_ms": 5.0, "max_batch": 1},
    ) as stack:
        gateway, server = stack.gateway, stack.llm_servers[0]
        assert gateway is not None and gateway.registry is not None
        dispatcher = gateway.dispatcher
        assert dispatcher is not None
        port = stack.port
        assert port is not None
        chat = {"model": "sim-llm", "messages": [{"role": "user", "content": "hi"}]}

        async def run() -> None:
            holding, holder = await asyncio.open_connection("127.0.0.1", port)
            holder.write(
                _request("/v1/chat/completions", {**chat, "max_tokens": 4000, "stream": True})
            )
            received = b""
            while b"data: {" not in received:  # it holds the slot
                received += await holding.read(65536)
            served = server.requests
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(_request("/v1/chat/completions", {**chat, "max_tokens": 4}))
            await _until(lambda: dispatcher.queued == 1, time.perf_counter() + 10)
            writer.close()
            await _until(lambda: dispatcher.queued == 0, time.perf_counter() + 1)
            holder.close()
            await _until(_idle_instance(gateway), time.perf_counter() + 1)
            assert server.requests == served  # the one that left never reached the engine

        asyncio.run(run())
        state = httpx.get(stack.gateway_url + "/management/metrics").json()
        assert state["queued"] == 0
        answer = httpx.post(stack.gateway_url + "/chat/completions", json={**chat, "max_tokens": 2})
        assert answer.status_code == 200


def _idle_instance(gateway: Any) -> Callable[[], bool]:
    return lambda: all(i.in_flight == 0 for i in gateway.registry.all())
