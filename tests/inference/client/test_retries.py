"""``UnifiedInferenceClient`` retries 429 and 503 after their ``Retry-After`` (capped, a
bounded number of tries, streams only before their first byte), against a real loopback
server; the waits are recorded by an injected sleep, never slept."""

from __future__ import annotations

import asyncio
import email.utils
from collections.abc import Iterator

import pytest

from recording_server import ANSWER, EMBEDDING, LLM, RecordingServer
from sage.common.errors import ConfigError, GatewayError
from sage.inference.client.retries import RetryPolicy, retry_after_s
from sage.inference.client.unified import UnifiedInferenceClient


class Waits:
    """The injected sleeps: records each wait, returns at once."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.seconds.append(seconds)

    async def async_sleep(self, seconds: float) -> None:
        self.seconds.append(seconds)


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    with RecordingServer() as running:
        yield running


@pytest.fixture
def waits() -> Waits:
    return Waits()


def client(server: RecordingServer, waits: Waits, **policy: float) -> UnifiedInferenceClient:
    retry = RetryPolicy(sleep=waits.sleep, async_sleep=waits.async_sleep, **policy)  # type: ignore[arg-type]
    return UnifiedInferenceClient(
        mode="test",
        llm_base_url=server.url,
        embedding_base_url=server.url,
        llm_model=LLM,
        embedding_model=EMBEDDING,
        retry=retry,
    )


def test_429_then_200_waits_the_retry_after_once(server: RecordingServer, waits: Waits) -> None:
    server.refuse((429, "2"))
    with client(server, waits) as c:
        assert c.chat("hi", max_tokens=4) == ANSWER
    assert waits.seconds == [2.0]
    assert [s.answered for s in server.seen] == [429, 200]
    assert server.seen[0].body == server.seen[1].body  # the same request again


def test_503_without_retry_after_backs_off_then_gives_up_naming_the_tries(
    server: RecordingServer, waits: Waits
) -> None:
    server.refuse((503, None), (503, None), (503, None))
    with client(server, waits, backoff_s=0.25) as c, pytest.raises(GatewayError) as failed:
        c.generate("hi")
    assert waits.seconds == [0.25, 0.5]  # doubling; no wait after the last try
    assert failed.value.status == 503
    assert "still 503 after 3 tries" in str(failed.value)
    assert "retry=RetryPolicy(attempts=" in str(failed.value)
    assert len(server.seen) == 3


def test_a_long_retry_after_is_capped_and_an_http_date_is_read(
    server: RecordingServer, waits: Waits
) -> None:
    server.refuse((429, "3600"), (503, "Wed, 21 Oct 2015 07:28:00 GMT"))  # a date passed
    with client(server, waits, max_wait_s=5.0) as c:
        assert c.embed(["a", "bb"]) == [[1.0, 1.0], [2.0, 1.0]]
    assert waits.seconds == [5.0, 0.0]


def test_other_errors_and_attempts_1_are_not_retried(server: RecordingServer, waits: Waits) -> None:
    server.refuse((500, "1"))
    with client(server, waits) as c, pytest.raises(GatewayError) as failed:
        c.chat("hi")
    assert failed.value.status == 500 and "tries" not in str(failed.value)
    server.refuse((429, "1"))
    with client(server, waits, attempts=1) as c, pytest.raises(GatewayError) as refused:
        c.chat("hi")
    assert refused.value.status == 429 and "tries" not in str(refused.value)
    assert waits.seconds == [] and len(server.seen) == 2


def test_a_stream_is_retried_before_its_first_byte(server: RecordingServer, waits: Waits) -> None:
    server.refuse((429, "1"))
    with client(server, waits) as c:
        pieces = list(c.chat("hi", stream=True))
    assert " ".join(pieces) == ANSWER
    assert waits.seconds == [1.0]
    assert [s.answered for s in server.seen] == [429, 200]


def test_the_async_twins_retry_with_the_async_sleep(server: RecordingServer, waits: Waits) -> None:
    async def calls(c: UnifiedInferenceClient) -> tuple[str, list[float], str]:
        server.refuse((429, "1.5"))
        text = await c.achat("hi")
        server.refuse((503, "2"))
        vector = await c.aembed("abc")
        server.refuse((429, None))
        pieces = [p async for p in await c.achat("hi", stream=True)]
        await c.aclose()
        return text, vector, " ".join(pieces)

    text, vector, streamed = asyncio.run(calls(client(server, waits)))
    assert (text, vector, streamed) == (ANSWER, [3.0, 1.0], ANSWER)
    assert waits.seconds == [1.5, 2.0, 0.5]
    assert [s.answered for s in server.seen] == [429, 200, 503, 200, 429, 200]


def test_retry_after_parsing_and_policy_validation() -> None:
    assert retry_after_s(None) is None
    assert retry_after_s(" 7 ") == 7.0
    assert retry_after_s("-3") == 0.0
    assert retry_after_s("soon") is None
    when = email.utils.formatdate(1_000_030.0, usegmt=True)
    assert retry_after_s(when, now=lambda: 1_000_000.0) == 30.0
    with pytest.raises(ConfigError, match=r"attempts=0\) is invalid; use an integer >= 1"):
        RetryPolicy(attempts=0)
    with pytest.raises(ConfigError, match=r"max_wait_s=-1\) is invalid"):
        RetryPolicy(max_wait_s=-1)
