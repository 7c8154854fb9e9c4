"""Which event-time windows a record belongs to: tumbling, sliding and session windows.

A window is the half-open interval ``[start, end)`` of event time. Timestamps, sizes and
gaps are numbers in one unit of the user's choosing (milliseconds as integers avoid the
rounding that binary fractions bring at window boundaries). As in Flink, windows are
aligned to ``offset`` (0: the epoch), so every key and every task cuts time the same way.

* :class:`TumblingWindows` — consecutive windows of ``size``; a record is in exactly one.
* :class:`SlidingWindows` — windows of ``size`` starting every ``slide``; a record is in
  ``size / slide`` of them.
* :class:`SessionWindows` — a record opens ``[t, t + gap)``; windows of one key that
  overlap merge, so records less than ``gap`` apart share a session and a session ends
  ``gap`` after its last record. (Flink also merges windows that only meet, end to start;
  here a session that reached its end has closed, so streaming and replaying agree.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from sage.common.errors import ConfigError

__all__ = ["SessionWindows", "SlidingWindows", "TumblingWindows", "Window", "WindowAssigner"]


class Window(NamedTuple):
    """The event-time interval ``[start, end)``.

    A named tuple rather than a dataclass: windows are dictionary keys touched for every
    record, and a tuple's hash and equality run in C (it orders by start, then end).
    """

    start: float
    end: float

    def covers(self, timestamp: float) -> bool:
        """Whether ``timestamp`` falls in the window."""
        return self.start <= timestamp < self.end

    def overlaps(self, other: Window) -> bool:
        """Whether the two share some time (session windows that do merge)."""
        return self.start < other.end and other.start < self.end

    def cover(self, other: Window) -> Window:
        """The smallest window covering both."""
        return Window(min(self.start, other.start), max(self.end, other.end))


class WindowAssigner(Protocol):
    """What a window operator needs of a kind of window."""

    merging: bool
    """Whether a key's windows merge as records arrive (sessions)."""

    def assign(self, timestamp: float) -> list[Window]:
        """The windows a record with ``timestamp`` belongs to."""
        ...


def _positive(owner: str, name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{owner}({name}={value!r}): use a number > 0 (event-time units)")
    if not math.isfinite(value):
        raise ConfigError(f"{owner}({name}={value!r}): use a finite number")


@dataclass(frozen=True)
class TumblingWindows:
    """Back-to-back windows of ``size``, aligned to ``offset``.

    Raises:
        ConfigError: ``size`` is not a positive finite number.
    """

    size: float
    offset: float = 0
    merging = False

    def __post_init__(self) -> None:
        _positive("TumblingWindows", "size", self.size)

    def assign(self, timestamp: float) -> list[Window]:
        start = timestamp - (timestamp - self.offset) % self.size
        return [Window(start, start + self.size)]


@dataclass(frozen=True)
class SlidingWindows:
    """Windows of ``size`` starting every ``slide`` (aligned to ``offset``).

    Raises:
        ConfigError: ``size`` or ``slide`` is not a positive finite number.
    """

    size: float
    slide: float
    offset: float = 0
    merging = False

    def __post_init__(self) -> None:
        _positive("SlidingWindows", "size", self.size)
        _positive("SlidingWindows", "slide", self.slide)

    def assign(self, timestamp: float) -> list[Window]:
        start = timestamp - (timestamp - self.offset) % self.slide  # the latest start
        windows = []
        while start > timestamp - self.size:
            windows.append(Window(start, start + self.size))
            start -= self.slide
        return windows


@dataclass(frozen=True)
class SessionWindows:
    """Per key, records less than ``gap`` apart share one window.

    Raises:
        ConfigError: ``gap`` is not a positive finite number.
    """

    gap: float
    merging = True

    def __post_init__(self) -> None:
        _positive("SessionWindows", "gap", self.gap)

    def assign(self, timestamp: float) -> list[Window]:
        return [Window(timestamp, timestamp + self.gap)]
