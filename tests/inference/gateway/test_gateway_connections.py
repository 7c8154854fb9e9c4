"""The gateway's connections: slow and idle clients, request ids, CORS, stalled streams.

The instance behind the gateway here is a small fake OpenAI server (an ``HttpServer`` of
the test) so that what reaches it, and when it stops answering, is the test's to decide.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest

from sage.common.concurrency import LoopThread
from sage.common.http import HttpServer, Request, Response, StreamResponse, json_response
from sage.inference.config import BackendInstanceConfig, UnifiedServerConfig
from sage.inference.gateway.server import UnifiedAPIServer

SLOW_CLIENTS = 500


class FakeInstance:
    """Answers ``/v1/models``; a chat's answer is the request id it received; a streamed
    chat sends one event and then stalls until ``release`` is set."""

    def __init__(self, loop: LoopThread) -> None:
        self.release = asyncio.Event()
        self.server = HttpServer("fake-instance")
        self.server.route("GET", "/v1/models", self._models)
        self.server.route("POST", "/v1/chat/completions", self._chat)
        self.port = loop.call(self.server.start(), timeout=10)

    async def _models(self, request: Request) -> Response:
        return json_response({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    async def _chat(self, request: Request) -> Response | StreamResponse:
        if orjson.loads(request.body).get("stream"):

            async def events() -> AsyncIterator[bytes]:
                yield b'data: {"id": "c", "model": "fake", "choices": []}\n\n'
                await self.release.wait()  # stalls mid-answer
                yield b"data: [DONE]\n\n"

            return StreamResponse(events())
        answer = {
            "id": "chatcmpl-1",
            "model": "fake",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": request.headers.get("x-request-id"),
                    },
                }
            ],
        }
        return json_response(answer)


class Gateway:
    def __init__(self, **options: Any) -> None:
        self.loop = LoopThread("test-gateway")
        self.instance = FakeInstance(self.loop)
        backend = BackendInstanceConfig(port=self.instance.port, model_name="fake")
        config = UnifiedServerConfig(port=0, llm_backends=[backend], **options)
        self.gateway = UnifiedAPIServer(config)
        self.port = self.loop.call(self.gateway.start_async(), timeout=10)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.loop.loop.call_soon_threadsafe(self.instance.release.set)
        self.loop.call(self.gateway.stop_async(), timeout=30)
        self.loop.call(self.instance.server.close(), timeout=30)
        self.loop.stop()


@pytest.fixture
def gateway(request: pytest.FixtureRequest) -> Iterator[Gateway]:
    options = getattr(request, "param", {})
    g = Gateway(**options)
    yield g
    g.close()


CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("gateway", [{"header_timeout_s": 1.0}], indirect=True)
def test_half_sent_request_heads_neither_block_others_nor_stay_open(gateway: Gateway) -> None:
    async def scenario() -> tuple[list[int], list[bytes]]:
        slow = [
            await asyncio.open_connection("127.0.0.1", gateway.port) for _ in range(SLOW_CLIENTS)
        ]
        for _, writer in slow:
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-")
            await writer.drain()
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            codes = [
                (await client.post("/v1/chat/completions", json=CHAT)).status_code
                for _ in range(20)
            ]
        # each slow connection is answered 408 and closed: read to the end of each
        replies = await asyncio.gather(*(asyncio.wait_for(r.read(), 60) for r, _ in slow))
        for _, writer in slow:
            writer.close()
        return codes, replies

    codes, replies = asyncio.run(scenario())
    assert codes == [200] * 20
    assert len(replies) == SLOW_CLIENTS
    assert all(reply.startswith(b"HTTP/1.1 408") for reply in replies), replies[:3]
    assert httpx.post(gateway.url + "/v1/chat/completions", json=CHAT).status_code == 200


@pytest.mark.parametrize("gateway", [{"idle_timeout_s": 0.5}], indirect=True)
def test_an_idle_kept_alive_connection_is_closed(gateway: Gateway) -> None:
    async def scenario() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        rest = await asyncio.wait_for(reader.read(), 30)  # the server closes it: EOF
        writer.close()
        return rest

    assert asyncio.run(scenario()) == b""


def test_a_request_id_is_echoed_and_sent_on_to_the_instance(gateway: Gateway) -> None:
    given = httpx.post(
        gateway.url + "/v1/chat/completions", json=CHAT, headers={"x-request-id": "trace-42"}
    )
    assert given.headers["x-request-id"] == "trace-42"
    assert given.json()["choices"][0]["message"]["content"] == "trace-42"
    made = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT)
    made_id = made.headers["x-request-id"]
    assert len(made_id) == 32 and made.json()["choices"][0]["message"]["content"] == made_id
    bad = httpx.get(gateway.url + "/health", headers={"x-request-id": "has spaces in it"})
    assert bad.headers["x-request-id"] != "has spaces in it"  # not echoed into a header as is
    missing = httpx.get(gateway.url + "/nope", headers={"x-request-id": "err-1"})
    assert missing.status_code == 404 and missing.headers["x-request-id"] == "err-1"


@pytest.mark.parametrize(
    "gateway", [{"enable_cors": True, "cors_origins": ["https://app.example"]}], indirect=True
)
def test_cors_answers_preflights_for_allowed_origins(gateway: Gateway) -> None:
    preflight = httpx.options(
        gateway.url + "/v1/chat/completions",
        headers={
            "origin": "https://app.example",
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert preflight.headers["access-control-allow-methods"] == "POST"
    chat = httpx.post(
        gateway.url + "/v1/chat/completions", json=CHAT, headers={"origin": "https://app.example"}
    )
    assert chat.headers["access-control-allow-origin"] == "https://app.example"
    other = httpx.post(
        gateway.url + "/v1/chat/completions", json=CHAT, headers={"origin": "https://evil.example"}
    )
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
    refused = httpx.options(
        gateway.url + "/v1/chat/completions",
        headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
    )
    assert refused.status_code == 403


def test_cors_is_off_unless_enabled(gateway: Gateway) -> None:
    answer = httpx.post(
        gateway.url + "/v1/chat/completions", json=CHAT, headers={"origin": "https://app.example"}
    )
    assert "access-control-allow-origin" not in answer.headers
    preflight = httpx.options(
        gateway.url + "/v1/chat/completions",
        headers={"origin": "https://app.example", "access-control-request-method": "POST"},
    )
    assert preflight.status_code == 405


@pytest.mark.parametrize("gateway", [{"stream_chunk_timeout_s": 0.5}], indirect=True)
def test_a_stream_that_stalls_mid_answer_is_cut_and_its_slot_given_back(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as answer:
            assert answer.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):  # cut: the chunked body never ends
                list(answer.iter_lines())
        registry = gateway.gateway.registry
        assert registry is not None
        (instance,) = registry.all()
        assert instance.in_flight == 0  # the slot came back
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
