"""``keyby(...).window(...)``: the head of a window operator's task.

It reads the keyed records, stamps each with its event time, keeps the watermark (bounded
out-of-orderness over the records this instance sees: never ahead of the stream's, so it
declares no record late that the whole stream's watermark would not), adds each record to
its windows and emits each window's :class:`~sage.kernel.windows.Fired` result once the
watermark passes its end (again, updated, when a record comes within the allowed lateness).
A late record goes to the job's dead letters, named as late, whatever the error mode: it is
not a failure of user code, and it must never vanish. At end of stream every open window
fires. Its windows and watermark are in the task's checkpoints.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from sage.kernel.runtime.error_policy import DeadLetter, DeadLetterQueue, ErrorHandler
from sage.kernel.runtime.heads import Head
from sage.kernel.runtime.metrics import OperatorStats
from sage.kernel.windows import BoundedOutOfOrderness, Late, WindowedState

__all__ = ["WindowHead"]

logger = logging.getLogger(__name__)

_LOGGED = 5  # late records logged per operator instance (the rest are counted)


class WindowHead(Head):
    """The window operator; see the module docstring.

    Args:
        options: The node's ``assigner``, ``aggregate``, ``timestamp`` (record -> event
            time), ``max_delay`` and ``allowed_lateness``.
        stats: The operator's figures.
        errors: Handles a record whose timestamp function raised.
        dead_letters: Where late records go.
        keyed_input: Whether each input carries ``(key, value)`` pairs.
    """

    def __init__(
        self,
        options: dict[str, Any],
        stats: OperatorStats,
        errors: ErrorHandler,
        dead_letters: DeadLetterQueue,
        keyed_input: Sequence[bool],
    ) -> None:
        self.state = WindowedState(
            options["assigner"], options["aggregate"], options["allowed_lateness"]
        )
        self.clock = BoundedOutOfOrderness(options["max_delay"])
        self.timestamp = options["timestamp"]
        self.allowed_lateness = options["allowed_lateness"]
        self.stats = stats
        self.errors = errors
        self.dead_letters = dead_letters
        self._keyed = tuple(keyed_input)
        self.late = 0

    def process(self, input_index: int, records: Sequence[Any]) -> Sequence[Any]:
        stats, add, stamp = self.stats, self.state.add, self.timestamp
        stats.records_in += len(records)
        keyed = self._keyed[input_index]
        # The watermark is kept in locals over the batch and the clock learns the batch's
        # largest timestamp at its end: per record, the watermark clock.observe would give,
        # without two calls per record.
        delay = self.clock.max_delay
        high = self.clock.max_seen
        watermark = high - delay
        for record in records:
            key, value = record if keyed else (None, record)
            try:
                timestamp = stamp(value)
            except Exception as exc:  # the user's timestamp function failed on this record
                self.errors.handle(exc, value)
                continue
            if timestamp > high:
                high = timestamp
                watermark = high - delay
            late = add(key, timestamp, value, watermark)
            if late is not None:
                self._dead_letter(late, watermark)
        self.clock.observe(high)
        return self._emit(self.clock.watermark)

    def finish(self) -> list[Any]:
        return self._emit(math.inf)

    def _emit(self, watermark: float) -> list[Any]:
        fired = self.state.fire(watermark)
        self.stats.records_out += len(fired)
        return fired

    def _dead_letter(self, late: Late, watermark: float) -> None:
        self.late += 1
        stats = self.stats
        error = (
            f"LateRecord: event time {late.timestamp} is behind the watermark {watermark} by "
            f"more than allowed_lateness={self.allowed_lateness}: all of its windows had "
            "closed (raise max_delay or allowed_lateness to keep such records)"
        )
        self.dead_letters.add(
            DeadLetter(stats.name, stats.instance, late.value, error, "", time.time())
        )
        if self.late <= _LOGGED:
            logger.warning(
                "%s (instance %d/%d): %s%s",
                stats.name,
                stats.instance + 1,
                stats.parallelism,
                error,
                " (further ones are counted, not logged)" if self.late == _LOGGED else "",
            )

    def snapshot_state(self) -> Any:
        return {"windows": self.state.snapshot(), "max_seen": self.clock.snapshot()}

    def restore_state(self, state: Any) -> None:
        self.state.restore(state["windows"])
        self.clock.restore(state["max_seen"])
