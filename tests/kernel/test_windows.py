"""Event-time windows on hand-built and generated streams, against a plain-Python reference:
which windows a record is in, what fires when, late records, and a restart from a
snapshot in the middle of a stream."""

from __future__ import annotations

import pickle
from collections import Counter, defaultdict
from collections.abc import Hashable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sage.common.errors import ConfigError
from sage.kernel.windows import (
    BoundedOutOfOrderness,
    Fired,
    Late,
    Reduce,
    SessionWindows,
    SlidingWindows,
    TumblingWindows,
    Window,
    WindowAssigner,
    WindowedState,
)

COUNT = Reduce(lambda a, b: a + b)  # values are 1: the count of a window's records

Event = tuple[str, int]  # (key, timestamp)


def run(
    events: list[Event],
    assigner: WindowAssigner,
    max_delay: int,
    lateness: int = 0,
    restart_at: int | None = None,
) -> tuple[dict[tuple[Hashable, Window], Any], list[Late]]:
    """Drive a window operator as the runtime would: each record with the watermark, then
    fire; at the end the watermark goes to infinity. With ``restart_at``, the state and the
    watermark are snapshotted (pickled, as a checkpoint is) after that many records and
    restored into fresh objects. The last result of each window, and the late records."""
    state = WindowedState(assigner, COUNT, lateness)
    clock = BoundedOutOfOrderness(max_delay)
    results: dict[tuple[Hashable, Window], Any] = {}
    late: list[Late] = []
    for i, (key, timestamp) in enumerate(events):
        if i == restart_at:
            saved = pickle.dumps((state.snapshot(), clock.snapshot()))
            state = WindowedState(assigner, COUNT, lateness)
            clock = BoundedOutOfOrderness(max_delay)
            windows, seen = pickle.loads(saved)
            state.restore(windows)
            clock.restore(seen)
        clock.observe(timestamp)
        outcome = state.add(key, timestamp, 1, clock.watermark)
        if outcome is not None:
            late.append(outcome)
        for fired in state.fire(clock.watermark):
            results[(fired.key, fired.window)] = fired.result
    for fired in state.fire(float("inf")):
        results[(fired.key, fired.window)] = fired.result
    assert len(state) == 0
    return results, late


def reference(events: list[Event], assigner: WindowAssigner) -> dict[tuple[Hashable, Window], int]:
    """The same windows counted by definition, all records at once (none late)."""
    counts: dict[tuple[Hashable, Window], int] = defaultdict(int)
    if isinstance(assigner, SessionWindows):
        by_key: dict[str, list[int]] = defaultdict(list)
        for key, timestamp in events:
            by_key[key].append(timestamp)
        for key, stamps in by_key.items():
            stamps.sort()
            start = last = stamps[0]
            n = 0
            for t in stamps:
                if t >= last + assigner.gap:  # ``gap`` or more apart: a new session
                    counts[(key, Window(start, last + assigner.gap))] = n
                    start, n = t, 0
                last, n = t, n + 1
            counts[(key, Window(start, last + assigner.gap))] = n
        return dict(counts)
    for key, timestamp in events:
        size = assigner.size  # type: ignore[attr-defined]
        step = getattr(assigner, "slide", size)
        first = (timestamp - size) // step * step  # every aligned start that could cover it
        for start in range(first, timestamp + 1, step):
            if start <= timestamp < start + size:
                counts[(key, Window(start, start + size))] += 1
    return dict(counts)


ASSIGNERS = st.sampled_from(
    [TumblingWindows(10), SlidingWindows(10, 5), SlidingWindows(9, 3), SessionWindows(4)]
)


@st.composite
def bounded_streams(draw: st.DrawFn) -> tuple[list[Event], int]:
    """Out-of-order streams that stay within ``max_delay`` of the largest timestamp so far
    (so no record is ever late), and that ``max_delay``."""
    max_delay = draw(st.integers(0, 15))
    events: list[Event] = []
    high = 0
    for _ in range(draw(st.integers(1, 60))):
        timestamp = draw(st.integers(max(0, high - max_delay), high + 12))
        events.append((draw(st.sampled_from("abc")), timestamp))
        high = max(high, timestamp)
    return events, max_delay


