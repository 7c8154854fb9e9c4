"""``SagePorts.is_available`` and ``SagePorts.find_available_port``: the reference's names,
checked against real sockets on loopback."""

from __future__ import annotations

import inspect
import socket
from collections.abc import Iterator

import pytest

from sage.common.config.ports import SagePorts
from sage.common.errors import ConfigError


@pytest.fixture
def busy() -> Iterator[int]:
    """A loopback port something listens on for the test's duration."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_is_available_is_is_port_free(busy: int) -> None:
    assert SagePorts.is_available(busy) is False
    assert SagePorts.is_available(busy) == SagePorts.is_port_free(busy)
    free = SagePorts.any_free_port()
    assert SagePorts.is_available(free, host="127.0.0.1") is True


@pytest.mark.parametrize("function", [SagePorts.is_available, SagePorts.find_available_port])
def test_new_names_default_to_loopback(function: object) -> None:
    assert inspect.signature(function).parameters["host"].default == "127.0.0.1"  # type: ignore[arg-type]


def test_find_available_port_returns_the_first_free_in_range(busy: int) -> None:
    free = SagePorts.any_free_port()
    assert SagePorts.find_available_port(free, free) == free
    found = SagePorts.find_available_port(busy, min(busy + 50, 65535))
    assert busy < found <= busy + 50


def test_find_available_port_names_the_range_and_the_fix_when_all_are_taken(busy: int) -> None:
    with pytest.raises(
        OSError, match=rf"no free port in {busy}-{busy} on 127\.0\.0\.1.*any_free_port"
    ):
        SagePorts.find_available_port(busy, busy)


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (0, 10, r"start=0 must be a port number from 1 to 65535"),
        (10, 70000, r"end=70000 must be a port number"),
        (-5, 10, r"start=-5"),
        ("8000", 8010, r"start='8000'"),
        (True, 8010, r"start=True"),
        (9000, 8000, r"start=9000 is above end=8000; pass start <= end"),
    ],
)
def test_find_available_port_rejects_bad_ranges(start: object, end: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SagePorts.find_available_port(start, end)  # type: ignore[arg-type]


def test_any_free_port_is_outside_the_range_outgoing_connections_take() -> None:
    """A port chosen for a server started later is never one an outgoing connection made
    meanwhile could be given (the kernel's ephemeral range), nor a SAGE default."""
    path = "/proc/sys/net/ipv4/ip_local_port_range"
    try:
        with open(path, encoding="ascii") as fh:
            ephemeral = int(fh.read().split()[0])
    except OSError:
        pytest.skip(f"no {path} (not Linux)")
    chosen = {SagePorts.any_free_port() for _ in range(20)}
    assert all(20000 <= port < ephemeral for port in chosen), chosen
    assert all(SagePorts.is_port_free(port) for port in chosen)
