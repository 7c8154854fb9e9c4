"""The windows of a keyed stream: their aggregates, when they fire, and the late records.

:class:`WindowedState` is the state of one window operator instance (the keys routed to
it): pure data and logic, no threads and no clock, so the runtime drives it (``add`` each
record with the current watermark, ``fire`` when the watermark moves) and checkpoints it
(``snapshot`` / ``restore``), and tests pin it on hand-built streams.

Semantics, as Flink's event-time windows:

* a window fires once the watermark reaches its end, with the aggregate of its records;
* it keeps its state ``allowed_lateness`` longer: a record for it that comes meanwhile
  updates it and it fires again (``Fired.update`` true);
* a record whose windows are all past that is returned as :class:`Late`, never dropped;
* session windows of a key merge as records arrive (a record less than ``gap`` from a
  session joins it; one that bridges two sessions merges them); lateness is judged on the merged
  window, so a record inside a session still open is not late.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from heapq import heappop, heappush
from typing import Any, Generic, Protocol, TypeVar

from sage.common.errors import ConfigError
from sage.kernel.windows.assigners import Window, WindowAssigner

__all__ = ["Aggregate", "Fired", "Late", "Reduce", "WindowedState", "check_lateness"]

V = TypeVar("V")


class Aggregate(Protocol):
    """How a window's records become its result (Flink's ``AggregateFunction``)."""

    def create(self) -> Any:
        """An empty accumulator."""
        ...

    def add(self, accumulator: Any, value: Any) -> Any:
        """The accumulator with ``value`` added (may update it in place and return it)."""
        ...

    def merge(self, a: Any, b: Any) -> Any:
        """Two accumulators as one (session windows that merge)."""
        ...

    def result(self, accumulator: Any) -> Any:
        """What the window emits."""
        ...


_EMPTY = object()  # Reduce's accumulator before its first value
_MISSING = object()  # no accumulator for the window yet
_ASSIGNED = 1024  # timestamps whose windows are cached


@dataclass(frozen=True)
class Reduce(Generic[V]):
    """An :class:`Aggregate` from a reduce function ``(a, b) -> a⊕b`` (sum, max, ...)."""

    function: Callable[[V, V], V]

    def create(self) -> Any:
        return _EMPTY

    def add(self, accumulator: Any, value: V) -> Any:
        return value if accumulator is _EMPTY else self.function(accumulator, value)

    def merge(self, a: Any, b: Any) -> Any:
        if a is _EMPTY:
            return b
        return a if b is _EMPTY else self.function(a, b)

    def result(self, accumulator: Any) -> Any:
        return accumulator


class Count:
    """An :class:`Aggregate`: how many records a window holds."""

    def create(self) -> int:
        return 0

    def add(self, accumulator: int, value: Any) -> int:
        return accumulator + 1

    def merge(self, a: int, b: int) -> int:
        return a + b

    def result(self, accumulator: int) -> int:
        return accumulator


@dataclass(frozen=True)
class Fired:
    """A window's result: ``update`` when it fired before (a record came within lateness)."""

    key: Hashable
    window: Window
    result: Any
    update: bool = False


@dataclass(frozen=True)
class Late:
    """A record that came after all of its windows were closed for good."""

    key: Hashable
    timestamp: float
    value: Any


def check_lateness(allowed_lateness: float) -> None:
    """Refuse an ``allowed_lateness`` that is not a number >= 0.

    Raises:
        ConfigError: naming the value and the fix.
    """
    if isinstance(allowed_lateness, bool) or not allowed_lateness >= 0:
        raise ConfigError(
            f"allowed_lateness={allowed_lateness!r}: use a number >= 0 (event-time units)"
        )


