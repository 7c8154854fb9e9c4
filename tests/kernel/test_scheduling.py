"""A job's ``priority`` / ``slo_ms`` (job config, overridable per operator): validated where
given, current while each operator's code runs, and carried by service calls to the thread
that serves them (sync, async, with a timeout, through a fallback)."""

from __future__ import annotations

from typing import Any

import pytest

from sage.common.core.functions.flatmap_function import FlatMapFunction
from sage.common.core.functions.map_function import MapFunction
from sage.common.core.scheduling import (
    Scheduling,
    bind,
    current_scheduling,
    scheduling_scope,
)
from sage.common.errors import ConfigError, PlanError
from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.runtime.builder import task_scheduling
from sage.kernel.services import BaseService


def fields() -> tuple[int | None, float | None] | None:
    """The current fields as a plain tuple (``None``: none are current)."""
    now = current_scheduling()
    return None if now is None else (now.priority, now.slo_ms)


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"priority": "high"}, r"config\['priority'\]='high' is invalid; use an integer"),
        ({"priority": True}, r"config\['priority'\]=True is invalid"),
        ({"priority": 2**63}, r"config\['priority'\]=9223372036854775808 is invalid"),
        ({"priority": 1.5}, r"config\['priority'\]=1.5 is invalid"),
        ({"slo_ms": 0}, r"config\['slo_ms'\]=0 is invalid; use a finite number of milliseconds"),
        ({"slo_ms": float("nan")}, r"config\['slo_ms'\]=nan is invalid"),
        ({"slo_ms": "800"}, r"config\['slo_ms'\]='800' is invalid"),
        ({"slo": 800}, r"config key 'slo' is unknown; did you mean 'slo_ms'\?"),
        ({"priorty": 0}, r"config key 'priorty' is unknown; did you mean 'priority'\?"),
    ],
)
def test_invalid_job_fields_are_config_errors_naming_the_key_and_the_fix(
    config: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        LocalEnvironment("bad", config=config)


def test_job_fields_are_read_from_the_config() -> None:
    env = LocalEnvironment("ok", config={"priority": -3, "slo_ms": 800})
    assert env.job_config.scheduling == Scheduling(-3, 800.0)
    assert LocalEnvironment("none").job_config.scheduling is None
    assert LocalEnvironment("one", config={"slo_ms": 5}).job_config.scheduling == Scheduling(
        None, 5.0
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"priority": "0"}, r"map 'Answer': priority='0' is invalid; use an integer"),
        ({"slo_ms": -1}, r"map 'Answer': slo_ms=-1 is invalid; use a finite number"),
    ],
)
def test_invalid_operator_fields_are_plan_errors_naming_the_operator(
    kwargs: dict[str, Any], message: str
) -> None:
    env = LocalEnvironment("bad")
    with pytest.raises(PlanError, match=message):
        env.from_collection([1]).map(str, name="Answer", **kwargs)
    assert len(env.graph) == 1  # nothing was added


def test_explain_shows_an_operators_own_fields() -> None:
    env = LocalEnvironment("plan", config={"priority": 5})
    stream = env.from_collection([1]).map(str, name="Answer", priority=0, slo_ms=800)
    stream.sink(lambda record: None, name="Drop")  # named: builtins.print may be patched
    text = env.plan().explain()
    assert "map 'Answer' parallelism=1 priority=0 slo_ms=800" in text
    assert "sink 'Drop' parallelism=1\n" in text + "\n"  # the job's fields are not repeated


def test_a_task_sets_its_operators_common_fields_once_else_the_jobs() -> None:
    job, own = Scheduling(5), Scheduling(0, 800.0)
    assert task_scheduling([own], job) == own  # no operator pays per record
    assert task_scheduling([job, own, job], job) == job  # the operator with own fields does
    assert task_scheduling([None, None], None) is None


