"""The HTTP server's ``authorize`` hook: a refused request is answered from its head, its body
never read; the connection stays usable (no body) or half-closes cleanly (a body announced)."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping

import httpx
import orjson
import pytest

from sage.common.concurrency import LoopThread
from sage.common.http import HttpError, HttpServer, Request, Response, json_response

KEY = "let-me-in"
HUGE = 200_000_000  # announced, never sent
GUARD_S = 10.0  # socket timeout: only a guard against a hang, never a measured time


class Authed:
    """An HttpServer whose hook admits requests carrying ``x-key: let-me-in``."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str]]] = []  # what the hook was shown
        self.handled: list[tuple[str, int]] = []  # (path, body size) of requests handled
        self.thread = LoopThread("test-http-auth")
        self.server = HttpServer("test-auth", max_body=64 * 1024 * 1024, authorize=self.authorize)

        async def echo(request: Request) -> Response:
            self.handled.append((request.path, len(request.body)))
            return json_response({"path": request.path, "size": len(request.body)})

        self.server.route("POST", "/upload", echo)
        self.server.route("GET", "/item", echo)
        self.server.route("GET", "/public", echo)
        self.port: int = self.thread.call(self.server.start(), timeout=10)

    def authorize(self, method: str, path: str, headers: Mapping[str, str]) -> HttpError | None:
        self.seen.append((method, path, dict(headers)))
        if path == "/public" or headers.get("x-key") == KEY:
            return None
        if headers.get("x-key") == "crash":
            raise RuntimeError("hook bug")
        if headers.get("x-key") == "custom":
            return HttpError(403, "custom", b'{"custom": true}', {"www-authenticate": "Key"})
        return HttpError(401, "missing or wrong key")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.thread.call(self.server.close(), timeout=10)
        self.thread.stop()


@pytest.fixture
def authed() -> Iterator[Authed]:
    server = Authed()
    yield server
    server.stop()


def connect(port: int) -> socket.socket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=GUARD_S)
    raw.settimeout(GUARD_S)
    return raw


def read_response(raw: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response (with a ``content-length``) from ``raw``; what follows stays in ``buffer``."""
    while b"\r\n\r\n" not in buffer:
        chunk = raw.recv(65536)
        assert chunk, f"connection closed before a whole response head: {bytes(buffer)!r}"
        buffer += chunk
    head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    start = len(head) + 4
    end = start + int(headers["content-length"])
    while len(buffer) < end:
        chunk = raw.recv(65536)
        assert chunk, "connection closed before the whole response body"
        buffer += chunk
    body = bytes(buffer[start:end])
    del buffer[:end]
    return status, headers, body


def read_to_end(raw: socket.socket, buffer: bytearray) -> bytes:
    """Whatever is left until the server ends the stream (a timeout fails the test)."""
    while chunk := raw.recv(65536):
        buffer += chunk
    return bytes(buffer)


def huge_upload_head(path: str = "/upload", key: str | None = None) -> bytes:
    auth = f"x-key: {key}\r\n" if key is not None else ""
    return (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{auth}"
        f"content-type: application/octet-stream\r\ncontent-length: {HUGE}\r\n\r\n"
    ).encode()


def test_a_refused_upload_is_answered_from_its_head_and_its_body_is_never_read(
    authed: Authed,
) -> None:
    buffer = bytearray()
    with connect(authed.port) as raw:
        raw.sendall(huge_upload_head() + b"only a few bytes of the body")
        status, headers, body = read_response(raw, buffer)
        assert status == 401
        assert headers["connection"] == "close"
        error = orjson.loads(body)["error"]
        assert error == {"message": "missing or wrong key", "type": "http_error", "code": "401"}
        # the server half-closed: the stream ends (no reset), nothing more comes
        assert read_to_end(raw, buffer) == b""
    assert authed.handled == []
    assert [(m, p) for m, p, _ in authed.seen] == [("POST", "/upload")]
    assert authed.seen[0][2]["content-length"] == str(HUGE)  # headers, lower-cased names
    ok = httpx.post(authed.url + "/upload", content=b"x" * 10, headers={"x-key": KEY})
    assert ok.json() == {"path": "/upload", "size": 10}  # the server still serves


def test_a_refused_request_without_a_body_keeps_the_connection(authed: Authed) -> None:
    buffer = bytearray()
    with connect(authed.port) as raw:
        raw.sendall(b"GET /item?x=1 HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        status, headers, _ = read_response(raw, buffer)
        assert status == 401 and "connection" not in headers
        raw.sendall(f"GET /item HTTP/1.1\r\nhost: 127.0.0.1\r\nx-key: {KEY}\r\n\r\n".encode())
        status, _, body = read_response(raw, buffer)
        assert status == 200 and orjson.loads(body)["path"] == "/item"
    assert authed.handled == [("/item", 0)]


def test_pipelined_requests_are_answered_in_order_up_to_the_refused_upload(
    authed: Authed,
) -> None:
    admitted = f"GET /item HTTP/1.1\r\nhost: 127.0.0.1\r\nx-key: {KEY}\r\n\r\n".encode()
    after = b"GET /public HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"  # part of the refused body
    buffer = bytearray()
    with connect(authed.port) as raw:
        raw.sendall(admitted + huge_upload_head() + after)
        assert read_response(raw, buffer)[0] == 200
        assert read_response(raw, buffer)[0] == 401
        assert read_to_end(raw, buffer) == b""
    assert authed.handled == [("/item", 0)]


def test_a_refused_chunked_upload_is_not_read_either(authed: Authed) -> None:
    buffer = bytearray()
    with connect(authed.port) as raw:
        raw.sendall(
            b"POST /upload HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n"
        )
        assert read_response(raw, buffer)[0] == 401
        assert read_to_end(raw, buffer) == b""
    assert authed.handled == []


def test_an_http_client_uploading_without_the_key_gets_the_answer_not_a_reset(
    authed: Authed,
) -> None:
    refused = httpx.post(authed.url + "/upload", content=b"x" * (16 * 1024 * 1024))
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "missing or wrong key"
    assert authed.handled == []


def test_the_hook_s_error_is_sent_as_is_and_a_crashing_hook_refuses(authed: Authed) -> None:
    custom = httpx.post(authed.url + "/upload", content=b"x", headers={"x-key": "custom"})
    assert custom.status_code == 403 and custom.json() == {"custom": True}
    assert custom.headers["www-authenticate"] == "Key"
    crashed = httpx.get(authed.url + "/item", headers={"x-key": "crash"})
    assert crashed.status_code == 500 and "hook bug" in crashed.json()["error"]["message"]
    assert httpx.get(authed.url + "/public").status_code == 200  # the hook decides per path
    assert httpx.get(authed.url + "/nowhere").status_code == 401  # unknown paths: refused too
    assert authed.handled == [("/public", 0)]
