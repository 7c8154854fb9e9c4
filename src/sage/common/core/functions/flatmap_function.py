"""``FlatMapFunction``: one record in, zero or more records out."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sage.common.core.functions.base_function import BaseFunction

__all__ = ["FlatMapFunction"]


class FlatMapFunction(BaseFunction):
    """Emits every item of the iterable ``execute`` returns (a list, a generator, ...).

    Alternatively call ``self.collect(item)`` for each output and return ``None``.

    Example:
        >>> class Words(FlatMapFunction):
        ...     def execute(self, line):
        ...         return line.split()
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._collected: list[Any] = []

    def collect(self, item: Any) -> None:
        """Emit ``item`` (for functions that prefer pushing outputs to returning them)."""
        self._collected.append(item)

    def drain_collected(self) -> list[Any]:
        """Return and forget the items passed to :meth:`collect` since the last call."""
        items, self._collected = self._collected, []
        return items

    def execute(self, data: Any) -> Iterable[Any] | None:
        """Return an iterable of outputs (or ``None`` after using :meth:`collect`)."""
        raise NotImplementedError(f"{type(self).__name__}.execute(data) is not implemented")
