"""Event-time windows across a restart from a checkpoint.

Two levels:

* the window operator's head (:class:`WindowHead`) driven batch by batch as a task drives
  it: a snapshot at a batch boundary (pickled, as a checkpoint is), more batches whose
  output is lost with the failed attempt, then a fresh head restored from the snapshot that
  replays the rest cut into different batches. Its output must be exactly the output of a
  run without the failure, and agree with the record-at-a-time run of
  :func:`tests.kernel.test_windows.run` and the plain-Python
  :func:`tests.kernel.test_windows.reference`;
* whole jobs with checkpoints on: a map after the window fails once, after a checkpoint
  has completed, and the job resumes from it. The windows committed by a
  :class:`TransactionalFileSink` equal the reference, each exactly once; late records are
  in the dead letters.
"""

from __future__ import annotations

import pickle
import random
import tempfile
import threading
from collections import Counter
from collections.abc import Hashable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.kernel.test_windows import reference, run

from checkpoint_helpers import SignallingSink, checkpointed
from sage.common.core.functions.map_function import MapFunction
from sage.common.core.functions.source_function import SourceFunction, StopSignal
from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.checkpoint import read_committed
from sage.kernel.config import ErrorMode
from sage.kernel.runtime import window_head
from sage.kernel.runtime.error_policy import DeadLetterQueue, ErrorHandler
from sage.kernel.runtime.metrics import OperatorStats
from sage.kernel.runtime.window_head import WindowHead
from sage.kernel.windows import (
    Count,
    Fired,
    SessionWindows,
    SlidingWindows,
    TumblingWindows,
    Window,
    WindowAssigner,
)

Event = tuple[str, int, int]  # (key, timestamp, sequence number)
Results = dict[tuple[Hashable, Window], Any]


def stamp(event: Sequence[Any]) -> int:
    return int(event[1])


def pairs(events: Sequence[Event]) -> list[tuple[str, int]]:
    """``(key, timestamp)``: what :func:`reference` and :func:`run` take."""
    return [(key, ts) for key, ts, _ in events]


def final(fired: Sequence[Fired]) -> Results:
    """Each window's last result, without sessions that a later, larger one absorbed.

    How often a window fires depends on where the watermark happened to be checked (at the
    end of each batch); the last result of every window that was not merged away does not.
    """
    last: Results = {}
    for f in fired:
        last[(f.key, f.window)] = f.result
    return {
        (key, w): result
        for (key, w), result in last.items()
        if not any(k == key and o != w and o.start <= w.start and w.end <= o.end for k, o in last)
    }


# -- the head, batch by batch -----------------------------------------------------------


class Driver:
    """Window heads as a task builds them, all sending late records to one queue."""

    def __init__(self, assigner: WindowAssigner, max_delay: int, lateness: int) -> None:
        self.options = {
            "assigner": assigner,
            "aggregate": Count(),
            "timestamp": stamp,
            "max_delay": max_delay,
            "allowed_lateness": lateness,
        }

    def head(self, dead: DeadLetterQueue) -> WindowHead:
        stats = OperatorStats(1, "window", "window", 0, 1)
        errors = ErrorHandler(ErrorMode.FAIL, stats, dead)
        return WindowHead(dict(self.options), stats, errors, dead, [True])


def batches(events: Sequence[Event], cuts: Sequence[int]) -> list[list[tuple[str, Event]]]:
    """The keyed records cut at the given positions (as a channel delivers them)."""
    bounds = [0, *sorted(c for c in set(cuts) if 0 < c < len(events)), len(events)]
    return [[(e[0], e) for e in events[a:b]] for a, b in pairwise(bounds)]


def process(head: WindowHead, parts: Sequence[Sequence[Any]]) -> list[Fired]:
    out: list[Fired] = []
    for part in parts:
        out.extend(head.process(0, part))
    return out


def late_of(dead: DeadLetterQueue) -> list[tuple[str, int]]:
    return [(letter.record[0], letter.record[1]) for letter in dead.items()]


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Event], int, int]:
    """Out-of-order streams, ``max_delay`` and ``allowed_lateness``. Some streams stay
    within ``max_delay`` (no record late); others have records behind it, some within the
    allowed lateness (updates) and some beyond (late)."""
    max_delay = draw(st.integers(0, 12))
    lateness = draw(st.sampled_from([0, 0, 3, 10]))
    behind = draw(st.sampled_from([0, 0, 8, 25]))  # how far past max_delay records may lag
    events: list[Event] = []
    high = 0
    for i in range(draw(st.integers(1, 80))):
        timestamp = draw(st.integers(max(0, high - max_delay - behind), high + 10))
        events.append((draw(st.sampled_from("abc")), timestamp, i))
        high = max(high, timestamp)
    return events, max_delay, lateness