class WindowedState:
    """The open windows of the keys of one operator instance; see the module docstring.

    Each window has a timer (as in Flink): at its end, to fire, then at its end plus the
    allowed lateness, to be dropped. :meth:`fire` pops the timers the watermark has
    reached, so it costs the windows that are due, not every open window of every key
    (a batch of records usually completes no window at all).

    Args:
        assigner: Which windows a record belongs to.
        aggregate: How a window's records become its result.
        allowed_lateness: How long after its end (in event time) a window still takes
            records.

    Raises:
        ConfigError: ``allowed_lateness`` is negative.
    """

    def __init__(
        self, assigner: WindowAssigner, aggregate: Aggregate, allowed_lateness: float = 0
    ) -> None:
        check_lateness(allowed_lateness)
        self.assigner = assigner
        self.aggregate = aggregate
        self.allowed_lateness = allowed_lateness
        self._merging = assigner.merging
        self._windows: dict[Hashable, dict[Window, Any]] = {}
        self._fired: set[tuple[Hashable, Window]] = set()  # fired at least once
        self._dirty: set[tuple[Hashable, Window]] = set()  # changed since it last fired
        # (time, sequence, key, window): a heap; the sequence orders timers due together
        # (keys need not be comparable) and makes the order survive a snapshot
        self._timers: list[tuple[float, int, Hashable, Window]] = []
        self._sequence = 0
        self._fired_up_to = -math.inf  # every timer at or below this has been popped
        self._assigned: dict[float, list[Window]] = {}  # the assigner's answers, cached:
        # records near in time share timestamps (bounded: cleared when it fills)

    def _expired(self, window: Window, watermark: float) -> bool:
        return window.end + self.allowed_lateness <= watermark

    def _schedule(self, time: float, key: Hashable, window: Window) -> None:
        self._sequence += 1
        heappush(self._timers, (time, self._sequence, key, window))

    def add(self, key: Hashable, timestamp: float, value: Any, watermark: float) -> Late | None:
        """Add a record to its windows; a :class:`Late` if every one is closed for good."""
        per_key = self._windows.get(key)
        if per_key is None:
            per_key = self._windows[key] = {}
        assigned = self._assigned.get(timestamp)
        if assigned is None:
            assigned = self._assign(timestamp)
        if self._merging:
            placed = self._add_merging(per_key, key, assigned[0], value, watermark)
        else:
            placed = False
            lateness, aggregate = self.allowed_lateness, self.aggregate
            for window in assigned:
                if window.end + lateness <= watermark:
                    continue
                accumulator = per_key.get(window, _MISSING)
                if accumulator is _MISSING:
                    accumulator = aggregate.create()
                    self._schedule(window.end, key, window)
                    self._dirty.add((key, window))
                elif window.end <= self._fired_up_to and (key, window) not in self._dirty:
                    # it fired: an update is due. (A window ending later has not fired
                    # yet, so it is dirty already: nothing to note, the common case.)
                    self._schedule(window.end, key, window)
                    self._dirty.add((key, window))
                per_key[window] = aggregate.add(accumulator, value)
                placed = True
        if not per_key:
            del self._windows[key]
        return None if placed else Late(key, timestamp, value)

    def _assign(self, timestamp: float) -> list[Window]:
        if len(self._assigned) >= _ASSIGNED:
            self._assigned.clear()
        assigned = self._assigned[timestamp] = self.assigner.assign(timestamp)
        return assigned

    def _add_merging(
        self,
        per_key: dict[Window, Any],
        key: Hashable,
        window: Window,
        value: Any,
        watermark: float,
    ) -> bool:
        """Sessions: add to the window that ``window`` and the sessions it overlaps merge
        into; whether the record was placed (not late)."""
        absorbed: list[Window] = []
        for other in per_key:
            # A session past its lateness is closed for good even if the next ``fire``
            # has not dropped it yet: merging into it would make the result depend on
            # where the runtime's batches happen to end.
            if window.overlaps(other) and not self._expired(other, watermark):
                absorbed.append(other)
                window = window.cover(other)
        if self._expired(window, watermark):
            return False
        aggregate = self.aggregate
        marker = (key, window)
        if absorbed:  # the merged window takes over their state
            accumulator = aggregate.create()
            was_fired = False
            for other in absorbed:
                accumulator = aggregate.merge(accumulator, per_key.pop(other))
                was_fired |= (key, other) in self._fired
                self._fired.discard((key, other))
                self._dirty.discard((key, other))
            if was_fired:
                self._fired.add(marker)
        else:
            accumulator = aggregate.create()
        self._schedule(window.end, key, window)
        per_key[window] = aggregate.add(accumulator, value)
        self._dirty.add(marker)
        return True

    def fire(self, watermark: float) -> list[Fired]:
        """The windows complete at ``watermark`` that have not fired since they changed,
        in order of their end; windows past their lateness are dropped afterwards."""
        timers = self._timers
        if watermark > self._fired_up_to:
            self._fired_up_to = watermark
        if not timers or timers[0][0] > watermark:
            return []
        fired = []
        windows, dirty, fired_before = self._windows, self._dirty, self._fired
        lateness = self.allowed_lateness
        while timers and timers[0][0] <= watermark:
            time, _, key, window = heappop(timers)
            per_key = windows.get(key)
            if per_key is None or window not in per_key:
                continue  # merged into a larger session, or dropped
            marker = (key, window)
            if marker in dirty:  # the timer's time, hence the window's end, is reached
                result = self.aggregate.result(per_key[window])
                fired.append(Fired(key, window, result, update=marker in fired_before))
                dirty.discard(marker)
                fired_before.add(marker)
            if window.end + lateness <= watermark:
                del per_key[window]
                fired_before.discard(marker)
                if not per_key:
                    del windows[key]
            elif time < window.end + lateness:
                self._schedule(window.end + lateness, key, window)
        fired.sort(key=lambda f: (f.window.end, f.window.start))
        return fired

    def __len__(self) -> int:
        """Open windows, all keys."""
        return sum(len(per_key) for per_key in self._windows.values())

    def snapshot(self) -> dict[str, Any]:
        """Its state, for a checkpoint (picklable when keys and accumulators are)."""
        return {
            "windows": {key: dict(per_key) for key, per_key in self._windows.items()},
            "fired": set(self._fired),
            "dirty": set(self._dirty),
            "timers": list(self._timers),
            "sequence": self._sequence,
            "fired_up_to": self._fired_up_to,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a :meth:`snapshot` (what it held before is replaced).

        A snapshot without timers (taken before windows had them) gets one per window at
        its end: the first :meth:`fire` then sorts out which are due. Every window ending
        after ``_fired_up_to`` must be dirty (:meth:`add` relies on it): a clean window
        has fired, so the watermark had reached its end.
        """
        self._windows = {key: dict(per_key) for key, per_key in state["windows"].items()}
        self._fired = set(state["fired"])
        self._dirty = set(state["dirty"])
        if "timers" in state:
            self._timers = list(state["timers"])
            self._sequence = state["sequence"]
            self._fired_up_to = state["fired_up_to"]
            return
        self._timers, self._sequence, self._fired_up_to = [], 0, -math.inf
        for key, per_key in self._windows.items():
            for window in per_key:
                self._schedule(window.end, key, window)
                if (key, window) not in self._dirty:  # it fired: the watermark passed it
                    self._fired_up_to = max(self._fired_up_to, window.end)