def test_bind_sets_the_fields_per_call_and_while_a_generator_is_iterated() -> None:
    outer = Scheduling(1)

    def numbers(n: int) -> Any:
        for i in range(n):
            yield (i, fields())

    with scheduling_scope(outer):
        scoped = bind(numbers, Scheduling(0, 10.0))
        items = scoped(2)
        assert fields() == (1, None)  # restored after the call
        assert list(items) == [(0, (0, 10.0)), (1, (0, 10.0))]
        assert fields() == (1, None)  # and between items
    assert current_scheduling() is None


# -- in a running job ------------------------------------------------------------------------


class Recorder(BaseService):
    """Returns the fields current while it serves a call (``max_concurrency`` > 1: calls with
    a timeout and async calls run on the pool's worker threads)."""

    max_concurrency = 4

    def seen(self, tag: str) -> tuple[str, Any]:
        return (tag, fields())


class Failing(BaseService):
    def seen(self, tag: str) -> tuple[str, Any]:
        raise RuntimeError("primary down")


class Calls(MapFunction):
    """What its service calls and its own code see, through every call path."""

    def __init__(self, tag: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tag = tag

    def open(self, context: Any) -> None:
        self.opened = fields()

    def execute(self, seen: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        svc, svc_async = self.call_service["rec"], self.call_service_async["rec"]
        return [
            *seen,
            (f"{self.tag}.own", fields()),
            (f"{self.tag}.open", self.opened),
            (f"{self.tag}.ctx", self.ctx.scheduling if self.ctx else "no ctx"),
            svc.seen(f"{self.tag}.sync"),
            svc_async.seen(f"{self.tag}.async").result(timeout=10),
            self.call_service("rec", f"{self.tag}.timeout", method="seen", timeout=10),
            self.call_service_async["flaky"].seen(f"{self.tag}.fallback").result(timeout=10),
        ]


def run(env: LocalEnvironment, stream: Any) -> dict[str, Any]:
    out: list[list[tuple[str, Any]]] = []
    stream.sink(out.append)
    env.register_service("rec", Recorder)
    env.register_service("flaky", Failing, fallback="rec")
    env.submit()
    return {tag: seen for record in out for tag, seen in record}


def test_the_jobs_fields_reach_every_call_path_and_an_operator_overrides_them() -> None:
    env = LocalEnvironment("fields", config={"priority": 5, "slo_ms": 60_000})
    source = env.from_collection([[]])
    stream = source.map(Calls, "job").flatmap(lambda r: [r]).map(Calls, "own", priority=0)
    seen = run(env, stream)
    job, own = (5, 60_000.0), (0, 60_000.0)  # the operator's priority, the job's SLO
    for path in ("own", "open", "sync", "async", "timeout", "fallback"):
        assert seen[f"job.{path}"] == job, path
        assert seen[f"own.{path}"] == own, path
    assert seen["job.ctx"] == Scheduling(5, 60_000.0)
    assert seen["own.ctx"] == Scheduling(0, 60_000.0)
    assert "fused" in env.plan().explain()  # all in one task: the override is per call


def test_without_fields_nothing_is_current_anywhere() -> None:
    env = LocalEnvironment("none")
    seen = run(env, env.from_collection([[], []]).map(Calls, "none", parallelism=2))
    assert set(seen.values()) == {None}
    assert current_scheduling() is None  # the first task ran in this thread: restored


def test_a_task_of_one_overriding_operator_and_a_lazy_flatmap() -> None:
    class Lazy(FlatMapFunction):
        def execute(self, x: int) -> Any:
            yield ("lazy.own", fields())
            yield self.call_service["rec"].seen("lazy.sync")

    env = LocalEnvironment("lazy", config={"priority": 5, "chaining": False})
    stream = env.from_collection([1]).flatmap(Lazy, slo_ms=250).map(lambda r: [r])
    seen = run(env, stream)
    assert seen == {"lazy.own": (5, 250.0), "lazy.sync": (5, 250.0)}

    env = LocalEnvironment("lazy_fused", config={"priority": 5})
    seen = run(env, env.from_collection([1]).flatmap(Lazy, slo_ms=250).map(lambda r: [r]))
    assert seen == {"lazy.own": (5, 250.0), "lazy.sync": (5, 250.0)}