ASSIGNERS = st.sampled_from(
    [TumblingWindows(10), SlidingWindows(10, 5), SlidingWindows(9, 3), SessionWindows(4)]
)


@settings(max_examples=250, deadline=None)
@given(streams(), ASSIGNERS, st.data())
def test_a_restored_head_goes_on_exactly_as_one_that_never_failed(
    stream: tuple[list[Event], int, int], assigner: WindowAssigner, data: st.DataObject
) -> None:
    events, max_delay, lateness = stream
    n = len(events)
    positions = st.lists(st.integers(1, max(1, n - 1)), max_size=8)
    cuts = data.draw(positions, label="batch boundaries")
    checkpoint = data.draw(st.integers(0, n), label="checkpoint position")
    failure = data.draw(st.integers(checkpoint, n), label="failure position")
    replay_cuts = data.draw(positions, label="batch boundaries after the restart")
    driver = Driver(assigner, max_delay, lateness)

    # before the checkpoint, then what the failed attempt did after it (lost with it)
    dead = DeadLetterQueue()
    first = driver.head(dead)
    before = process(first, batches(events[:checkpoint], cuts))
    saved = pickle.dumps(first.snapshot_state())
    late_before = late_of(dead)
    process(first, batches(events[checkpoint:failure], cuts))

    # the restart: a fresh head, the checkpoint's state, the rest cut differently
    dead_after = DeadLetterQueue()
    second = driver.head(dead_after)
    second.restore_state(pickle.loads(saved))
    after = process(second, batches(events[checkpoint:], replay_cuts)) + second.finish()
    fired = before + after
    late = late_before + late_of(dead_after)

    # exactly the output of a run that never failed, batch for batch
    dead_once = DeadLetterQueue()
    once = driver.head(dead_once)
    uninterrupted = process(once, batches(events[:checkpoint], cuts))
    uninterrupted += process(once, batches(events[checkpoint:], replay_cuts)) + once.finish()
    assert fired == uninterrupted and late == late_of(dead_once)

    # the same windows as the record-at-a-time run, the same late records
    results, late_records = run(pairs(events), assigner, max_delay, lateness)
    assert late == [(x.key, x.timestamp) for x in late_records]
    per_record = [Fired(key, window, result) for (key, window), result in results.items()]
    assert final(fired) == final(per_record)
    highs = [max(e[1] for e in events[: i + 1]) for i in range(n)]
    if all(e[1] >= high - max_delay for e, high in zip(events, highs, strict=True)):
        # no record behind the watermark: each window fires once, as the reference has it
        expected = reference(pairs(events), assigner)
        assert not any(f.update for f in fired)
        assert Counter((f.key, f.window) for f in fired) == Counter(expected.keys())
        assert final(fired) == expected


def test_a_session_past_its_lateness_takes_no_record_though_not_yet_dropped() -> None:
    """Whether ``fire`` ran between two records must not change the sessions: one record
    per batch and all records in one batch give the same windows."""
    driver = Driver(SessionWindows(10), max_delay=0, lateness=2)
    events: list[Event] = [("k", 0, 0), ("k", 15, 1), ("k", 6, 2)]  # [0, 10) closed at 12
    one_batch = driver.head(DeadLetterQueue())
    fired = process(one_batch, batches(events, [])) + one_batch.finish()
    per_record = driver.head(DeadLetterQueue())
    assert fired == process(per_record, batches(events, [1, 2])) + per_record.finish()
    assert [(f.window, f.result) for f in fired] == [(Window(0, 10), 1), (Window(6, 25), 2)]


# -- whole jobs with a failure ---------------------------------------------------------

failed = threading.Event()  # set by the injected failure (once per job)


