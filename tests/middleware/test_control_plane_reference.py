"""``ControlPlaneVLLMService`` with the SAGE reference's config keys (``routing_strategy``,
``default_priority``, ``default_slo_deadline_ms``, ``default_max_tokens``), calls
(``show_instances``, ``health_check_all``, ``process``) and metric keys.

Real stub engine servers on free loopback ports behind the service's real gateway. Each
default is checked where it lands: ``max_tokens`` as the engine received it, priority and
SLO in the gateway's per-class figures (classes are named ``<kind>:p<priority>``), the
routing policy by which engine server answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from enum import Enum
from typing import Any

import pytest
from control_plane_servers import StubServers

from sage.common.concurrency import LoopThread
from sage.common.config.ports import SagePorts
from sage.common.core.functions.map_function import MapFunction
from sage.common.errors import ConfigError, GatewayError, ServiceError
from sage.inference.engines.base import Delta, SamplingParams, prompt_text
from sage.inference.engines.server import EngineServer
from sage.inference.engines.stub import StubEmbeddingEngine, StubLLMEngine
from sage.kernel.api.local_environment import LocalEnvironment
from sage.middleware.services.control_plane import ControlPlaneVLLMService, parse_service_config
from sage.middleware.services.control_plane_config import PRIORITY_NAMES

LLM, EMB, DEAD = "ref-llm", "ref-emb", "ref-dead"
IDS = ["llm-a", "llm-b", "emb"]


class RecordingLLMEngine(StubLLMEngine):
    """The LLM stub, noting the ``max_tokens`` of each request it gets; a prompt (or
    message) containing ``FAIL`` makes it raise, so its server answers 500."""

    def __init__(self, seen: list[int], model: str = LLM) -> None:
        super().__init__(model)
        self.seen = seen

    async def generate(
        self,
        params: SamplingParams,
        *,
        messages: Sequence[dict[str, Any]] | None = None,
        prompt: str | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> AsyncIterator[Delta]:
        self.seen.append(params.max_tokens)
        if "FAIL" in prompt_text(messages, prompt):
            raise RuntimeError("the test asked this engine to fail")
        async for delta in super().generate(params, messages=messages, prompt=prompt, tools=tools):
            yield delta


class Engines(StubServers):
    """Two recording LLM stub servers, an embedding stub server, and a free port nobody serves."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        super().__init__(
            LoopThread("sage-test-reference-engines"),
            [RecordingLLMEngine(self.seen) for _ in range(2)],
            StubEmbeddingEngine(EMB),
        )
        self.dead_port = SagePorts.any_free_port()

    def config(self, *, dead: bool = False, **top: Any) -> dict[str, Any]:
        """A reference-shaped config over these servers (plus the dead port if asked)."""
        instances = self.instances()
        if dead:
            instances.append({"instance_id": "dead", "port": self.dead_port, "model_name": DEAD})
        return {"scheduling_policy": "fifo", "instances": instances, **top}


@pytest.fixture
def engines() -> Iterator[Engines]:
    e = Engines()
    yield e
    e.close()


