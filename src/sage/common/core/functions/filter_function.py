"""``FilterFunction``: keeps the records for which ``execute`` is true."""

from __future__ import annotations

from typing import Any

from sage.common.core.functions.base_function import BaseFunction

__all__ = ["FilterFunction"]


class FilterFunction(BaseFunction):
    """Keeps a record when ``execute(data)`` returns a true value.

    Example:
        >>> class NonEmpty(FilterFunction):
        ...     def execute(self, data):
        ...         return bool(data)
    """

    def execute(self, data: Any) -> bool:
        """Return true to keep ``data``."""
        raise NotImplementedError(f"{type(self).__name__}.execute(data) is not implemented")
