"""The jobs the dashboard shows: what publishers push and JobManagers report, with live rates.

Plain data and arithmetic, no I/O: the server feeds it snapshots and reads rows out. A job's
*rate* per operator is computed here from two successive snapshots (records processed since
the previous one over the time between them), so the page shows what an operator does now,
not its average since the job started.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["JobBoard", "processed"]

STALE_AFTER_S = 5.0
"""A running local job that has not published for this long is shown as stale (its process
may have died)."""

KEEP_ENDED_S = 600.0
"""Ended local jobs stay on the board this long."""

MAX_JOBS = 100

MIN_RATE_INTERVAL_S = 0.2
"""Rates are computed over at least this long (a burst of snapshots keeps the last rate)."""


def processed(operator: Mapping[str, Any]) -> int:
    """Records an operator has processed: a source's output, any other operator's input."""
    key = "records_out" if operator.get("kind") == "source" else "records_in"
    return int(operator.get(key) or 0)


@dataclass
class _Entry:
    row: dict[str, Any]
    received_at: float
    first_seen: float
    counts: dict[str, int] = field(default_factory=dict)
    counted_at: float | None = None
    rates: dict[str, float] = field(default_factory=dict)


class JobBoard:
    """Jobs by id, each with its latest snapshot and per-operator rates.

    Args:
        clock: Seconds (monotonic); tests pass their own.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._jobs: dict[str, _Entry] = {}

    def update(self, row: Mapping[str, Any]) -> None:
        """Take a job snapshot: ``id``, ``name``, ``status``, ``metrics`` (``JobMetrics`` as a
        dict) and whatever else the page shows (``source``, ``runtime``, ``pid``...).

        Raises:
            ValueError: ``row`` has no string ``id`` or its ``metrics`` is not a dict.
        """
        job_id = row.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise ValueError("a job snapshot needs a non-empty string 'id'")
        metrics = row.get("metrics")
        if metrics is not None and not isinstance(metrics, dict):
            raise ValueError(f"job {job_id!r}: 'metrics' must be an object")
        now = self._clock()
        entry = self._jobs.get(job_id)
        if entry is None:
            entry = self._jobs[job_id] = _Entry(dict(row), now, now)
        entry.row, entry.received_at = dict(row), now
        counts = {
            str(op.get("node_id")): processed(op)
            for op in (metrics or {}).get("operators") or ()
            if isinstance(op, dict)
        }
        if entry.counted_at is None:
            entry.counts, entry.counted_at = counts, now
        elif now - entry.counted_at >= MIN_RATE_INTERVAL_S:  # closer snapshots: keep the rate
            dt = now - entry.counted_at
            entry.rates = {
                node: max(0, count - entry.counts.get(node, 0)) / dt
                for node, count in counts.items()
            }
            entry.counts, entry.counted_at = counts, now
        if len(self._jobs) > MAX_JOBS:
            self._evict()

    def drop_missing(self, origin: str, ids: set[str]) -> None:
        """Forget the jobs from ``origin`` (a row's ``origin``) that are not in ``ids``: a
        JobManager pruned them, or cannot be reached."""
        for job_id in [
            k for k, e in self._jobs.items() if e.row.get("origin") == origin and k not in ids
        ]:
            del self._jobs[job_id]

    def rows(self) -> list[dict[str, Any]]:
        """Every job for the page, running ones first, then the most recent."""
        now = self._clock()
        for job_id in [
            k
            for k, e in self._jobs.items()
            if _ended(e.row)
            and e.row.get("source") == "local"
            and now - e.received_at > KEEP_ENDED_S
        ]:
            del self._jobs[job_id]
        out: list[tuple[bool, float, dict[str, Any]]] = []
        for entry in self._jobs.values():
            row = dict(entry.row)
            running = not _ended(row)
            row["records_per_s"] = (
                {k: round(v, 3) for k, v in entry.rates.items()}
                if running
                else {k: 0.0 for k in entry.rates}
            )
            row["stale"] = (
                running and row.get("source") == "local" and now - entry.received_at > STALE_AFTER_S
            )
            row.setdefault("elapsed_s", (row.get("metrics") or {}).get("elapsed_s", 0.0))
            out.append((_ended(row), -entry.first_seen, row))
        out.sort(key=lambda t: t[:2])
        return [row for *_, row in out]

    def _evict(self) -> None:
        ended = sorted((e.received_at, k) for k, e in self._jobs.items() if _ended(e.row))
        for _, job_id in ended[: len(self._jobs) - MAX_JOBS]:
            del self._jobs[job_id]


def _ended(row: Mapping[str, Any]) -> bool:
    return row.get("status") in ("finished", "failed", "cancelled")