def class_counts(metrics: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Per gateway class: (requests, requests with an SLO)."""
    return {name: (c["requests"], c["slo_requests"]) for name, c in metrics["classes"].items()}


# -- the request defaults, end to end ----------------------------------------------------------


def test_request_defaults_reach_the_engine_and_the_gateway(engines: Engines) -> None:
    config = engines.config(
        default_priority="HIGH", default_slo_deadline_ms=600_000, default_max_tokens=2
    )
    with ControlPlaneVLLMService(config) as service:
        assert service.config.default_priority == 1  # HIGH on our scale (lower first)
        assert service.generate("hello") == "This is"
        assert service.chat([{"role": "user", "content": "hi"}]) == "This is"
        assert "".join(service.generate("streamed", stream=True)) == "This is"
        assert asyncio.run(service.achat("from a coroutine")) == "This is"
        # what the call passes wins over the defaults; the reference's spellings work
        assert service.generate("own", max_tokens=3, priority=4, slo_ms=1000) == "This is the"
        assert service.generate("named", priority="low", slo_deadline_ms=900_000) == "This is"
        assert len(service.embed(["one"])) == 1
        # max_tokens as the engine received it
        assert engines.seen == [2, 2, 2, 2, 3, 2]
        # priority and SLO as the gateway saw them: its classes are <kind>:p<priority>
        assert class_counts(service.get_metrics()) == {
            "llm:p1": (4, 4),
            "llm:p4": (1, 1),
            "llm:p3": (1, 1),
            "embedding:p1": (1, 1),
        }


def test_without_the_reference_keys_requests_keep_our_defaults(engines: Engines) -> None:
    with ControlPlaneVLLMService(engines.config()) as service:
        assert service.generate("plain") == "This is the stub engine answering at once."
        metrics = service.get_metrics()
        assert class_counts(metrics) == {"llm:p0": (1, 0)}  # priority 0, no SLO
        assert metrics["routing"]["policy"] == "least_loaded"
        assert engines.seen == [256]  # the client's own default


@pytest.mark.parametrize(
    ("strategy", "policy", "per_instance", "session_hits"),
    [
        ("load_balanced", "least_loaded", [4, 0], 0),  # ties go to the first instance
        ("round_robin", "round_robin", [2, 2], 0),
        ("affinity", "session", [2, 2], 2),  # each user stays where it started
    ],
)
def test_routing_strategy_decides_where_requests_run(
    engines: Engines, strategy: str, policy: str, per_instance: list[int], session_hits: int
) -> None:
    with ControlPlaneVLLMService(engines.config(routing_strategy=strategy)) as service:
        for user in ("alice", "bob", "alice", "bob"):
            assert service.generate(f"from {user}", max_tokens=1, user=user) == "This"
        routing = service.get_metrics()["routing"]
    assert routing["policy"] == policy
    assert engines.llm_requests() == per_instance
    assert routing["session_hits"] == session_hits


# -- bad values ------------------------------------------------------------------------------

GOOD = {"instance_id": "llm-1", "port": 8001, "model_name": "m"}


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        (
            {"routing_strategy": "topology_aware"},
            r"routing_strategy='topology_aware' has no equivalent here \(instances here are "
            r"plain HTTP endpoints.*\); use one of: least_loaded \(or load_balanced\), "
            r"round_robin, prefix_aware \(or cache_aware\), session \(or affinity\)",
        ),
        ({"routing_strategy": "locality"}, r"routing_strategy='locality' has no equivalent.*"),
        ({"routing_strategy": "fastest"}, r"routing_strategy='fastest' is unknown; use one of"),
        ({"routing_strategy": 3}, r"routing_strategy=3 is unknown"),
        (
            {"default_priority": "URGENT"},
            r"default_priority='URGENT' is invalid; use an integer \(lower is served first\) "
            r"or one of CRITICAL \(0\), HIGH \(1\), NORMAL \(2\), LOW \(3\), BACKGROUND \(4\)",
        ),
        ({"default_priority": True}, r"default_priority=True is invalid"),
        ({"default_priority": 1.5}, r"default_priority=1.5 is invalid"),
        ({"default_priority": 2**63}, r"default_priority=9223372036854775808 is invalid"),
        (
            {"default_slo_deadline_ms": 0},
            r"default_slo_deadline_ms=0 is invalid; use a positive number of milliseconds, "
            r"or None for no deadline",
        ),
        ({"default_slo_deadline_ms": "1s"}, r"default_slo_deadline_ms='1s' is invalid"),
        ({"default_slo_deadline_ms": float("inf")}, r"default_slo_deadline_ms=inf is invalid"),
        (
            {"default_max_tokens": 0},
            r"default_max_tokens=0 is invalid; use an integer >= 1",
        ),
        ({"default_max_tokens": "512"}, r"default_max_tokens='512' is invalid"),
        ({"default_max_tokens": False}, r"default_max_tokens=False is invalid"),
        (
            {"routing_stratgy": "round_robin"},
            r"unknown key 'routing_stratgy' \(did you mean 'routing_strategy'\?\)",
        ),
        ({"enable_pd_separation": True}, r"unknown key 'enable_pd_separation'; valid keys"),
    ],
)
def test_bad_reference_values_name_the_key_and_the_fix(top: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        ControlPlaneVLLMService({"instances": [GOOD], **top})


class ReferencePriority(Enum):  # the shape of the reference's RequestPriority
    CRITICAL = 0
    BACKGROUND = 4


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        ({}, ("least_loaded", 0, None, None)),
        ({"routing_strategy": "load_balanced"}, ("least_loaded", 0, None, None)),
        ({"routing_strategy": "Round-Robin"}, ("round_robin", 0, None, None)),
        ({"routing_strategy": "cache_aware"}, ("prefix_aware", 0, None, None)),
        (
            {"routing_strategy": "affinity", "default_priority": "normal"},
            ("session", 2, None, None),
        ),
        ({"default_priority": ReferencePriority.BACKGROUND}, ("least_loaded", 4, None, None)),
        ({"default_priority": -3, "default_slo_deadline_ms": 250}, ("least_loaded", -3, 250, None)),
        (
            {"default_max_tokens": 512, "default_slo_deadline_ms": None},
            ("least_loaded", 0, None, 512),
        ),
    ],
)
def test_reference_values_map_onto_ours(top: dict[str, Any], expected: tuple[Any, ...]) -> None:
    parsed = parse_service_config({"instances": [GOOD], **top})
    got = (
        parsed.routing_policy,
        parsed.default_priority,
        parsed.default_slo_ms,
        parsed.default_max_tokens,
    )
    assert got == expected
    server = parsed.server_config()  # what the gateway is given
    assert (server.routing_policy, server.default_priority, server.default_slo_ms) == got[:3]


def test_priority_names_are_the_reference_scale_lowest_first() -> None:
    # the reference's RequestPriority: CRITICAL=0 ... BACKGROUND=4, lower served first, as ours
    assert PRIORITY_NAMES == {"CRITICAL": 0, "HIGH": 1, "NORMAL": 2, "LOW": 3, "BACKGROUND": 4}
    options = parse_service_config({"instances": [GOOD]}).request_options(
        {"priority": "Background", "slo_deadline_ms": 50, "max_tokens": None}
    )
    assert options == {"priority": 4, "slo_ms": 50, "max_tokens": None}  # no default set


def test_bad_calls_are_refused_before_anything_is_sent() -> None:
    service = ControlPlaneVLLMService({"instances": [GOOD]})  # not set up: nothing to send to
    with pytest.raises(ConfigError, match=r"priority='URGENT' is invalid; use an integer"):
        service.generate("x", priority="URGENT")
    with pytest.raises(ConfigError, match=r"slo_ms and slo_deadline_ms are one setting"):
        service.chat("x", slo_ms=100, slo_deadline_ms=200)
    for call in (service.show_instances, service.health_check_all):
        with pytest.raises(ServiceError, match=r"call setup\(\) first"):
            call()
    with pytest.raises(ServiceError, match=r"call setup\(\) first"):
        service.process({"task": "generate", "prompt": "x"})


# -- show_instances, health_check_all ----------------------------------------------------------


def test_show_instances_and_health_check_all_probe_every_instance_now(
    engines: Engines, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with ControlPlaneVLLMService(engines.config(dead=True)) as service:
        assert service.generate("count me", max_tokens=1) == "This"
        rows = {row["instance_id"]: row for row in service.show_instances()}
        assert sorted(rows) == ["dead", "emb", "llm-a", "llm-b"]
        a, dead = rows["llm-a"], rows["dead"]
        assert (a["host"], a["port"], a["model_name"], a["instance_type"]) == (
            "127.0.0.1",
            engines.ports[0],
            LLM,
            "llm",
        )
        assert (a["healthy"], a["is_healthy"], a["is_available"], a["requests"]) == (
            True,
            True,
            True,
            1,  # least loaded: the first instance took it
        )
        assert (a["in_flight"], a["active_requests"], a["current_load"]) == (0, 0, 0.0)
        assert (dead["healthy"], dead["is_healthy"], dead["is_available"]) == (False,) * 3
        assert dead["port"] == engines.dead_port and dead["last_error"]
        (table,) = [r.getMessage() for r in caplog.records if "instances of the" in r.getMessage()]
        lines = table.splitlines()
        assert lines[1].split()[:2] == ["instance", "model"]
        rows_shown = [line.split() for line in lines[2:] if not line.startswith("  ")]
        assert [row[0] for row in rows_shown] == ["llm-a", "llm-b", "dead", "emb"]  # LLMs first
        assert [row[4] for row in rows_shown] == ["yes", "yes", "NO", "yes"]
        after_dead = lines[lines.index(next(line for line in lines if line.startswith("dead"))) + 1]
        assert after_dead.lstrip().startswith("└ ") and "cannot connect" in after_dead

        assert service.health_check_all() == {
            "llm-a": True,
            "llm-b": True,
            "emb": True,
            "dead": False,
        }
        # now one starts answering and another stops: the next check sees both at once
        engines.start(EngineServer(RecordingLLMEngine([], DEAD), port=engines.dead_port))
        engines.stop(engines.llm[1])
        expected = {"llm-a": True, "llm-b": False, "emb": True, "dead": True}
        assert service.health_check_all() == expected
        assert asyncio.run(service.ahealth_check_all()) == expected
        assert service.process({"task": "health_check"}) == expected
        assert service.generate("revived", model=DEAD, max_tokens=1) == "This"
        assert not {r["instance_id"]: r for r in service.show_instances()}["llm-b"]["healthy"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "health check: 3 of 4 instances healthy; down: dead" in warnings
    assert "health check: 3 of 4 instances healthy; down: llm-b" in warnings


# -- process() ------------------------------------------------------------------------------


def test_process_runs_each_task(engines: Engines) -> None:
    with ControlPlaneVLLMService(engines.config(default_max_tokens=2)) as service:
        assert service.process({"task": "generate", "prompt": "Hi"}) == {"text": "This is"}
        assert service.process(
            {"task": "generate", "prompt": "Hi", "max_tokens": 3, "priority": "HIGH"}
        ) == {"text": "This is the"}
        # the reference's form: task defaults to generate, input in 'inputs', 'options'
        assert service.process({"inputs": "Hi", "options": {"max_tokens": 1}}) == {"text": "This"}
        chat = {"task": "chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        assert service.process(chat) == {"text": "This is the stub"}
        assert service.process({"task": "chat", "inputs": "Hi"}) == {"text": "This is"}
        embedded = service.process({"task": "embed", "texts": ["one", "two"]})
        assert embedded == {"embeddings": service.embed(["one", "two"])}
        assert len(embedded["embeddings"]) == 2
        one = service.process({"task": "embed", "texts": "one", "model": EMB})
        assert one == {"embeddings": [service.embed("one")]}
        assert engines.seen == [2, 3, 1, 4, 2]

        shown = service.process({"task": "show_instances"})
        assert [row["instance_id"] for row in shown] == IDS
        assert service.process({"task": "health_check"}) == dict.fromkeys(IDS, True)
        metrics = service.process({"task": "get_metrics"})
        assert metrics["completed_requests"] == 9  # 5 LLM requests, 4 embedding calls
        assert class_counts(metrics) == {"llm:p0": (4, 0), "llm:p1": (1, 0), "embedding:p0": (4, 0)}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            {"task": "generat", "prompt": "x"},
            r"process\(\): unknown task 'generat' \(did you mean 'generate'\?\); accepted "
            r"tasks: generate, chat, embed, show_instances, health_check, get_metrics",
        ),
        ({"task": "translate"}, r"unknown task 'translate'; accepted tasks: generate, chat"),
        (
            {"task": "generate"},
            r"task 'generate' needs 'prompt' \(or the reference's 'inputs'\), e.g. ",
        ),
        ({"task": "chat", "prompt": "x"}, r"task 'chat' needs 'messages'"),
        ({"task": "embed"}, r"task 'embed' needs 'texts'"),
        ({"task": "generate", "prompt": ["a"]}, r"'prompt' of task 'generate' must be a string"),
        ({"task": "embed", "texts": [1]}, r"'texts' of task 'embed' must be a string or a list"),
        ({"task": "chat", "messages": 3}, r"'messages' of task 'chat' must be a string or a list"),
        ({"prompt": "x", "inputs": "y"}, r"'prompt' and 'inputs' are one field"),
        ({"prompt": "x", "stream": True}, r"'stream' is not supported here"),
        (
            {"task": "embed", "texts": "x", "max_tokens": 3},
            r"task 'embed' takes only 'model' beside 'texts', got max_tokens",
        ),
        ({"prompt": "x", "options": [1]}, r"'options' is list; pass a dict"),
        (
            {"prompt": "x", "max_tokens": 1, "options": {"max_tokens": 2}},
            r"option 'max_tokens' is given both in 'options' and beside it",
        ),
        (
            {"task": "get_metrics", "verbose": True},
            r"task 'get_metrics' takes no other fields, got verbose",
        ),
        ({"prompt": "x", "priority": "URGENT"}, r"priority='URGENT' is invalid"),
    ],
)
def test_process_refuses_bad_payloads_naming_the_field(
    payload: dict[str, Any], expected: str
) -> None:
    service = ControlPlaneVLLMService({"instances": [GOOD]})  # refused before any request
    with pytest.raises(ConfigError, match=expected):
        service.process(payload)


def test_process_refuses_a_payload_that_is_not_a_dict() -> None:
    service = ControlPlaneVLLMService({"instances": [GOOD]})
    with pytest.raises(ConfigError, match=r"process\(\) takes a dict such as .* not list"):
        service.process(["generate", "x"])  # type: ignore[arg-type]


class AskByTask(MapFunction):
    def execute(self, prompt: str) -> str:
        answer: dict[str, str] = self.call_service("llm", {"task": "generate", "prompt": prompt})
        return answer["text"]


def test_process_is_the_default_method_of_a_registered_service(engines: Engines) -> None:
    env = LocalEnvironment("control-plane-reference")
    env.register_service("llm", ControlPlaneVLLMService, engines.config(default_max_tokens=1))
    out: list[str] = []
    env.from_collection(["a", "b", "c"]).map(AskByTask).sink(out.append)
    env.submit()
    assert out == ["This"] * 3
    assert engines.seen == [1, 1, 1]


# -- metrics ----------------------------------------------------------------------------------


def test_reference_metrics_follow_the_requests(engines: Engines) -> None:
    with ControlPlaneVLLMService(engines.config()) as service:
        before = service.get_metrics()
        assert {k: before[k] for k in REFERENCE_KEYS} == {
            "completed_requests": 0,
            "failed_requests": 0,
            "active_requests": 0,
            "avg_latency_ms": 0.0,
            "slo_compliance_rate": 1.0,  # no request had an SLO, so none missed one
            "slo_requests": 0,
            "requests_per_second": 0.0,
        }
        assert service.generate("one", max_tokens=1) == "This"
        assert service.chat("two", max_tokens=1) == "This"
        service.embed("three")
        after = service.get_metrics()
        assert (after["completed_requests"], after["failed_requests"]) == (3, 0)
        assert after["avg_latency_ms"] > 0 and after["requests_per_second"] > 0
        assert (after["slo_compliance_rate"], after["slo_requests"]) == (1.0, 0)

        # one request with an SLO answered, one with an SLO failed: failed, and missed
        assert service.generate("in time", max_tokens=1, slo_ms=600_000) == "This"
        with pytest.raises(GatewayError) as failed:
            service.generate("FAIL here", max_tokens=1, slo_ms=600_000)
        assert failed.value.status == 500
        final = service.get_metrics()
        assert (final["completed_requests"], final["failed_requests"]) == (4, 1)
        assert (final["slo_compliance_rate"], final["slo_requests"]) == (0.5, 2)
        assert final["total_requests"] == 5 and final["active_requests"] == 0
        assert sum(row["errors"] for row in final["instances"]) == 1
        # the existing keys stay beside the reference's
        assert {"total_requests", "rejected", "policy", "instances", "classes"} <= set(final)


REFERENCE_KEYS = (
    "completed_requests",
    "failed_requests",
    "active_requests",
    "avg_latency_ms",
    "slo_compliance_rate",
    "slo_requests",
    "requests_per_second",
)
