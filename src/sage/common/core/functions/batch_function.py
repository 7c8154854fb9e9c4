"""``BatchFunction``: a bounded source that ends by returning ``None``."""

from __future__ import annotations

from typing import Any

from sage.common.core.functions.base_function import BaseFunction

__all__ = ["BatchFunction"]


class BatchFunction(BaseFunction):
    """A bounded source for ``env.from_batch``: ``execute()`` returns records, then ``None``.

    Example:
        >>> class Lines(BatchFunction):
        ...     def __init__(self, lines, **kwargs):
        ...         super().__init__(**kwargs)
        ...         self.lines = iter(lines)
        ...     def execute(self):
        ...         return next(self.lines, None)
    """

    def execute(self) -> Any:
        """Return the next record, or ``None`` when the batch is exhausted."""
        raise NotImplementedError(f"{type(self).__name__}.execute() is not implemented")
