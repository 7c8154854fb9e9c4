"""``JoinFunction``: a keyed join over connected streams."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

from sage.common.core.functions.base_function import BaseFunction

__all__ = ["BaseJoinFunction", "JoinFunction"]


class JoinFunction(BaseFunction):
    """For ``a.keyby(k).connect(b.keyby(k)).join(...)``.

    ``execute(payload, key, tag)`` is called for every record of either input; ``tag`` is the
    input index (0 for the first stream). Keep what must be matched in ``self.state`` (per key)
    and return an iterable of joined outputs (or ``None``).

    Example:
        >>> class InnerJoin(JoinFunction):
        ...     def execute(self, payload, key, tag):
        ...         seen = self.state.get(None) or ([], [])
        ...         seen[tag].append(payload)
        ...         self.state.set(seen)
        ...         other = seen[1 - tag]
        ...         return [(key, payload, o) if tag == 0 else (key, o, payload) for o in other]
    """

    def execute(self, payload: Any, key: Hashable, tag: int) -> Iterable[Any] | None:
        """Return the outputs produced by ``payload`` arriving on input ``tag``."""
        raise NotImplementedError(
            f"{type(self).__name__}.execute(payload, key, tag) is not implemented"
        )


BaseJoinFunction = JoinFunction
