"""The fault-injection pipeline shared by the local and Ray checkpoint tests.

A keyed running count over ``n`` integers (key ``i % KEYS``) written to a
:class:`TransactionalFileSink`. :func:`check_exactly_once` reads the committed output and
checks that every record was written exactly once with exactly the right running count.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from sage.common.core.functions.map_function import MapFunction
from sage.common.core.functions.source_function import SourceFunction, StopSignal
from sage.kernel.checkpoint import TransactionalFileSink, read_committed
from sage.kernel.checkpoint.state import END_OF_INPUT

KEYS = 37
checkpointed = threading.Event()  # set once a checkpoint has completed (clear it per test)


class Numbers(SourceFunction):
    """``0, 1, ..., n - 1``; the position is its checkpointed state."""

    state_fields = ("offset",)

    def __init__(self, n: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n = n
        self.offset = 0

    def execute(self) -> Any:
        if self.offset >= self.n:
            return StopSignal
        self.offset += 1
        return self.offset - 1


class RunningCount(MapFunction):
    """``(key, value, count of the key so far)``: keyed state."""

    def execute(self, value: int) -> tuple[int, int, int]:
        count = self.state.get(0) + 1
        self.state.set(count)
        return value % KEYS, value, count


class AlwaysFails(MapFunction):
    """Raises on record 10, every time: a job with it never finishes."""

    def execute(self, value: int) -> int:
        if value == 10:
            raise ValueError("record 10 is poison")
        return value


class SignallingSink(TransactionalFileSink):
    """A transactional sink that sets :data:`checkpointed` once a checkpoint completes."""

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        super().notify_checkpoint_complete(checkpoint_id)
        if checkpoint_id != END_OF_INPUT:
            checkpointed.set()


def check_exactly_once(directory: Path, n: int) -> None:
    """Every value 0..n-1 committed once, each key's counts exactly 1..N_k."""
    rows = read_committed(directory)
    values = Counter(value for _, value, _ in rows)
    duplicated = [v for v, c in values.items() if c > 1]
    assert not duplicated, f"{len(duplicated)} values written more than once, e.g. {duplicated[:5]}"
    assert len(values) == n, f"{n - len(values)} values missing"
    counts: defaultdict[int, list[int]] = defaultdict(list)
    for key, _, count in rows:
        counts[key].append(count)
    expected = Counter(v % KEYS for v in range(n))
    for key, seen in counts.items():
        assert sorted(seen) == list(range(1, expected[key] + 1)), f"key {key}: wrong counts"
    leftovers = [p.name for p in directory.iterdir() if not p.name.endswith(".jsonl")]
    assert not leftovers, f"uncommitted files left: {leftovers[:5]}"
