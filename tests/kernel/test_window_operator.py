"""``keyby(...).window(...)`` in a running job: results against the plain-Python reference
of :mod:`test_windows`, with several parallel instances, and late records in the dead
letters (never dropped, whatever the error mode)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from tests.kernel.test_windows import reference

from sage.common.errors import PlanError
from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.windows import Count, Fired, SessionWindows, SlidingWindows, TumblingWindows


def events(n: int, max_delay: int, seed: int) -> list[dict[str, Any]]:
    """Records of 5 keys out of order by less than ``max_delay`` (none late)."""
    rng = random.Random(seed)
    return [
        {"key": f"k{rng.randrange(5)}", "ts": max(0, i - rng.randrange(max_delay + 1))}
        for i in range(n)
    ]


@pytest.mark.parametrize(
    "assigner", [TumblingWindows(10), SlidingWindows(20, 5), SessionWindows(3)], ids=str
)
@pytest.mark.parametrize("parallelism", [1, 3])
def test_windowed_counts_match_the_reference(assigner: Any, parallelism: int) -> None:
    records = events(2000, max_delay=8, seed=parallelism)
    env = LocalEnvironment("windows")
    windows = (
        env.from_collection(records)
        .keyby(lambda r: r["key"])
        .window(assigner, timestamp=lambda r: r["ts"], max_delay=8)
        .aggregate(Count(), parallelism=parallelism)
        .collect()
    )
    env.submit(autostop=True)
    got = {(f.key, f.window): f.result for f in windows}
    assert all(isinstance(f, Fired) and not f.update for f in windows)
    assert len(got) == len(windows)  # each window fired once
    assert got == reference([(r["key"], r["ts"]) for r in records], assigner)


def test_late_records_go_to_the_dead_letters_even_when_errors_fail_the_job() -> None:
    records = [{"key": "a", "ts": t} for t in (1, 2, 25, 3, 26, 30)]  # 3 comes after 25
    env = LocalEnvironment("late")  # on_error: fail (the default)
    windows = (
        env.from_collection(records)
        .keyby(lambda r: r["key"])
        .window(TumblingWindows(10), timestamp=lambda r: r["ts"], max_delay=5)
        .reduce(lambda a, b: {"key": a["key"], "ts": max(a["ts"], b["ts"])})
        .map(lambda fired: (fired.window.start, fired.result["ts"]))
        .collect()
    )
    env.submit(autostop=True)
    assert sorted(windows) == [(0, 2), (20, 26), (30, 30)]
    (letter,) = env.dead_letters
    assert letter.record == {"key": "a", "ts": 3} and letter.error.startswith("LateRecord")
    assert "allowed_lateness=0" in letter.error


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"assigner": 10}, "is not a window assigner"),
        ({"timestamp": "ts"}, "timestamp='ts' is not callable"),
        ({"max_delay": -1}, "max_delay=-1"),
        ({"allowed_lateness": -3}, "allowed_lateness=-3"),
    ],
)
def test_bad_window_arguments_are_refused_when_the_pipeline_is_built(
    kwargs: dict[str, Any], named: str
) -> None:
    env = LocalEnvironment("bad")
    keyed = env.from_collection([1]).keyby(lambda r: r)
    settings: dict[str, Any] = {"assigner": TumblingWindows(1), "timestamp": lambda r: r}
    settings.update(kwargs)
    assigner = settings.pop("assigner")
    with pytest.raises(PlanError, match=named):
        keyed.window(assigner, **settings)
    with pytest.raises(PlanError, match="lacks create"):
        keyed.window(TumblingWindows(1), timestamp=float).aggregate(object())  # type: ignore[arg-type]
