"""The SAGE reference's names on the gateway: ``UnifiedServerConfig(request_timeout=...,
log_level=...)`` and ``UnifiedAPIServer.start(block=...)``, ``is_running()``, ``get_status()``.

The instance behind the gateway is a small fake OpenAI server whose chat answers wait for
the test's ``release`` event, so a request outlives ``request_timeout`` on purpose.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator

import httpx
import pytest

from sage.common.concurrency import LoopThread
from sage.common.errors import ConfigError
from sage.common.http import HttpServer, Request, Response, json_response
from sage.inference.config import BackendInstanceConfig, UnifiedServerConfig
from sage.inference.gateway.server import UnifiedAPIServer

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


class SlowInstance:
    """Answers ``/v1/models`` at once; a chat only once ``release`` is set."""

    def __init__(self, loop: LoopThread) -> None:
        self.loop = loop
        self.release = asyncio.Event()
        self.server = HttpServer("slow-instance")
        self.server.route("GET", "/v1/models", self._models)
        self.server.route("POST", "/v1/chat/completions", self._chat)
        self.port = loop.call(self.server.start(), timeout=10)

    async def _models(self, request: Request) -> Response:
        return json_response({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    async def _chat(self, request: Request) -> Response:
        await self.release.wait()
        return json_response({"id": "c", "model": "fake", "choices": []})

    def close(self) -> None:
        self.loop.loop.call_soon_threadsafe(self.release.set)
        self.loop.call(self.server.close(), timeout=30)


@pytest.fixture
def instance() -> Iterator[SlowInstance]:
    loop = LoopThread("test-slow-instance")
    fake = SlowInstance(loop)
    yield fake
    fake.close()
    loop.stop()


@pytest.fixture
def inference_logger() -> Iterator[logging.Logger]:
    """The ``sage.inference`` logger, its level restored afterwards (it is process-wide)."""
    logger = logging.getLogger("sage.inference")
    level = logger.level
    yield logger
    logger.setLevel(level)


def config_for(instance: SlowInstance, **options: object) -> UnifiedServerConfig:
    backend = BackendInstanceConfig(port=instance.port, model_name="fake")
    return UnifiedServerConfig(port=0, llm_backends=[backend], **options)  # type: ignore[arg-type]


# -- request_timeout ----------------------------------------------------------------------------


def test_request_timeout_is_the_backend_timeout(instance: SlowInstance) -> None:
    config = config_for(instance, request_timeout=0.2)
    assert config.request_timeout_s == 0.2
    server = UnifiedAPIServer(config)
    server.start(block=False)
    try:
        answer = httpx.post(server.get_status()["url"] + "/v1/chat/completions", json=CHAT)
        assert answer.status_code == 503
        assert "no answer within 0.2 s" in answer.json()["error"]["message"]
    finally:
        server.stop()


def test_request_timeout_and_request_timeout_s_may_agree_but_not_differ() -> None:
    assert UnifiedServerConfig(request_timeout=30, request_timeout_s=30).request_timeout_s == 30
    assert UnifiedServerConfig(request_timeout_s=45).request_timeout_s == 45
    assert UnifiedServerConfig().request_timeout_s == 600
    with pytest.raises(ConfigError, match=r"request_timeout=30 and request_timeout_s=45"):
        UnifiedServerConfig(request_timeout=30, request_timeout_s=45)


@pytest.mark.parametrize("value", [0, -1, "30", True])
def test_an_invalid_request_timeout_is_refused_with_the_fix(value: object) -> None:
    with pytest.raises(ConfigError, match=r"request_timeout=.* use a number of seconds > 0"):
        UnifiedServerConfig(request_timeout=value)  # type: ignore[arg-type]


# -- log_level ----------------------------------------------------------------------------------


def test_log_level_sets_the_inference_loggers_when_the_server_starts(
    instance: SlowInstance, inference_logger: logging.Logger
) -> None:
    inference_logger.setLevel(logging.WARNING)
    config = config_for(instance, log_level="DEBUG")
    assert config.log_level == "debug"
    server = UnifiedAPIServer(config)
    assert inference_logger.level == logging.WARNING  # not before it starts
    server.start(block=False)
    try:
        assert inference_logger.level == logging.DEBUG
        assert logging.getLogger("sage.inference.gateway.server").isEnabledFor(logging.DEBUG)
    finally:
        server.stop()


@pytest.mark.parametrize("value", ["verbose", "", 10])
def test_an_invalid_log_level_is_refused_naming_the_valid_ones(value: object) -> None:
    with pytest.raises(ConfigError, match=r"log_level=.*debug, info, warning, error"):
        UnifiedServerConfig(log_level=value)  # type: ignore[arg-type]


# -- start / is_running / get_status / stop -----------------------------------------------------


def test_start_in_the_background_then_status_and_stop(instance: SlowInstance) -> None:
    server = UnifiedAPIServer(config_for(instance))
    assert not server.is_running()
    before = server.get_status()
    assert before["running"] is False and before["health"] is None
    server.start(block=False)
    try:
        assert server.is_running()
        status = server.get_status()
        assert status["running"] is True
        assert status["host"] == "127.0.0.1"
        assert status["port"] == server.port
        assert status["url"] == status["base_url"] == f"http://127.0.0.1:{server.port}"
        assert status["health"]["instances"] == 1 and status["health"]["healthy"] == 1
        (described,) = status["instances"]
        assert described["port"] == instance.port and described["healthy"] is True
        assert status["policy"] == "fifo"
        assert httpx.get(status["url"] + "/health").json() == status["health"]
        with pytest.raises(RuntimeError, match="already running"):
            server.start(block=False)
    finally:
        server.stop()
    assert not server.is_running()  # stop() waited for the background thread
    assert server.get_status()["running"] is False


def test_start_in_the_background_raises_when_the_port_is_taken(instance: SlowInstance) -> None:
    first = UnifiedAPIServer(config_for(instance))
    first.start(block=False)
    try:
        assert first.port is not None
        backend = BackendInstanceConfig(port=instance.port, model_name="fake")
        second = UnifiedAPIServer(UnifiedServerConfig(port=first.port, llm_backends=[backend]))
        with pytest.raises(OSError):
            second.start(block=False)
        assert not second.is_running()
    finally:
        first.stop()


def test_a_blocking_start_returns_when_stopped_from_another_thread(
    instance: SlowInstance,
) -> None:
    server = UnifiedAPIServer(config_for(instance))
    returned = threading.Event()

    def serve() -> None:
        server.start(block=True)
        returned.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = server.wait_ready(timeout=30)
    assert server.is_running() and not returned.is_set()
    assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    server.stop()
    assert returned.wait(timeout=30)
    thread.join(timeout=30)
    assert not server.is_running()
