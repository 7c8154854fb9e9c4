"""Event-time progress: the watermark, and which records come too late for their windows.

A watermark ``w`` says "no record with a timestamp below ``w`` is expected any more". With
bounded out-of-orderness (Flink's ``forBoundedOutOfOrderness``, Bytewax's
``EventClock(wait_for_system_duration=...)`` by event time), a stream may be out of order
by at most ``max_delay``: the watermark is the largest timestamp seen minus ``max_delay``.

A window ``[start, end)`` is complete once the watermark reaches ``end``: it fires then. It
keeps its state ``allowed_lateness`` longer; a record for it that arrives meanwhile updates
it and it fires again. A record whose every window is past that is *late*: it goes to the
late output (never dropped silently).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sage.common.errors import ConfigError

__all__ = ["BoundedOutOfOrderness"]


@dataclass
class BoundedOutOfOrderness:
    """The watermark of a stream out of order by at most ``max_delay``.

    Raises:
        ConfigError: ``max_delay`` is negative or not a finite number.
    """

    max_delay: float = 0
    _max_seen: float = field(default=-math.inf, repr=False)

    def __post_init__(self) -> None:
        delay = self.max_delay
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not delay >= 0:
            raise ConfigError(
                f"BoundedOutOfOrderness(max_delay={delay!r}): use a number >= 0 "
                "(how far out of order, in event-time units)"
            )
        if not math.isfinite(delay):
            raise ConfigError(f"BoundedOutOfOrderness(max_delay={delay!r}): use a finite number")

    def observe(self, timestamp: float) -> None:
        """Note a record's timestamp."""
        if timestamp > self._max_seen:
            self._max_seen = timestamp

    @property
    def max_seen(self) -> float:
        """The largest timestamp seen (``-inf`` before the first record)."""
        return self._max_seen

    @property
    def watermark(self) -> float:
        """No record below this is expected (``-inf`` before the first record)."""
        return self._max_seen - self.max_delay

    def snapshot(self) -> float:
        """Its state, for a checkpoint."""
        return self._max_seen

    def restore(self, state: float) -> None:
        """Take back a :meth:`snapshot`."""
        self._max_seen = state
