"""Random pipelines give exactly the multiset a plain-Python evaluation gives."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sage.common.core.functions.map_function import MapFunction
from sage.kernel.api.base_environment import BaseEnvironment
from sage.kernel.api.datastream import DataStream
from sage.kernel.api.local_environment import LocalEnvironment

# Deterministic building blocks; each is also applied by the plain-Python reference below.
MAPS: list[Callable[[int], int | None]] = [
    lambda x: x * 3 + 1,
    lambda x: x // 2,
    lambda x: None if x % 5 == 0 else x,  # a map returning None emits nothing
    lambda x: -x,
]
FILTERS: list[Callable[[int], bool]] = [lambda x: x % 2 == 0, lambda x: x > 3, lambda x: x % 3 != 1]
FLATMAPS: list[Callable[[int], list[int]]] = [
    lambda x: [x, x + 1],
    lambda x: [] if x % 4 == 0 else [x],
    lambda x: list(range(x % 3)),
]
KEYS: list[Callable[[int], int]] = [lambda x: x % 7, lambda x: x % 2]


class RunningCount(MapFunction):
    """Keyed: the n-th record of a key becomes (key, n) — exact only if every key meets once."""

    def __init__(self, key: Callable[[int], int], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.key = key

    def execute(self, data: int) -> tuple[int, int]:
        n = self.state.get(0) + 1
        self.state.set(n)
        return (self.key(data), n)


small_step = st.tuples(
    st.sampled_from(["map", "filter", "flatmap", "keyby"]), st.integers(0, 1), st.integers(1, 3)
)
"""A step of :func:`build_pipeline` with small parallelism (for runs on Ray)."""

step = st.one_of(
    st.tuples(st.just("map"), st.integers(0, len(MAPS) - 1), st.integers(1, 4)),
    st.tuples(st.just("filter"), st.integers(0, len(FILTERS) - 1), st.integers(1, 4)),
    st.tuples(st.just("flatmap"), st.integers(0, len(FLATMAPS) - 1), st.integers(1, 4)),
    st.tuples(st.just("keyby"), st.integers(0, len(KEYS) - 1), st.integers(1, 4)),
)


def reference(data: list[int], steps: list[tuple[str, int, int]]) -> Counter[Any]:
    records: list[Any] = list(data)
    for op, i, _ in steps:
        if op == "map":
            records = [y for y in map(MAPS[i], records) if y is not None]
        elif op == "filter":
            records = [x for x in records if FILTERS[i](x)]
        elif op == "flatmap":
            records = [y for x in records for y in FLATMAPS[i](x)]
        else:  # keyby + running count per key, then back to ints for later steps
            seen: Counter[int] = Counter()
            out = []
            for x in records:
                seen[KEYS[i](x)] += 1
                out.append((KEYS[i](x), seen[KEYS[i](x)]))
            records = out
            records = [k * 1000 + n for k, n in records]
    return Counter(records)


def build_pipeline(
    env: BaseEnvironment, data: list[int], steps: list[tuple[str, int, int]]
) -> DataStream:
    """The pipeline ``steps`` describe on ``env`` (also run on Ray by the distributed tests)."""
    stream = env.from_collection(data, parallelism=1 + len(data) % 2)
    for op, i, parallelism in steps:
        if op == "map":
            stream = stream.map(MAPS[i], parallelism=parallelism)
        elif op == "filter":
            stream = stream.filter(FILTERS[i], parallelism=parallelism)
        elif op == "flatmap":
            stream = stream.flatmap(FLATMAPS[i], parallelism=parallelism)
        else:
            stream = (
                stream.keyby(KEYS[i])
                .map(RunningCount, KEYS[i], parallelism=parallelism)
                .map(lambda kn: kn[0] * 1000 + kn[1], parallelism=parallelism)
            )
    return stream


def run_sage(
    data: list[int], steps: list[tuple[str, int, int]], config: dict[str, Any]
) -> Counter[Any]:
    env = LocalEnvironment("property", config=config)
    out: list[Any] = []
    build_pipeline(env, data, steps).sink(out.append)
    env.submit()
    return Counter(out)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(st.integers(-50, 200), max_size=300),
    steps=st.lists(step, max_size=6),
    batch_size=st.sampled_from([1, 7, 1024]),
    chaining=st.booleans(),
)
def test_random_pipelines_match_plain_python(
    data: list[int], steps: list[tuple[str, int, int]], batch_size: int, chaining: bool
) -> None:
    config = {"batch_size": batch_size, "chaining": chaining, "channel_capacity": 2}
    assert run_sage(data, steps, config) == reference(data, steps)


def _failing(x: int) -> int:
    if x % 11 == 3:
        raise ValueError(x)
    return x + 1


COUNTED: dict[str, Callable[..., Any]] = {
    "map": lambda x: x * 2 + 1,
    "none": lambda x: None if x % 4 == 0 else x,
    "filter": lambda x: x % 3 != 0,
    "flatmap": lambda x: [x] * (x % 3),
    "fail": _failing,
}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(st.integers(0, 100), max_size=200),
    ops=st.lists(st.sampled_from(sorted(COUNTED)), min_size=1, max_size=6),
    keyed_tail=st.booleans(),
    sink_fused=st.booleans(),
)
def test_operator_metrics_count_every_record_exactly(
    data: list[int], ops: list[str], keyed_tail: bool, sink_fused: bool
) -> None:
    """records in/out/errors per operator equal a plain count, however the chain ends."""
    expected: list[tuple[int, int, int]] = []
    records = list(data)
    for op in ops:
        fn = COUNTED[op]
        out, errors = [], 0
        for x in records:
            if op == "filter":
                out += [x] if fn(x) else []
            elif op == "flatmap":
                out += fn(x)
            else:
                try:
                    y = fn(x)
                except ValueError:
                    errors += 1
                    continue
                out += [] if y is None else [y]
        expected.append((len(records), len(out), errors))
        records = out

    env = LocalEnvironment("counts", config={"on_error": "skip", "batch_size": 16})
    stream = env.from_collection(data)
    for i, op in enumerate(ops):
        kind = "filter" if op == "filter" else "flatmap" if op == "flatmap" else "map"
        stream = getattr(stream, kind)(COUNTED[op], name=f"op{i}")
    if keyed_tail:
        stream = stream.keyby(lambda x: x % 5, name="key")
    # a fused sink ends the chain in the loop; parallelism 2 puts it behind a channel
    stream.sink(lambda x: None, name="end", parallelism=1 if sink_fused else 2)
    env.submit()
    metrics = env.metrics()
    for i, want in enumerate(expected):
        got = metrics.operator(f"op{i}")
        assert (got.records_in, got.records_out, got.errors) == want, (i, ops)
    assert metrics.operator("end").records_in == len(records)
