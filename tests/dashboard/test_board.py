"""The job board: per-operator rates from successive snapshots, staleness, ordering."""

from __future__ import annotations

from typing import Any

import pytest

from sage.dashboard.board import STALE_AFTER_S, JobBoard


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def snapshot(job_id: str, source_out: int, map_in: int, status: str = "running") -> dict[str, Any]:
    return {
        "id": job_id,
        "name": job_id,
        "status": status,
        "source": "local",
        "metrics": {
            "operators": [
                {"node_id": 0, "kind": "source", "records_in": 0, "records_out": source_out},
                {"node_id": 1, "kind": "map", "records_in": map_in, "records_out": map_in},
            ]
        },
    }


def test_rates_are_records_processed_between_snapshots_over_the_time_between() -> None:
    clock = Clock()
    board = JobBoard(clock)
    board.update(snapshot("a", 1000, 900))
    assert board.rows()[0]["records_per_s"] == {}  # one snapshot: no rate yet
    clock.now += 2.0
    board.update(snapshot("a", 5000, 4900))
    assert board.rows()[0]["records_per_s"] == {"0": 2000.0, "1": 2000.0}
    clock.now += 0.05  # a burst of snapshots keeps the last rate instead of a noisy one
    board.update(snapshot("a", 5100, 5000))
    assert board.rows()[0]["records_per_s"] == {"0": 2000.0, "1": 2000.0}
    clock.now += 0.95
    board.update(snapshot("a", 5000 + 500, 4900 + 1000))
    assert board.rows()[0]["records_per_s"] == {"0": 500.0, "1": 1000.0}


def test_an_ended_job_shows_no_rate_and_a_silent_running_one_goes_stale() -> None:
    clock = Clock()
    board = JobBoard(clock)
    board.update(snapshot("quiet", 10, 10))
    board.update(snapshot("done", 10, 10))
    clock.now += 1.0
    board.update(snapshot("done", 20, 20, status="finished"))
    rows = {r["id"]: r for r in board.rows()}
    assert set(rows["done"]["records_per_s"].values()) == {0.0}
    assert not rows["quiet"]["stale"]
    clock.now += STALE_AFTER_S + 0.1
    rows = {r["id"]: r for r in board.rows()}
    assert rows["quiet"]["stale"] and not rows["done"]["stale"]
    assert [r["id"] for r in board.rows()] == ["quiet", "done"]  # running first


def test_jobs_of_a_jobmanager_that_forgot_them_are_dropped() -> None:
    board = JobBoard(Clock())
    for job_id in ("x", "y"):
        board.update({**snapshot(job_id, 1, 1), "origin": "jobmanager h:1"})
    board.update(snapshot("local", 1, 1))
    board.drop_missing("jobmanager h:1", {"y"})
    assert sorted(r["id"] for r in board.rows()) == ["local", "y"]


@pytest.mark.parametrize("row", [{}, {"id": ""}, {"id": 3}, {"id": "a", "metrics": [1]}])
def test_a_malformed_snapshot_is_refused(row: dict[str, Any]) -> None:
    board = JobBoard(Clock())
    with pytest.raises(ValueError):
        board.update(row)
    assert board.rows() == []