class Events(SourceFunction):
    """The given events in order; its position is checkpointed. At ``pause_at`` it holds
    back until a checkpoint is complete (returning nothing meanwhile, so it keeps
    answering barriers), so the failure comes after a checkpoint."""

    state_fields = ("offset",)

    def __init__(self, events: Sequence[Event], pause_at: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.events = events
        self.pause_at = pause_at
        self.offset = 0

    def execute(self) -> Any:
        if self.offset == self.pause_at and not checkpointed.wait(0.005):
            return None
        if self.offset >= len(self.events):
            return StopSignal
        self.offset += 1
        return self.events[self.offset - 1]


class FailOnce(MapFunction):
    """A fired window as a JSON row; raises the first time it sees window ``at``."""

    def __init__(self, at: tuple[str, float, float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.at = at

    def execute(self, fired: Fired) -> list[Any]:
        row = [fired.key, fired.window.start, fired.window.end, fired.result, fired.update]
        if tuple(row[:3]) == self.at and not failed.is_set():
            failed.set()
            raise RuntimeError(f"injected failure at window {self.at}")
        return row


class Restores:
    """What each window head was restored with: (open windows, largest timestamp seen)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[tuple[int, float]] = []
        original = WindowHead.restore_state

        def restore_state(head: WindowHead, state: Any) -> None:
            original(head, state)
            windows = state["windows"]["windows"]
            self.seen.append((sum(len(w) for w in windows.values()), state["max_seen"]))

        monkeypatch.setattr(window_head.WindowHead, "restore_state", restore_state)


def run_job(
    directory: Path,
    events: Sequence[Event],
    assigner: WindowAssigner,
    *,
    max_delay: int,
    lateness: int = 0,
    pause_at: int,
    fail_at: tuple[str, float, float],
    parallelism: int,
) -> tuple[Any, LocalEnvironment]:
    """Run the windowed job with checkpoints; the map fails once at window ``fail_at``."""
    checkpointed.clear()
    failed.clear()
    env = LocalEnvironment(
        "window_restart",
        config={
            "fault_tolerance": {
                "strategy": "checkpoint",
                "checkpoint_dir": str(directory / "ckpt"),
                "checkpoint_interval": 0.05,
                "restart_strategy": "fixed",
                "max_restarts": 2,
                "delay_s": 0.01,
            }
        },
    )
    (
        env.from_source(Events, list(events), pause_at=pause_at)
        .keyby(lambda e: e[0])
        .window(assigner, timestamp=stamp, max_delay=max_delay, allowed_lateness=lateness)
        .aggregate(Count(), parallelism=parallelism)
        .map(FailOnce, fail_at, parallelism=parallelism)
        .sink(SignallingSink, directory / "out", parallelism=parallelism)
    )
    job = env.submit()
    assert failed.is_set() and job.restarts == 1
    assert job.checkpoints_completed >= 1
    return job, env


def committed(directory: Path) -> list[tuple[str, Window, int, bool]]:
    return [
        (key, Window(start, end), result, update)
        for key, start, end, result, update in read_committed(directory / "out")
    ]


def bounded_events(n: int, keys: int, max_delay: int, seed: int) -> list[Event]:
    """Records out of order by at most ``max_delay`` (none late)."""
    rng = random.Random(seed)
    return [
        (f"k{rng.randrange(keys)}", max(0, i // 4 - rng.randrange(max_delay + 1)), i)
        for i in range(n)
    ]


def failing_window(
    events: Sequence[Event], assigner: WindowAssigner, pause_at: int, expected: Results
) -> tuple[str, float, float]:
    """A window holding only records after ``pause_at``: it fires after the checkpoint."""
    high = max((e[1] for e in events[:pause_at]), default=-1)
    later = sorted((w.end, w.start, str(k)) for (k, w) in expected if w.start > high)
    end, start, key = later[len(later) // 3]
    return key, start, end


@pytest.mark.parametrize(
    ("assigner", "parallelism"),
    [(TumblingWindows(25), 2), (SlidingWindows(40, 10), 1), (SessionWindows(3), 2)],
    ids=["tumbling", "sliding", "session"],
)
def test_windows_resume_from_a_checkpoint_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, assigner: WindowAssigner, parallelism: int
) -> None:
    restores = Restores(monkeypatch)
    events = bounded_events(20_000, keys=13, max_delay=30, seed=7)
    expected = reference(pairs(events), assigner)
    pause_at = len(events) // 2
    fail_at = failing_window(events, assigner, pause_at, expected)
    _, env = run_job(
        tmp_path,
        events,
        assigner,
        max_delay=30,
        lateness=5,
        pause_at=pause_at,
        fail_at=fail_at,
        parallelism=parallelism,
    )
    rows = committed(tmp_path)
    windows = Counter((key, window) for key, window, _, _ in rows)
    assert [w for w, c in windows.items() if c > 1] == []  # none twice
    assert {(key, window): result for key, window, result, _ in rows} == expected
    assert not any(update for *_, update in rows) and env.dead_letters == []
    # restored from a checkpoint taken mid-stream: open windows and a watermark
    assert len(restores.seen) == parallelism
    assert sum(open_windows for open_windows, _ in restores.seen) > 0
    assert all(seen >= 0 for _, seen in restores.seen)


def test_updates_and_late_records_across_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records behind the watermark: within the allowed lateness they update their window
    (committed once per update), beyond it they go to the dead letters."""
    restores = Restores(monkeypatch)
    size, max_delay, lateness = 20, 10, 30
    events = bounded_events(12_000, keys=5, max_delay=max_delay, seed=3)
    rng = random.Random(5)
    for i in range(500, len(events), 200):  # every 200th record lags far behind
        key, ts, seq = events[i]
        events[i] = (key, max(0, ts - max_delay - rng.randrange(80)), seq)
    assigner = TumblingWindows(size)
    results, late_records = run(pairs(events), assigner, max_delay, lateness)
    late = {(x.key, x.timestamp) for x in late_records}
    assert len(late) > 5 and len(late_records) < 60  # some late, most within lateness
    lagging = Counter((str(x.key), int(x.timestamp)) for x in late_records)
    expected = reference(list((Counter(pairs(events)) - lagging).elements()), assigner)
    assert final([Fired(k, w, r) for (k, w), r in results.items()]) == expected
    pause_at = len(events) // 2
    fail_at = failing_window(events, assigner, pause_at, expected)
    _, env = run_job(
        tmp_path,
        events,
        assigner,
        max_delay=max_delay,
        lateness=lateness,
        pause_at=pause_at,
        fail_at=fail_at,
        parallelism=1,
    )
    rows = committed(tmp_path)
    by_window: dict[tuple[str, Window], list[tuple[int, bool]]] = {}
    for key, window, result, update in rows:
        by_window.setdefault((key, window), []).append((result, update))
    assert {w: firings[-1][0] for w, firings in by_window.items()} == expected
    assert any(len(firings) > 1 for firings in by_window.values())  # some updates
    for keyed, firings in by_window.items():  # first result, then growing updates
        counts = [result for result, _ in firings]
        assert counts == sorted(set(counts)), f"{keyed} committed twice: {firings}"
        assert [update for _, update in firings] == [False] + [True] * (len(firings) - 1)
    # each late record is in the dead letters; the ones after the checkpoint may be twice
    letters = Counter((r[0], r[1], r[2]) for r in (d.record for d in env.dead_letters))
    assert {(k, ts) for k, ts, _ in letters} == late
    assert all(d.error.startswith("LateRecord") for d in env.dead_letters)
    assert max(letters.values()) <= 2
    assert restores.seen and restores.seen[0][1] >= 0


@st.composite
def job_streams(draw: st.DrawFn) -> tuple[list[Event], int, int]:
    """A stream within ``max_delay`` (no record late), ``max_delay``, and the position at
    which the source waits for a checkpoint."""
    max_delay = draw(st.integers(0, 20))
    n = draw(st.integers(50, 3000))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = random.Random(seed)
    events: list[Event] = []
    high = 0
    for i in range(n):
        timestamp = rng.randint(max(0, high - max_delay), high + rng.choice((0, 1, 1, 2, 9)))
        events.append((f"k{rng.randrange(7)}", timestamp, i))
        high = max(high, timestamp)
    events += [("k0", high + 100 + i, n + i) for i in range(3)]  # a window after the pause
    return events, max_delay, draw(st.integers(1, n))


@settings(max_examples=25, deadline=None)
@given(job_streams(), ASSIGNERS, st.integers(1, 2), st.integers(0, 5))
def test_jobs_with_a_restart_agree_with_the_reference(
    stream: tuple[list[Event], int, int], assigner: WindowAssigner, parallelism: int, pick: int
) -> None:
    events, max_delay, pause_at = stream
    expected = reference(pairs(events), assigner)
    high = max(e[1] for e in events[:pause_at])
    after = sorted((w.end, w.start, str(k)) for (k, w) in expected if w.start > high)
    end, start, key = after[pick % len(after)]
    with tempfile.TemporaryDirectory() as directory:
        run_job(
            Path(directory),
            events,
            assigner,
            max_delay=max_delay,
            pause_at=pause_at,
            fail_at=(key, start, end),
            parallelism=parallelism,
        )
        rows = committed(Path(directory))
    assert Counter((key, window) for key, window, _, _ in rows) == Counter(expected.keys())
    assert {(key, window): result for key, window, result, _ in rows} == expected
