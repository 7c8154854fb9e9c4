"""Keyed state: exact per-key counts, and a key always meets the same instance."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from sage.common.core.functions.map_function import MapFunction
from sage.common.core.functions.sink_function import SinkFunction
from sage.kernel.api.local_environment import LocalEnvironment


class Count(MapFunction):
    def execute(self, key: str) -> tuple[str, int, int]:
        n = self.state.get(0) + 1
        self.state.set(n)
        assert self.ctx is not None
        return key, n, self.ctx.instance_index


class Final(SinkFunction):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.counts: dict[str, int] = {}
        self.instances: defaultdict[str, set[int]] = defaultdict(set)
        self.records = 0

    def execute(self, item: tuple[str, int, int]) -> None:
        key, n, instance = item
        self.records += 1
        self.counts[key] = max(n, self.counts.get(key, 0))
        self.instances[key].add(instance)


def test_keyed_count_of_100k_records_is_exact_and_keys_stay_on_one_instance() -> None:
    keys = [f"k{(i * 7919) % 1009}" for i in range(100_000)]
    env = LocalEnvironment("keyed_count")
    sink = Final()
    (
        env.from_collection(keys, parallelism=2)
        .keyby(lambda k: k)
        .map(Count, parallelism=4)
        .sink(sink)
    )
    env.submit()
    assert sink.records == 100_000
    assert sink.counts == dict(Counter(keys))
    assert all(len(instances) == 1 for instances in sink.instances.values())
    used = set().union(*sink.instances.values())
    assert used == {0, 1, 2, 3}  # 1009 keys spread over every instance
    counted = env.metrics().operator("Count")
    assert counted.records_in == counted.records_out == 100_000


def test_state_is_per_key_and_per_operator() -> None:
    class Sum(MapFunction):
        def execute(self, pair: tuple[str, int]) -> tuple[str, int]:
            self.state.value = (self.state.value or 0) + pair[1]
            return pair[0], self.state.value

    env = LocalEnvironment("sums")
    out: list[tuple[str, int]] = []
    data = [("a", 1), ("b", 10), ("a", 2), ("b", 20), ("a", 3)]
    env.from_collection(data).keyby(lambda p: p[0]).map(Sum, parallelism=2).sink(out.append)
    env.submit()
    assert sorted(out) == [("a", 1), ("a", 3), ("a", 6), ("b", 10), ("b", 30)]
