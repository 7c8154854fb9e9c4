"""Connected streams: union map, comap and keyed join; end of stream counted per input."""

from __future__ import annotations

import queue
from collections import Counter
from typing import Any

from helpers import Collector, QueueSource
from sage.common.core.functions.comap_function import CoMapFunction
from sage.common.core.functions.join_function import JoinFunction
from sage.kernel.api.local_environment import LocalEnvironment


def test_fast_source_that_ends_at_once_and_slow_source_lose_nothing() -> None:
    env = LocalEnvironment("fast_and_slow")
    feed: queue.Queue[Any] = queue.Queue()
    sink = Collector()
    fast = env.from_collection(["a1", "a2"])
    slow = env.from_source(QueueSource, feed)
    fast.connect(slow).map(str.upper).sink(sink)
    job = env.submit(autostop=False)
    # `fast` has ended and its records reached the sink before `slow` produced anything
    assert sink.wait_for(2)
    assert sorted(sink.records) == ["A1", "A2"]
    for i in range(10):
        feed.put(f"b{i}")  # arriving one by one, long after the other input ended
    feed.put(None)
    assert job.wait(10)
    assert sorted(sink.records) == sorted(["A1", "A2"] + [f"B{i}" for i in range(10)])


def test_comap_routes_each_input_to_its_method() -> None:
    class Tag(CoMapFunction):
        def map0(self, data: int) -> tuple[str, int]:
            return ("left", data)

        def map1(self, data: int) -> tuple[str, int] | None:
            return None if data == 3 else ("right", data)

    env = LocalEnvironment("comap")
    out: list[Any] = []
    left = env.from_collection(range(3))
    right = env.from_collection(range(5), parallelism=2)
    left.connect(right).comap(Tag, parallelism=2).sink(out.append)
    env.submit()
    assert sorted(out) == sorted(
        [("left", i) for i in range(3)] + [("right", i) for i in range(5) if i != 3]
    )


def test_comap_accepts_one_callable_per_input() -> None:
    env = LocalEnvironment("comap_callables")
    out: list[Any] = []
    a, b = env.from_collection([1, 2]), env.from_collection(["x"])
    a.connect(b).comap([lambda n: n * 10, str.upper]).sink(out.append)
    env.submit()
    assert sorted(out, key=str) == [10, 20, "X"]


def test_keyed_join_meets_records_of_equal_keys() -> None:
    class InnerJoin(JoinFunction):
        def execute(self, payload: Any, key: Any, tag: int) -> list[tuple[Any, ...]]:
            seen = self.state.get(None) or ([], [])
            seen[tag].append(payload)
            self.state.set(seen)
            return [
                (key, payload, other) if tag == 0 else (key, other, payload)
                for other in seen[1 - tag]
            ]

    env = LocalEnvironment("join")
    orders = env.from_collection([("u1", "book"), ("u2", "pen"), ("u1", "lamp")])
    users = env.from_collection([("u1", "Ann"), ("u2", "Bo"), ("u3", "Cy")], parallelism=2)
    out: list[Any] = []
    (
        orders.keyby(lambda r: r[0])
        .connect(users.keyby(lambda r: r[0]))
        .join(InnerJoin, parallelism=3)
        .sink(out.append)
    )
    env.submit()
    joined = Counter((k, order[1], user[1]) for k, order, user in out)
    assert joined == Counter(
        {("u1", "book", "Ann"): 1, ("u1", "lamp", "Ann"): 1, ("u2", "pen", "Bo"): 1}
    )
