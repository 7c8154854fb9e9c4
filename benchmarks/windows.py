"""Windows throughput: an event-time tumbling-window count per key, SAGE vs Bytewax.

The workload: 1,000,000 events of 1,000 keys whose integer event times (seconds) rise by one
every 100 events, each up to ``DISORDER`` seconds behind (out of order, none late); a count
per key in tumbling windows of ``SIZE`` seconds, watermarks ``MAX_DELAY`` seconds behind the
largest event time seen.

* SAGE: ``env.from_collection(events).keyby(key).window(TumblingWindows(SIZE),
  timestamp=..., max_delay=MAX_DELAY).aggregate(Count())`` into a sink that keeps the
  results, on a :class:`LocalEnvironment` with default settings.
* Bytewax: ``count_window`` with ``EventClock(ts_getter, wait_for_system_duration=
  MAX_DELAY)`` and ``TumblingWindower(length=SIZE, align_to=epoch)`` on the same events via
  ``TestingSource`` (batches of 1,024), run with ``bytewax.testing.run_main`` (in process).
  Bytewax wants timezone-aware datetimes: they are computed once, before any timing, as
  SAGE's integer times are. (Its clock also advances its watermark with the system clock
  between records; over a run of seconds that is far below ``MAX_DELAY - DISORDER``, so no
  record is late there either.)

Each run is timed from building the job to having every result, and checked: both
systems must give exactly the same count for every (key, window), which must equal a plain
count (exit 1 otherwise). Cases run interleaved over several rounds; the table has the
median records/s with the min-max spread and the median over rounds of the paired ratio.
``--quick``: 200,000 events, 2 rounds (no README). ``--write-readme`` stores the table.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _common import Case, fmt_rate, interleave, report_checked
from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.windows import Count, Fired, TumblingWindows

KEYS = 1_000
PER_SECOND = 100  # events per second of event time
SIZE = 1_000  # seconds per window: ~100 events per key and window
DISORDER = 5  # seconds an event may lag the largest event time so far
MAX_DELAY = 10  # the watermark's lag (> DISORDER: no record is late)
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)

Event = tuple[str, int]
Counts = dict[tuple[str, int], int]  # (key, window start in seconds) -> count


@cache
def workload(n: int) -> tuple[list[Event], list[tuple[str, datetime]]]:
    """The events for SAGE ``(key, seconds)`` and the same for Bytewax ``(key, datetime)``."""
    rng = random.Random(42)
    events: list[Event] = []
    high = 0
    for i in range(n):
        ts = max(0, i // PER_SECOND - rng.randrange(DISORDER + 1))
        high = max(high, ts)
        assert ts >= high - DISORDER
        events.append((f"k{rng.randrange(KEYS)}", ts))
    stamped = [(key, EPOCH + timedelta(seconds=ts)) for key, ts in events]
    return events, stamped


@cache
def expected(n: int) -> Counts:
    """The counts by definition."""
    return dict(Counter((key, ts - ts % SIZE) for key, ts in workload(n)[0]))


def event_time(event: Event) -> int:
    return event[1]


def event_key(event: Event) -> str:
    return event[0]


def run_sage(n: int) -> Counts:
    events = workload(n)[0]
    out: list[Fired] = []
    env = LocalEnvironment("windows_bench")
    (
        env.from_collection(events)
        .keyby(event_key)
        .window(TumblingWindows(SIZE), timestamp=event_time, max_delay=MAX_DELAY)
        .aggregate(Count())
        .sink(out.append)
    )
    env.submit()
    return {(str(f.key), int(f.window.start)): f.result for f in out}


def run_bytewax(n: int) -> Counts:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.operators.windowing import EventClock, TumblingWindower, count_window
    from bytewax.testing import TestingSink, TestingSource, run_main

    stamped = workload(n)[1]
    out: list[tuple[str, tuple[int, int]]] = []
    flow = Dataflow("windows_bench")
    stream = op.input("events", flow, TestingSource(stamped, batch_size=1024))
    clock: EventClock[tuple[str, datetime]] = EventClock(
        lambda e: e[1], wait_for_system_duration=timedelta(seconds=MAX_DELAY)
    )
    windower = TumblingWindower(length=timedelta(seconds=SIZE), align_to=EPOCH)
    counts = count_window("count", stream, clock, windower, key=lambda e: e[0])
    op.output("out", counts.down, TestingSink(out))
    run_main(flow)
    return {(key, window_id * SIZE): count for key, (window_id, count) in out}


def case(name: str, runner: Any, n: int, errors: list[str]) -> Case:
    def run() -> int:
        got = runner(n)
        if got != expected(n):
            wrong = sum(1 for k, v in expected(n).items() if got.get(k) != v)
            errors.append(f"{name}: {wrong} windows with a wrong count, {len(got)} windows")
        return n

    return Case(name, run)


def bytewax_version() -> str:
    from importlib.metadata import version

    return version("bytewax")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="200,000 events, 2 rounds")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.events, args.rounds = 200_000, 2
    n = args.events
    workload(n), expected(n)  # built before any timing
    errors: list[str] = []
    sage = case("SAGE, keyby + window + aggregate", run_sage, n, errors)
    wax = case(f"Bytewax {bytewax_version()}, count_window", run_bytewax, n, errors)
    interleave([sage, wax], rounds=args.rounds)
    lines = [
        f"{n:,} events, {KEYS:,} keys, event time +1 s per {PER_SECOND} events and up to "
        f"{DISORDER} s out of order, a count per key in {SIZE} s tumbling windows "
        f"({len(expected(n)):,} results), watermark {MAX_DELAY} s behind; timed from building "
        f"the job to all results; both checked against a plain count; {args.rounds} "
        "interleaved rounds. records/s: median (min-max); ratio: median over rounds of the "
        "two speeds in the same round.",
        "",
        "| case | records/s | ratio | target | host steal |",
        "|---|---:|---|---|---:|",
        f"| {sage.name} | {fmt_rate(sage.rate)} ({sage.spread()}) "
        f"| **{sage.ratio_to(wax):.2f}x Bytewax** | >= 1.0x Bytewax | {sage.steal_pct} |",
        f"| {wax.name} | {fmt_rate(wax.rate)} ({wax.spread()}) |  |  | {wax.steal_pct} |",
    ]
    report_checked(
        "windows", "Windows throughput", lines, errors, args.write_readme and not args.quick
    )


if __name__ == "__main__":
    main()
