"""``SinkFunction``: the end of a pipeline; consumes records."""

from __future__ import annotations

from typing import Any

from sage.common.core.functions.base_function import BaseFunction

__all__ = ["SinkFunction"]


class SinkFunction(BaseFunction):
    """Consumes each record (write to a file, a database, a list...); the return value is ignored.

    Example:
        >>> class Collect(SinkFunction):
        ...     def __init__(self, out, **kwargs):
        ...         super().__init__(**kwargs)
        ...         self.out = out
        ...     def execute(self, data):
        ...         self.out.append(data)
    """

    def execute(self, data: Any) -> None:
        """Consume one record."""
        raise NotImplementedError(f"{type(self).__name__}.execute(data) is not implemented")
