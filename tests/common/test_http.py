"""The HTTP core: routes, errors that keep the server serving, streaming, pooled client."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest

from sage.common.concurrency import LoopThread
from sage.common.http import (
    BackendTimeout,
    BackendUnavailable,
    HttpError,
    HttpPool,
    HttpServer,
    Request,
    Response,
    StreamResponse,
    json_response,
)


class Running:
    """An HttpServer on its own event loop thread."""

    def __init__(self, build: Callable[[HttpServer], None], max_body: int = 1024) -> None:
        self.thread = LoopThread("test-http")
        self.loop = self.thread.loop
        self.server = HttpServer("test", max_body=max_body)
        build(self.server)
        self.port = self.call(self.server.start())

    def call(self, coro: Any) -> Any:
        return self.thread.call(coro, timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.call(self.server.close())
        self.thread.stop()


streams_closed = threading.Semaphore(0)  # released when a stream's generator is closed
answer_now = asyncio.Event()  # /hang answers once it is set (on the server's loop)
handler_ends: list[tuple[str, str]] = []  # (route, how its handler ended): /wait, /finish
handler_ended = threading.Semaphore(0)  # released as each is added
finish_now = asyncio.Event()  # /finish answers once it is set


def build(server: HttpServer) -> None:
    async def echo(request: Request) -> Response:
        return json_response({"got": request.json(), "path": request.path, "q": request.query})

    async def crash(request: Request) -> Response:
        raise RuntimeError("handler bug")

    async def teapot(request: Request) -> Response:
        raise HttpError(418, "short and stout")

    async def events(request: Request) -> StreamResponse:
        count = int(request.query.split("=")[1])

        async def chunks() -> AsyncIterator[bytes]:
            try:
                for i in range(count):
                    yield b"data: %d\n\n" % i
                    await asyncio.sleep(0)
            finally:
                streams_closed.release()

        return StreamResponse(chunks())

    async def broken(request: Request) -> StreamResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"data: first\n\n"
            raise ConnectionError("upstream died mid-answer")

        return StreamResponse(chunks())

    async def item(request: Request) -> Response:
        return json_response({"id": request.params["item_id"]})

    async def hang(request: Request) -> Response:
        await answer_now.wait()
        return json_response({"late": True})

    def ended(route: str, how: str) -> None:
        handler_ends.append((route, how))
        handler_ended.release()

    async def wait(request: Request) -> Response:  # never answers unless cancelled
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            ended("/wait", "cancelled")
            raise
        return json_response({})

    async def finish(request: Request) -> Response:  # registered as not cancellable
        try:
            await finish_now.wait()
        except asyncio.CancelledError:
            ended("/finish", "cancelled")
            raise
        ended("/finish", "finished")
        return json_response({"finished": True})

    async def stall(request: Request) -> StreamResponse:  # one event, then nothing
        async def chunks() -> AsyncIterator[bytes]:
            try:
                yield b"data: first\n\n"
                await asyncio.Event().wait()
                yield b"data: never\n\n"
            finally:
                ended("/stall", "closed")

        return StreamResponse(chunks())

    server.route("POST", "/echo", echo)
    server.route("GET", "/crash", crash)
    server.route("GET", "/teapot", teapot)
    server.route("GET", "/events", events)
    server.route("GET", "/broken", broken)
    server.route("DELETE", "/items/{item_id}", item)
    server.route("GET", "/hang", hang)
    server.route("GET", "/wait", wait)
    server.route("GET", "/finish", finish, cancellable=False)
    server.route("GET", "/stall", stall)


@pytest.fixture
def running() -> Iterator[Running]:
    server = Running(build)
    yield server
    server.stop()


def test_routes_json_and_errors_keep_the_server_serving(running: Running) -> None:
    with httpx.Client(base_url=running.url) as client:
        assert client.post("/echo?x=1", json={"a": 1}).json() == {
            "got": {"a": 1},
            "path": "/echo",
            "q": "x=1",
        }
        assert client.delete("/items/42").json() == {"id": "42"}
        missing = client.get("/nope")
        assert (
            missing.status_code == 404
            and "no route GET /nope" in missing.json()["error"]["message"]
        )
        assert client.get("/echo").status_code == 405
        bad_json = client.post("/echo", content=b"{not json")
        assert (
            bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]["message"]
        )
        crashed = client.get("/crash")
        assert crashed.status_code == 500 and "handler bug" in crashed.json()["error"]["message"]
        assert client.get("/teapot").status_code == 418
        too_big = client.post("/echo", content=b"x" * 5000)  # max_body is 1024
        assert too_big.status_code == 413
        assert client.post("/echo", json={"still": "serving"}).json()["got"] == {"still": "serving"}


def test_malformed_http_gets_400_and_the_server_keeps_serving(running: Running) -> None:
    with socket.create_connection(("127.0.0.1", running.port)) as raw:
        raw.sendall(b"THIS IS NOT HTTP\r\n\r\n")
        reply = raw.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400")
    assert httpx.post(running.url + "/echo", json=1).json()["got"] == 1


def test_streamed_responses_arrive_whole_and_stop_when_the_client_leaves(running: Running) -> None:
    with httpx.stream("GET", running.url + "/events?n=50") as response:
        assert response.headers["transfer-encoding"] == "chunked"
        lines = [line for line in response.iter_lines() if line]
    assert lines == [f"data: {i}" for i in range(50)]
    assert streams_closed.acquire(timeout=10)
    with httpx.stream("GET", running.url + "/events?n=100000000") as response:
        next(response.iter_lines())  # read one event, then hang up
    # the server notices the hang-up and closes the generator instead of producing 10^8 events
    assert streams_closed.acquire(timeout=10)


def _hang_up_after(url: str, head_only: bool) -> None:
    """Send a GET, read the answer's head and first event (or nothing), then disconnect."""
    parsed = httpx.URL(url)
    assert parsed.port is not None
    with socket.create_connection(("127.0.0.1", parsed.port), timeout=10) as raw:
        raw.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % parsed.raw_path)
        if not head_only:
            received = b""
            while b"data: first" not in received:
                received += raw.recv(4096)


