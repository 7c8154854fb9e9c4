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

from collections.abc import Callable, Hashable
from dataclasses import dataclass
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


_EMPTY = object()


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
        self._windows: dict[Hashable, dict[Window, Any]] = {}
        self._fired: set[tuple[Hashable, Window]] = set()  # fired at least once
        self._dirty: set[tuple[Hashable, Window]] = set()  # changed since it last fired

    def _expired(self, window: Window, watermark: float) -> bool:
        return window.end + self.allowed_lateness <= watermark

    def add(self, key: Hashable, timestamp: float, value: Any, watermark: float) -> Late | None:
        """Add a record to its windows; a :class:`Late` if every one is closed for good."""
        per_key = self._windows.setdefault(key, {})
        placed = False
        for window in self.assigner.assign(timestamp):
            absorbed: list[Window] = []
            if self.assigner.merging:
                for other in per_key:
                    if window.overlaps(other):
                        absorbed.append(other)
                        window = window.cover(other)
            if self._expired(window, watermark):
                continue
            aggregate = self.aggregate
            accumulator = aggregate.create()
            was_fired = False
            for other in absorbed:  # sessions: the merged window takes over their state
                accumulator = aggregate.merge(accumulator, per_key.pop(other))
                was_fired |= (key, other) in self._fired
                self._fired.discard((key, other))
                self._dirty.discard((key, other))
            accumulator = aggregate.add(per_key.get(window, accumulator), value)
            per_key[window] = accumulator
            if was_fired:
                self._fired.add((key, window))
            self._dirty.add((key, window))
            placed = True
        if not per_key:
            del self._windows[key]
        return None if placed else Late(key, timestamp, value)

    def fire(self, watermark: float) -> list[Fired]:
        """The windows complete at ``watermark`` that have not fired since they changed,
        in order of their end; windows past their lateness are dropped afterwards."""
        fired = []
        for key, per_key in list(self._windows.items()):
            for window in sorted(per_key, key=lambda w: (w.end, w.start)):
                if window.end > watermark:
                    continue
                marker = (key, window)
                if marker in self._dirty:
                    result = self.aggregate.result(per_key[window])
                    fired.append(Fired(key, window, result, update=marker in self._fired))
                    self._dirty.discard(marker)
                    self._fired.add(marker)
                if self._expired(window, watermark):
                    del per_key[window]
                    self._fired.discard(marker)
            if not per_key:
                del self._windows[key]
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
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take back a :meth:`snapshot` (what it held before is replaced)."""
        self._windows = {key: dict(per_key) for key, per_key in state["windows"].items()}
        self._fired = set(state["fired"])
        self._dirty = set(state["dirty"])
