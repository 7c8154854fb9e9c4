"""A job's ``priority`` / ``slo_ms`` reach the inference server with every LLM and embedding
call its operators make, through a service (``LLMService``, sync and async calls) and
through a ``UnifiedInferenceClient`` of their own: the job's values, an operator's
override, nothing where none is configured; and the gateway schedules by them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from recording_server import EMBEDDING, LLM, RecordingServer
from sage.common.core.functions.map_function import MapFunction
from sage.common.core.scheduling import Scheduling, scheduling_scope
from sage.inference.client.unified import UnifiedInferenceClient
from sage.inference.deploy.stack import LocalStack
from sage.kernel.api.local_environment import LocalEnvironment
from sage.middleware.services.llm import LLMService


def recording_client(url: str) -> UnifiedInferenceClient:
    return UnifiedInferenceClient(
        mode="test",
        llm_base_url=url,
        embedding_base_url=url,
        llm_model=LLM,
        embedding_model=EMBEDDING,
    )


class ThroughService(MapFunction):
    """Chat (sync and async) and embed through the job's ``llm`` service, tagged."""

    def execute(self, tag: str) -> str:
        llm = self.call_service["llm"]
        llm.chat(f"{tag}/service-chat", max_tokens=4)
        llm.embed(f"{tag}/service-embed")
        self.call_service_async["llm"].chat(f"{tag}/service-async", max_tokens=4).result(10)
        return tag


class OwnClient(MapFunction):
    """Chat and embed through a client of its own (made in ``open``), tagged."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.url = url
        self.client: UnifiedInferenceClient | None = None

    def open(self, context: Any) -> None:
        self.client = recording_client(self.url)

    def execute(self, tag: str) -> str:
        assert self.client is not None
        self.client.chat(f"{tag}/direct-chat", max_tokens=4)
        self.client.embed(f"{tag}/direct-embed")
        return tag

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def by_tag(server: RecordingServer) -> dict[str, tuple[str | None, str | None]]:
    """What each tagged call carried: ``{"job/service-chat": (priority, slo_ms), ...}``."""
    found = {}
    for seen in server.seen:
        body = seen.body
        text = body["messages"][0]["content"] if "messages" in body else body["input"][0]
        found[text] = (seen.priority, seen.slo_ms)
    return found


def build(env: LocalEnvironment, url: str, **override: Any) -> None:
    """A pipeline calling through the service, then through its own client (with
    ``override`` as that operator's fields)."""
    env.register_service("llm", lambda: LLMService(client=recording_client(url)))
    tags = env.from_collection(["a", "b"])
    tags.map(ThroughService).map(OwnClient, url, **override).sink(lambda _: None)


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    with RecordingServer() as running:
        yield running


CALLS = ("service-chat", "service-embed", "service-async", "direct-chat", "direct-embed")


def test_job_fields_and_an_operators_override_reach_the_server(server: RecordingServer) -> None:
    env = LocalEnvironment("rag", config={"priority": 0, "slo_ms": 800})
    build(env, server.url, priority=3)
    env.submit()
    seen = by_tag(server)
    assert len(seen) == 2 * len(CALLS)
    for tag in ("a", "b"):
        for call in CALLS[:3]:
            assert seen[f"{tag}/{call}"] == ("0", "800.0"), call
        for call in CALLS[3:]:
            assert seen[f"{tag}/{call}"] == ("3", "800.0"), call  # its priority, job's SLO


def test_nothing_is_sent_where_nothing_is_configured(server: RecordingServer) -> None:
    env = LocalEnvironment("plain")
    build(env, server.url)
    env.submit()
    seen = by_tag(server)
    assert len(seen) == 2 * len(CALLS) and set(seen.values()) == {(None, None)}


def test_an_operator_alone_sets_fields_and_a_call_may_give_its_own(
    server: RecordingServer,
) -> None:
    env = LocalEnvironment("batch")
    build(env, server.url, slo_ms=60_000)
    env.submit()
    seen = by_tag(server)
    assert seen["a/service-chat"] == (None, None)
    assert seen["a/direct-chat"] == (None, "60000.0")
    with recording_client(server.url) as client, scheduling_scope(Scheduling(5, 900.0)):
        client.chat("explicit", priority=1)  # a body field: the gateway prefers it
    last = server.seen[-1]
    assert (last.priority, last.slo_ms, last.body["priority"]) == (None, "900.0", 1)


def test_the_gateway_schedules_by_the_fields_a_job_sends() -> None:
    """The real gateway over stub engines counts the requests in the job's class."""
    with LocalStack("stub-llm", "stub-emb", engine="stub") as stack:
        env = LocalEnvironment("interactive", config={"priority": 4, "slo_ms": 1000})
        url = stack.gateway_url
        env.register_service("llm", LLMService, control_plane_url=url, env_file=None)

        class Ask(MapFunction):
            def execute(self, question: str) -> str:
                self.call_service["llm"].embed(question)
                return str(self.call_service["llm"].chat(question, max_tokens=4))

        answers = env.from_collection(["q1", "q2", "q3"]).map(Ask).collect()
        env.submit()
        assert len(answers) == 3
        classes = httpx.get(f"{url}/management/metrics").json()["classes"]
    assert classes["llm:p4"]["requests"] == 3 and classes["llm:p4"]["slo_requests"] == 3
    assert classes["embedding:p4"]["requests"] == 3
