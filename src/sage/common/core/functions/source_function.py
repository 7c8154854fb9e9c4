"""``SourceFunction`` and ``StopSignal``: where records come from."""

from __future__ import annotations

from typing import Any

from sage.common.core.functions.base_function import BaseFunction

__all__ = ["SourceFunction", "StopSignal"]


class StopSignal:
    """Returned by ``SourceFunction.execute()`` to end the stream.

    Return the class itself or an instance (``StopSignal("file exhausted")``).
    """

    def __init__(self, reason: str = "") -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"StopSignal({self.reason!r})"


class SourceFunction(BaseFunction):
    """Produces records: each ``execute()`` call returns the next record.

    Return :class:`StopSignal` to end the stream. Returning ``None`` emits nothing for that call.
    ``execute`` may block until a record is available (the runtime never sleeps between
    calls). With ``parallelism > 1`` each instance has its own function object and can read
    ``self.ctx.instance_index`` to take its share.

    Example:
        >>> class Numbers(SourceFunction):
        ...     def __init__(self, n, **kwargs):
        ...         super().__init__(**kwargs)
        ...         self.i, self.n = 0, n
        ...     def execute(self):
        ...         if self.i >= self.n:
        ...             return StopSignal
        ...         self.i += 1
        ...         return self.i
    """

    def execute(self) -> Any:
        """Return the next record, or :class:`StopSignal` to end the stream."""
        raise NotImplementedError(f"{type(self).__name__}.execute() is not implemented")
