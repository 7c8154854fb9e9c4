"""``MapFunction``: one record in, one record out (``None`` emits nothing)."""

from __future__ import annotations

from typing import Any

from sage.common.core.functions.base_function import BaseFunction

__all__ = ["MapFunction"]


class MapFunction(BaseFunction):
    """Transforms each record; returning ``None`` drops it.

    Example:
        >>> class Double(MapFunction):
        ...     def execute(self, data):
        ...         return data * 2
    """

    def execute(self, data: Any) -> Any:
        """Return the transformed record, or ``None`` to emit nothing."""
        raise NotImplementedError(f"{type(self).__name__}.execute(data) is not implemented")
