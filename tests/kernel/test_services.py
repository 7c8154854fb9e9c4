"""Services in the dataflow: calls from operators, concurrency, replicas, fallback, life cycle."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from typing import Any, ClassVar

import pytest

from sage.common.core.functions.map_function import MapFunction
from sage.common.errors import ConfigError, OperatorError, ServiceError, UnknownServiceError
from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.services import BaseService


class Doubler(BaseService):
    max_concurrency = 4

    def double(self, x: int) -> int:
        return 2 * x

    def process(self, x: int) -> int:
        return 2 * x


class SyncCall(MapFunction):
    def execute(self, x: int) -> tuple[str, int]:
        return ("sync", self.call_service["doubler"].double(x))


class AsyncCall(MapFunction):
    def execute(self, x: int) -> tuple[str, int]:
        future = self.call_service_async["doubler"].double(x)
        return ("async", future.result(timeout=10))


class CallForm(MapFunction):
    def execute(self, x: int) -> tuple[str, int]:
        return ("form", self.call_service("doubler", x, method="double", timeout=10))


class DefaultMethod(MapFunction):
    def execute(self, x: int) -> tuple[str, int]:
        return ("default", self.call_service("doubler", x))


def test_sync_async_and_call_form_from_operators_with_parallelism_4() -> None:
    env = LocalEnvironment("calls")
    env.register_service("doubler", Doubler)
    out: list[tuple[str, int]] = []
    numbers = env.from_collection(range(200))
    for function in (SyncCall, AsyncCall, CallForm, DefaultMethod):
        numbers.map(function, parallelism=4).sink(out.append)
    env.submit()
    kinds = ("sync", "async", "form", "default")
    expected = Counter((kind, 2 * x) for kind in kinds for x in range(200))
    assert Counter(out) == expected
    service = env.metrics().service("doubler")
    assert (service.calls, service.errors, service.fallbacks) == (800, 0, 0)
    assert service.replicas == 1 and service.slots == 4


class Exclusive(BaseService):
    """Counts how many calls are inside at once; the work releases the GIL."""

    max_concurrency = 1
    active = 0
    peak = 0
    lock = threading.Lock()

    def work(self, x: int) -> int:
        cls = type(self)
        with cls.lock:
            cls.active += 1
            cls.peak = max(cls.peak, cls.active)
        hashlib.sha256(b"x" * 2_000_000).digest()  # ~ms, without the GIL: others could enter
        with cls.lock:
            cls.active -= 1
        return x


def test_a_service_with_concurrency_1_never_runs_two_calls_at_once() -> None:
    env = LocalEnvironment("exclusive")
    env.register_service("exclusive", Exclusive)
    out: list[int] = []
    env.from_collection(range(60)).map(lambda x: x, parallelism=1).rebalance().map(
        _call_exclusive, parallelism=4
    ).sink(out.append)
    env.submit()
    assert sorted(out) == list(range(60))
    assert Exclusive.peak == 1


class _CallExclusive(MapFunction):
    def execute(self, x: int) -> int:
        return self.call_service["exclusive"].work(x)


_call_exclusive = _CallExclusive


class Meeting(BaseService):
    """Each call waits for ``parties`` calls to be inside at once, proving they overlap."""

    max_concurrency = 1
    barrier: ClassVar[threading.Barrier]

    def meet(self, x: int) -> tuple[int, int]:
        type(self).barrier.wait(timeout=10)
        assert self.ctx is not None
        return x, self.ctx.replica


def test_replicas_serve_calls_at_the_same_time_and_share_the_load() -> None:
    Meeting.barrier = threading.Barrier(3)

    class Ask(MapFunction):
        def execute(self, x: int) -> Any:
            return self.call_service_async["meeting"].meet(x)

    env = LocalEnvironment("replicas")
    env.register_service("meeting", Meeting, replicas=3)
    futures: list[Any] = []
    env.from_collection(range(30)).map(Ask, parallelism=3).sink(futures.append)
    job = env.submit(autostop=False)
    job.wait(20)  # the futures resolve while the job's services are still up
    results = [f.result(timeout=10) for f in futures]
    assert sorted(x for x, _ in results) == list(range(30))
    per_replica = Counter(replica for _, replica in results)
    # three calls can only meet at the barrier on three replicas of concurrency 1
    assert sorted(per_replica) == [0, 1, 2]
    assert all(n == 10 for n in per_replica.values())


class Primary(BaseService):
    def lookup(self, x: int) -> str:
        raise ConnectionError("GPU backend down")


class Backup(BaseService):
    max_concurrency = 8
    served = 0
    done = threading.Event()
    expected = 0
    lock = threading.Lock()

    def lookup(self, x: int) -> str:
        cls = type(self)
        with cls.lock:
            cls.served += 1
            if cls.served >= cls.expected:
                cls.done.set()
        return f"cpu:{x}"


def _reset_backup(expected: int) -> None:
    Backup.served, Backup.expected, Backup.done = 0, expected, threading.Event()


class Lookup(MapFunction):
    def execute(self, x: int) -> str:
        return self.call_service["primary"].lookup(x)


def test_fallback_takes_calls_the_primary_raises_on() -> None:
    _reset_backup(100)
    env = LocalEnvironment("fallback_error")
    env.register_service("backup", Backup)
    env.register_service("primary", Primary, fallback="backup")
    out: list[str] = []
    env.from_collection(range(100)).map(Lookup, parallelism=4).sink(out.append)
    env.submit()
    assert sorted(out) == sorted(f"cpu:{x}" for x in range(100))
    primary = env.metrics().service("primary")
    assert (primary.calls, primary.errors, primary.fallbacks) == (100, 100, 100)
    assert env.metrics().service("backup").calls == 100


class Hanging(BaseService):
    """Blocks until the backup has answered every call, so each primary call times out."""

    max_concurrency = 4

    def lookup(self, x: int) -> str:
        assert Backup.done.wait(20), "the fallback never finished"
        return f"late:{x}"


def test_fallback_takes_calls_that_time_out_and_late_answers_are_dropped() -> None:
    _reset_backup(40)
    env = LocalEnvironment("fallback_timeout")
    env.register_service("primary", Hanging, fallback=Backup, timeout=0.05)
    out: list[str] = []
    env.from_collection(range(40)).map(Lookup, parallelism=4).sink(out.append)
    env.submit()
    assert sorted(out) == sorted(f"cpu:{x}" for x in range(40))
    primary = env.metrics().service("primary")
    assert primary.timeouts == primary.fallbacks == 40


class Busy(BaseService):
    """Concurrency 1; its first call holds the only slot until the backup served enough."""

    max_concurrency = 1
    served = 0

    def lookup(self, x: int) -> str:
        type(self).served += 1
        assert Backup.done.wait(20), "saturation never sent calls to the fallback"
        return f"gpu:{x}"


def test_fallback_takes_calls_when_the_primary_is_saturated() -> None:
    _reset_backup(10)
    Busy.served = 0
    env = LocalEnvironment("fallback_saturated")
    env.register_service("backup", Backup)
    env.register_service("primary", Busy, fallback="backup", max_waiting=0)
    out: list[str] = []
    env.from_collection(range(60)).map(Lookup, parallelism=4).sink(out.append)
    env.submit()
    assert len(out) == 60
    assert sorted(int(v.split(":")[1]) for v in out) == list(range(60))
    primary = env.metrics().service("primary")
    assert primary.fallbacks >= 10 and Busy.served >= 1
    assert primary.fallbacks + Busy.served == 60


class Lifecycle(BaseService):
    events: ClassVar[list[str]] = []

    def setup(self) -> None:
        assert self.ctx is not None
        type(self).events.append(f"setup:{self.ctx.replica}")

    def echo(self, x: int) -> int:
        type(self).events.append("call")
        return x

    def cleanup(self) -> None:
        type(self).events.append("cleanup")


def test_setup_before_the_first_record_and_cleanup_after_the_last_once_per_job() -> None:
    Lifecycle.events = []

    class Opened(MapFunction):
        def open(self, context: Any) -> None:
            self.call_service["life"].echo(-1)  # services are up before open()

        def execute(self, x: int) -> int:
            return self.call_service["life"].echo(x)

    env = LocalEnvironment("life")
    env.register_service("life", Lifecycle, replicas=2)
    env.from_collection(range(5)).map(Opened).sink(print)
    env.submit()
    events = Lifecycle.events
    assert sorted(events[:2]) == ["setup:0", "setup:1"]
    assert events[2:-2] == ["call"] * 6
    assert events[-2:] == ["cleanup", "cleanup"]
    env.submit()  # a new job builds its own instances
    assert Lifecycle.events.count("setup:0") == 2 and Lifecycle.events.count("cleanup") == 4


def test_unknown_service_and_method_names_fail_at_the_first_call_listing_what_exists() -> None:
    class Typo(MapFunction):
        def __init__(self, name: str, method: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.name, self.method = name, method

        def execute(self, x: int) -> Any:
            return getattr(self.call_service[self.name], self.method)(x)

    for name, method, message in [
        ("doubler_", "double", r"no service named 'doubler_'; registered: doubler"),
        ("doubler", "dbl", r"no method 'dbl'.*Its methods: double, process"),
        ("doubler", "doubel", r"did you mean 'double'\?"),
    ]:
        env = LocalEnvironment("typos")
        env.register_service("doubler", Doubler)
        env.from_collection([1]).map(Typo, name, method).sink(print)
        with pytest.raises(OperatorError) as info:
            env.submit()
        assert isinstance(info.value.__cause__, UnknownServiceError)
        assert info.value.__cause__ is not None
        import re

        assert re.search(message, str(info.value.__cause__)), str(info.value.__cause__)


def test_registration_errors_are_clear() -> None:
    env = LocalEnvironment("registration")
    env.register_service("a", Doubler)
    with pytest.raises(ConfigError, match="already registered"):
        env.register_service("a", Doubler)
    with pytest.raises(ConfigError, match="replicas=0 is invalid"):
        env.register_service("b", Doubler, replicas=0)
    with pytest.raises(ConfigError, match="arguments can only be passed with a class"):
        env.register_service("c", lambda: Doubler(), 3)
    with pytest.raises(ConfigError, match="timeout=-1 is invalid"):
        env.register_service("d", Doubler, timeout=-1)
    env.register_service("e", Doubler, fallback="missing")
    env.from_collection([1]).sink(print)
    with pytest.raises(ServiceError, match="fallback 'missing' is not registered"):
        env.submit()


def test_a_failing_setup_fails_the_job_before_any_record() -> None:
    seen: list[int] = []

    class Broken(BaseService):
        def setup(self) -> None:
            raise OSError("model file missing")

    env = LocalEnvironment("broken_setup")
    env.register_service("broken", Broken)
    env.from_collection(range(3)).sink(seen.append)
    with pytest.raises(ServiceError, match=r"setup\(\) of .*Broken.* OSError: model file missing"):
        env.submit()
    assert seen == []


def test_call_service_outside_a_job_explains_itself() -> None:
    with pytest.raises(RuntimeError, match=r"register them with env\.register_service"):
        _ = SyncCall().call_service
