"""Per-key state for operators that run after ``keyby``.

A keyed operator instance owns one :class:`KeyedStateBackend`: a dictionary from key to value
plus the key of the record being processed. Functions see it through :class:`KeyedState`
(``self.state``), whose reads and writes always refer to the current record's key, as Flink's
``ValueState`` does. The backend's :meth:`~KeyedStateBackend.snapshot` and
:meth:`~KeyedStateBackend.restore` are what checkpoints save and load.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any

__all__ = ["KeyedState", "KeyedStateBackend"]

_MISSING: Any = object()


class KeyedStateBackend:
    """Values by key for one operator instance; ``current_key`` is set by the runtime per record."""

    __slots__ = ("current_key", "values")

    def __init__(self) -> None:
        self.values: dict[Hashable, Any] = {}
        self.current_key: Hashable = None

    def snapshot(self) -> dict[Hashable, Any]:
        """A shallow copy of all per-key values (what a checkpoint stores)."""
        return dict(self.values)

    def restore(self, values: dict[Hashable, Any]) -> None:
        """Replace all per-key values with ``values`` (what a restart loads)."""
        self.values = dict(values)


class KeyedState:
    """The state of the current record's key.

    Example:
        >>> from sage.common.core.functions.map_function import MapFunction
        >>> class RunningCount(MapFunction):
        ...     def execute(self, word):
        ...         n = self.state.get(0) + 1
        ...         self.state.set(n)
        ...         return (word, n)
    """

    __slots__ = ("_backend",)

    def __init__(self, backend: KeyedStateBackend) -> None:
        self._backend = backend

    @property
    def key(self) -> Hashable:
        """The key of the record being processed."""
        return self._backend.current_key

    def get(self, default: Any = None) -> Any:
        """The current key's value, or ``default`` when it has none yet."""
        return self._backend.values.get(self._backend.current_key, default)

    def set(self, value: Any) -> None:
        """Store ``value`` for the current key."""
        self._backend.values[self._backend.current_key] = value

    update = set

    @property
    def value(self) -> Any:
        """The current key's value (``None`` when unset); assignable."""
        return self._backend.values.get(self._backend.current_key)

    @value.setter
    def value(self, value: Any) -> None:
        self._backend.values[self._backend.current_key] = value

    def clear(self) -> None:
        """Forget the current key's value."""
        self._backend.values.pop(self._backend.current_key, None)

    def keys(self) -> Iterator[Hashable]:
        """Every key this instance holds state for."""
        return iter(list(self._backend.values))

    def items(self) -> Iterator[tuple[Hashable, Any]]:
        """``(key, value)`` for every key this instance holds state for."""
        return iter(list(self._backend.values.items()))
