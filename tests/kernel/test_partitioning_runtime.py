"""Broadcast, rebalance and keyed batches deliver what their partitioning promises."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sage.common.core.functions.map_function import MapFunction
from sage.kernel.api.local_environment import LocalEnvironment


class WhoAmI(MapFunction):
    def execute(self, data: Any) -> tuple[Any, int]:
        assert self.ctx is not None
        return data, self.ctx.instance_index


def test_broadcast_sends_every_record_to_every_instance() -> None:
    env = LocalEnvironment("broadcast")
    out: list[tuple[int, int]] = []
    env.from_collection(range(5)).broadcast().map(WhoAmI, parallelism=3).sink(out.append)
    env.submit()
    assert sorted(out) == sorted((x, i) for x in range(5) for i in range(3))


def test_rebalance_spreads_records_evenly_and_keeps_them_all() -> None:
    env = LocalEnvironment("rebalance")
    out: list[tuple[int, int]] = []
    env.from_collection(range(900)).map(abs, parallelism=3).rebalance().map(
        WhoAmI, parallelism=3
    ).sink(out.append)
    env.submit()
    assert sorted(x for x, _ in out) == list(range(900))
    per_instance = Counter(i for _, i in out)
    assert sorted(per_instance) == [0, 1, 2]
    assert max(per_instance.values()) - min(per_instance.values()) <= 3


def test_batches_after_keyby_hold_values_not_key_pairs() -> None:
    env = LocalEnvironment("keyed_batch")
    out: list[list[str]] = []
    env.from_collection(["a", "b", "a", "c"]).keyby(str.upper).batch(10).sink(out.append)
    env.submit()
    assert sorted(x for batch in out for x in batch) == ["a", "a", "b", "c"]
