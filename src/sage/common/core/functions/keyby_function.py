"""``KeyByFunction``: extracts the key that partitions a keyed stream."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from sage.common.core.functions.base_function import BaseFunction

__all__ = ["KeyByFunction"]


class KeyByFunction(BaseFunction):
    """Returns the key of a record; records with equal keys meet in the same parallel instance.

    Keys must hash the same way in every process: ``str``, ``bytes``, ``int``, ``float``,
    ``bool``, ``None``, and tuples/frozensets of those (plus enums and dataclasses with a
    stable ``repr``).

    Example:
        >>> class ByUser(KeyByFunction):
        ...     def execute(self, data):
        ...         return data["user"]
    """

    def execute(self, data: Any) -> Hashable:
        """Return the key of ``data``."""
        raise NotImplementedError(f"{type(self).__name__}.execute(data) is not implemented")
