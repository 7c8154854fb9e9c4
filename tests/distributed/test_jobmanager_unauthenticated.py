"""A peer without the JobManager's token is refused from its request's head: a submission it
announces is never read (let alone unpickled), and the JobManager keeps serving its clients."""

from __future__ import annotations

import socket

import orjson
import pytest
from jobmanager_helpers import CountingFactory

from sage.kernel.jobmanager.client import JobManagerClient
from sage.kernel.jobmanager.protocol import HEALTH_PATH, JOBS_PATH, SUBMISSION_CONTENT_TYPE
from sage.kernel.jobmanager.server import JobManagerServer

ANNOUNCED = 200_000_000  # bytes the peer says it sends; it sends a few
GUARD_S = 10.0  # socket timeout: only a guard against a hang, never a measured time


pytestmark = pytest.mark.usefixtures("home")  # a fresh $SAGE_HOME, so a fresh token


def exchange(port: int, request: bytes) -> bytes:
    """Send ``request``; everything the server answers until it ends the stream."""
    with socket.create_connection(("127.0.0.1", port), timeout=GUARD_S) as raw:
        raw.settimeout(GUARD_S)
        raw.sendall(request)
        received = bytearray()
        while chunk := raw.recv(65536):
            received += chunk
    return bytes(received)


def huge_submission(authorization: str | None) -> bytes:
    auth = f"authorization: {authorization}\r\n" if authorization is not None else ""
    return (
        f"POST {JOBS_PATH} HTTP/1.1\r\nhost: 127.0.0.1\r\n{auth}"
        f"content-type: {SUBMISSION_CONTENT_TYPE}\r\ncontent-length: {ANNOUNCED}\r\n\r\n"
    ).encode() + b"\x80\x05 a few bytes of a pickle"


@pytest.mark.parametrize("authorization", [None, "Bearer not-the-token", "Basic abc"])
def test_an_unauthenticated_submission_is_refused_before_its_body_is_read(
    server: JobManagerServer, factory: CountingFactory, authorization: str | None
) -> None:
    answer = exchange(server.port, huge_submission(authorization))
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 ")
    assert b"\r\nconnection: close" in head
    error = orjson.loads(body)["error"]
    assert error["type"] == "authentication_error" and "token" in error["message"]
    assert factory.calls == [] and server.manager.jobs() == []
    with JobManagerClient(server.host, server.port) as client:  # holds the token
        assert client.list() == []
        assert client.health().jobs == 0


def test_every_path_needs_the_token_and_a_refusal_keeps_the_connection_open(
    server: JobManagerServer,
) -> None:
    requests = b"".join(
        f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{last}\r\n".encode()
        for path, last in [
            (HEALTH_PATH, ""),
            (JOBS_PATH, ""),
            ("/no/such/route", "connection: close\r\n"),
        ]
    )
    answer = exchange(server.port, requests)  # three answers on one connection
    assert answer.count(b"HTTP/1.1 401 ") == 3
    assert answer.count(b"authentication_error") == 3