@settings(max_examples=300, deadline=None)
@given(bounded_streams(), ASSIGNERS, st.data())
def test_windows_agree_with_the_reference_on_out_of_order_streams_and_across_a_restart(
    stream: tuple[list[Event], int], assigner: WindowAssigner, data: st.DataObject
) -> None:
    events, max_delay = stream
    expected = reference(events, assigner)
    results, late = run(events, assigner, max_delay)
    assert late == [] and results == expected
    restart = data.draw(st.integers(0, len(events)))
    assert run(events, assigner, max_delay, restart_at=restart) == (results, late)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 100)), min_size=1, max_size=60),
    st.integers(0, 10),
    st.integers(0, 10),
)
def test_every_record_is_counted_in_its_window_or_returned_late(
    events: list[Event], max_delay: int, lateness: int
) -> None:
    results, late = run(events, TumblingWindows(10), max_delay, lateness)
    assert sum(results.values()) + len(late) == len(events)  # nothing dropped silently
    on_time = list((Counter(events) - Counter((x.key, x.timestamp) for x in late)).elements())
    assert sum(reference(on_time, TumblingWindows(10)).values()) == sum(results.values())


def test_a_window_fires_when_the_watermark_passes_its_end_and_late_data_updates_it() -> None:
    state = WindowedState(TumblingWindows(10), COUNT, allowed_lateness=5)
    assert state.add("k", 3, 1, watermark=3) is None
    assert state.fire(9) == []
    assert state.fire(10) == [Fired("k", Window(0, 10), 1)]
    assert state.add("k", 7, 1, watermark=12) is None  # within lateness: an update
    assert state.fire(12) == [Fired("k", Window(0, 10), 2, update=True)]
    late = state.add("k", 8, "v", watermark=15)  # 10 + 5 <= 15: closed for good
    assert late == Late("k", 8, "v")
    assert state.fire(15) == [] and len(state) == 0


def test_sessions_merge_when_a_record_bridges_them_and_an_open_session_is_not_late() -> None:
    state = WindowedState(SessionWindows(5), COUNT)
    for timestamp in (0, 2, 20):
        assert state.add("k", timestamp, 1, watermark=-1) is None
    assert len(state) == 2  # [0, 7) and [20, 25)
    assert state.add("k", 11, 1, watermark=-1) is None  # 7 < 11 < 15: a third session
    assert state.add("k", 14, 1, watermark=-1) is None  # [14, 19) joins [11, 16)
    assert state.add("k", 16, 1, watermark=-1) is None  # [16, 21) bridges [11, 19) and [20, 25)
    assert sorted(w for w in state.snapshot()["windows"]["k"]) == [Window(0, 7), Window(11, 25)]
    # a record inside the open session [11, 25) is not late though its own window ended
    assert state.add("k", 12, 1, watermark=19) is None
    assert state.fire(100) == [Fired("k", Window(0, 7), 2), Fired("k", Window(11, 25), 5)]


def test_sliding_windows_hold_a_record_size_over_slide_times() -> None:
    assert SlidingWindows(10, 5).assign(12) == [Window(10, 20), Window(5, 15)]
    assert TumblingWindows(10, offset=3).assign(12) == [Window(3, 13)]
    assert TumblingWindows(10).assign(-1) == [Window(-10, 0)]


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (lambda: TumblingWindows(0), "size=0"),
        (lambda: SlidingWindows(10, -1), "slide=-1"),
        (lambda: SessionWindows(float("nan")), "gap=nan"),
        (lambda: BoundedOutOfOrderness(-1), "max_delay=-1"),
        (lambda: WindowedState(TumblingWindows(1), COUNT, allowed_lateness=-2), "lateness=-2"),
    ],
)
def test_bad_window_settings_are_named(build: Any, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        build()
