"""What a task does when user code raises on a record: fail the job, skip, or dead-letter.

Each operator instance owns an :class:`ErrorHandler` built from the job's ``on_error`` mode.
Skipped records are counted in the operator's ``errors`` metric; dead letters are kept, with
the operator, instance, record and traceback, in the job's :class:`DeadLetterQueue`, and
optionally appended to a JSON-lines file, so nothing disappears silently.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

from sage.common.errors import CollectLimitError, OperatorError
from sage.kernel.config import ErrorMode
from sage.kernel.runtime.channel import Cancelled
from sage.kernel.runtime.metrics import OperatorStats

__all__ = ["DeadLetter", "DeadLetterQueue", "ErrorHandler"]

logger = logging.getLogger(__name__)

_LOGGED_PER_OPERATOR = 5  # skipped records logged with their error before going quiet


@dataclass(frozen=True)
class DeadLetter:
    """A record that user code failed on, kept instead of being lost.

    Attributes:
        operator: Display name of the operator.
        instance: Parallel instance index.
        record: The input record.
        error: ``"ValueError: bad input"``.
        traceback: The formatted traceback of the error.
        timestamp: Wall-clock time (seconds since the epoch).
    """

    operator: str
    instance: int
    record: Any
    error: str
    traceback: str
    timestamp: float

    def to_json(self) -> str:
        """One JSON line (the record as ``repr`` if it is not JSON-serialisable)."""
        try:
            record: Any = json.loads(json.dumps(self.record))
        except (TypeError, ValueError):
            record = repr(self.record)
        return json.dumps(
            {
                "operator": self.operator,
                "instance": self.instance,
                "record": record,
                "error": self.error,
                "traceback": self.traceback,
                "timestamp": self.timestamp,
            }
        )


class DeadLetterQueue:
    """All dead letters of a job, in arrival order; optionally mirrored to a file."""

    def __init__(self, path: str | None = None) -> None:
        self._items: list[DeadLetter] = []
        self._lock = threading.Lock()
        self._path = path

    def add(self, letter: DeadLetter) -> None:
        """Keep ``letter`` (and append it to the file, if configured)."""
        with self._lock:
            self._items.append(letter)
            if self._path is not None:
                with open(self._path, "a", encoding="utf-8") as fh:
                    fh.write(letter.to_json() + "\n")

    def items(self) -> list[DeadLetter]:
        """A copy of the dead letters so far."""
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        return len(self._items)


class ErrorHandler:
    """Applies the job's error mode for one operator instance."""

    __slots__ = ("_dead_letters", "_logged", "mode", "stats")

    def __init__(
        self, mode: ErrorMode, stats: OperatorStats, dead_letters: DeadLetterQueue
    ) -> None:
        self.mode = mode
        self.stats = stats
        self._dead_letters = dead_letters
        self._logged = 0

    def handle(self, exc: Exception, record: Any) -> None:
        """Deal with ``exc`` raised while processing ``record``.

        Errors that are not about the record pass through in every mode: a
        ``CollectLimitError`` fails the job (skipping would truncate the result silently), a
        ``Cancelled`` ends the task (the job is being torn down while the operator waited).

        Raises:
            OperatorError: in ``fail`` mode, naming the operator, instance and record.
            CollectLimitError: a collect received more records than its cap.
        """
        if isinstance(exc, Cancelled | CollectLimitError):
            raise exc
        stats = self.stats
        stats.errors += 1
        if self.mode is ErrorMode.FAIL:
            raise OperatorError(stats.name, stats.instance, stats.parallelism, record, exc) from exc
        if self.mode is ErrorMode.DEAD_LETTER:
            self._dead_letters.add(
                DeadLetter(
                    operator=stats.name,
                    instance=stats.instance,
                    record=record,
                    error=f"{type(exc).__name__}: {exc}",
                    traceback="".join(traceback.format_exception(exc)),
                    timestamp=time.time(),
                )
            )
        if self._logged < _LOGGED_PER_OPERATOR:
            self._logged += 1
            logger.warning(
                "%s (instance %d/%d): %s record after %s: %s%s",
                stats.name,
                stats.instance + 1,
                stats.parallelism,
                "skipped" if self.mode is ErrorMode.SKIP else "dead-lettered",
                type(exc).__name__,
                exc,
                " (further ones are counted, not logged)"
                if self._logged == _LOGGED_PER_OPERATOR
                else "",
            )
