"""``CoMapFunction``: a map over connected streams, one method per input."""

from __future__ import annotations

from typing import Any

from sage.common.core.functions.base_function import BaseFunction

__all__ = ["BaseCoMapFunction", "CoMapFunction"]


class CoMapFunction(BaseFunction):
    """For ``a.connect(b).comap(...)``: input *i* goes to ``map<i>`` (``map0``, ``map1``...).

    Returning ``None`` emits nothing.

    Example:
        >>> class Tag(CoMapFunction):
        ...     def map0(self, data):
        ...         return ("query", data)
        ...     def map1(self, data):
        ...         return ("doc", data)
    """

    def map0(self, data: Any) -> Any:
        """Handle a record of the first connected stream."""
        raise NotImplementedError(f"{type(self).__name__}.map0(data) is not implemented")

    def map1(self, data: Any) -> Any:
        """Handle a record of the second connected stream."""
        raise NotImplementedError(f"{type(self).__name__}.map1(data) is not implemented")


BaseCoMapFunction = CoMapFunction