def _ended() -> tuple[str, str]:
    assert handler_ended.acquire(timeout=10), "no handler ended"
    return handler_ends.pop(0)


def test_a_client_that_disconnects_cancels_what_its_handler_awaits(running: Running) -> None:
    """No answer (nor next chunk) has to come first: the handler's await is cancelled as
    soon as the connection is gone, and the server goes on serving."""
    _hang_up_after(running.url + "/wait", head_only=True)
    assert _ended() == ("/wait", "cancelled")
    _hang_up_after(running.url + "/stall", head_only=False)  # its producer awaits for ever
    assert _ended() == ("/stall", "closed")
    assert httpx.post(running.url + "/echo", json=1).json()["got"] == 1


def test_a_route_that_is_not_cancellable_runs_to_its_end(running: Running) -> None:
    _hang_up_after(running.url + "/finish", head_only=True)
    deadline = time.monotonic() + 10
    while running.server.connections:  # until the server has seen the client go
        assert not handler_ended.acquire(timeout=0.01), handler_ends
        assert time.monotonic() < deadline, "the server did not notice the client leave"
    running.loop.call_soon_threadsafe(finish_now.set)
    assert _ended() == ("/finish", "finished")


def test_pool_reuses_connections_streams_and_reports_unreachable_servers(running: Running) -> None:
    async def scenario() -> tuple[Any, ...]:
        pool = HttpPool("127.0.0.1", running.port)
        first = await pool.request(
            "POST", "/echo", orjson.dumps({"n": 1}), {"content-type": "application/json"}
        )
        second = await pool.request("POST", "/echo", orjson.dumps({"n": 2}))
        reused = len(pool._idle)
        streamed = await pool.request("GET", "/events?n=3", stream=True)
        assert streamed.chunks is not None
        body = b"".join([c async for c in streamed.chunks])
        await pool.close()
        dead = HttpPool("127.0.0.1", 1)
        try:
            await dead.request("GET", "/")
        except BackendUnavailable as exc:
            error = str(exc)
        return first, second, reused, body, error

    first, second, reused, body, error = running.call(scenario())
    assert orjson.loads(first.body)["got"] == {"n": 1} and orjson.loads(second.body)["got"] == {
        "n": 2
    }
    assert reused == 1  # both requests went over one kept-alive connection
    assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert "127.0.0.1:1: cannot connect" in error


def test_a_request_without_an_answer_in_time_fails_and_the_pool_goes_on(running: Running) -> None:
    async def scenario() -> tuple[BaseException, Any, int, bool]:
        pool = HttpPool("127.0.0.1", running.port)
        try:
            await pool.request("GET", "/hang", timeout_s=0.2)
        except BackendUnavailable as exc:
            error: BaseException = exc
        after = await pool.request("POST", "/echo", b"{}", timeout_s=5)
        timed = len(pool._timed)
        sweeper = pool._sweeper
        if sweeper is not None:
            await sweeper  # it ends once no answer is awaited
        answer_now.set()  # let the server's handler finish (it answers a closed connection)
        await pool.close()
        return error, after, timed, sweeper is None or sweeper.done()

    error, after, timed, swept = running.call(scenario())
    assert isinstance(error, BackendTimeout) and isinstance(error, TimeoutError)
    assert "no answer within 0.2 s" in str(error)
    assert after.status == 200 and timed == 0 and swept


def test_a_stream_whose_producer_fails_is_cut_off_not_left_hanging(running: Running) -> None:
    """The client sees the answer end (an incomplete chunked body) instead of waiting."""
    with httpx.Client(base_url=running.url, timeout=10) as client:
        with pytest.raises(httpx.RemoteProtocolError), client.stream("GET", "/broken") as answer:
            assert answer.status_code == 200
            for _ in answer.iter_lines():
                pass
        assert client.post("/echo", json=2).json()["got"] == 2  # still serving


def test_a_stalled_body_gets_408_and_errors_are_sage_errors() -> None:
    from sage.common.errors import SageError

    assert issubclass(HttpError, SageError)
    thread = LoopThread("test-http-stall")
    server = HttpServer("stall", read_timeout_s=0.3)

    async def echo(request: Request) -> Response:
        return json_response({"size": len(request.body)})

    server.route("POST", "/echo", echo)
    port = thread.call(server.start(), timeout=10)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
            raw.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
            reply = b""
            while chunk := raw.recv(4096):  # until the server closes it
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 408")
        assert httpx.post(f"http://127.0.0.1:{port}/echo", content=b"0123456789").json() == {
            "size": 10
        }
    finally:
        thread.call(server.close(), timeout=10)
        thread.stop()
