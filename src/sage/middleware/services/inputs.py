"""Checks of what callers pass to the vector services: ids, metadata, vectors' emptiness.

Shared by :class:`~sage.middleware.services.vdb.VDBService` and the document helpers, so a
bad argument is refused the same way, with the same message, wherever it is passed.
"""

from __future__ import annotations

import operator
from collections.abc import Hashable, Iterable, Mapping, Set
from pathlib import Path
from typing import Any

__all__ = [
    "as_int",
    "check_json",
    "id_list",
    "id_sequence",
    "is_empty",
    "json_problem",
    "metadata_list",
    "one_id",
]


def as_int(value: Any) -> int | None:
    """``value`` as an ``int`` if it is an integer (NumPy's too) but not a ``bool``."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        return None
    try:
        return operator.index(value)
    except TypeError:  # an array of several integers
        return None


def json_problem(value: Any, path: tuple[int, ...] = ()) -> str | None:
    """Why ``value`` would not come back equal from JSON, or ``None``.

    Non-string keys would come back as strings, tuples as lists, other objects not at all.
    ``path`` holds the ids of the containers being walked, so a cycle is reported, not
    followed forever.
    """
    if value is None or isinstance(value, str | int | float):
        return None
    if id(value) in path:
        return "it contains itself"
    if isinstance(value, list):
        for item in value:
            problem = json_problem(item, (*path, id(value)))
            if problem is not None:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"key {key!r:.40} is not a str"
            problem = json_problem(item, (*path, id(value)))
            if problem is not None:
                return problem
        return None
    hint = " (use a list)" if isinstance(value, tuple) else ""
    return f"{type(value).__name__} {value!r:.40} is not a JSON value{hint}"


def one_id(value: Any, what: str = "ids") -> int | str:
    """``value`` as an id (``int`` or ``str``), else a ``TypeError`` naming ``what``.

    NumPy integers become ``int`` (they come from ``np.arange`` and would not survive
    :meth:`VDBService.save`); ``bool`` is refused, as ``True == 1`` would address id 1.
    """
    if isinstance(value, str):
        return value
    number = as_int(value)
    if number is not None:
        return number
    raise TypeError(f"{what} must be int or str, got {type(value).__name__} {value!r:.60}")


def id_sequence(ids: Any, what: str = "ids") -> list[int | str]:
    """One id or an ordered collection of ids, as a list; ``TypeError`` naming ``what``.

    Sets and mappings are refused: their order, which pairs each id with a vector, is not
    the caller's. ``bytes`` would iterate as small integers.
    """
    if isinstance(ids, str) or as_int(ids) is not None:
        return [one_id(ids, what)]
    if isinstance(ids, bytes | bytearray | Set | Mapping) or not isinstance(ids, Iterable):
        raise TypeError(
            f"{what} must be an int or str id, or a list of them, got {type(ids).__name__} "
            f"{ids!r:.60}"
        )
    return [one_id(i, what) for i in ids]


def is_empty(vectors: Any) -> bool:
    """Whether ``vectors`` is an empty sequence or array (a document with no chunks)."""
    try:
        return not isinstance(vectors, str | bytes) and len(vectors) == 0
    except TypeError:  # no length: a scalar, which prepare() reports
        return False


def metadata_list(metadata: Any, n: int, what: str = "vectors") -> list[Any]:
    """One metadata dict (or ``None``) per vector: from ``None``, one mapping (``n == 1``)
    or a list of ``n`` mappings; ``TypeError``/``ValueError`` saying what to pass instead."""
    if metadata is None:
        return [None] * n
    if isinstance(metadata, Mapping):
        if n != 1:
            raise ValueError(
                f"metadata is one mapping but {n} {what} were given; pass a list of {n}"
            )
        return [dict(metadata)]
    if isinstance(metadata, str | bytes) or not isinstance(metadata, Iterable):
        raise TypeError(
            f"metadata must be a mapping (one vector) or a list of mappings (one per "
            f"vector), got {type(metadata).__name__} {metadata!r:.60}"
        )
    metas = list(metadata)
    if len(metas) != n:
        raise ValueError(f"metadata has {len(metas)} entries for {n} {what}")
    for i, meta in enumerate(metas):
        if meta is not None and not isinstance(meta, Mapping):
            raise TypeError(f"metadata[{i}] must be a mapping (dict) or None, got {meta!r:.60}")
    return [dict(m) if m is not None else None for m in metas]


def id_list(ids: Any, n: int) -> list[Hashable] | None:
    """``n`` unique ids from ``ids`` (``None`` stays ``None``: the caller picks them)."""
    if ids is None:
        return None
    wanted: list[Hashable] = list(id_sequence(ids))
    if len(wanted) != n:
        raise ValueError(f"{len(wanted)} ids given for {n} vectors; pass one id per vector")
    if len(set(wanted)) != n:
        raise ValueError("ids must be unique within one add()")
    return wanted


def check_json(metas: list[Any], path: Path) -> None:
    """Refuse metadata that saving to ``path`` (at cleanup) could not write back as it is.

    Found here, the caller can fix the record; found at cleanup, the whole index would
    fail to save. Non-string keys and tuples would load back changed, so they count.
    """
    for i, meta in enumerate(metas):
        problem = json_problem(meta)
        if problem is not None:
            raise ValueError(
                f"metadata[{i}] cannot be saved to {path} as it is: {problem}; use "
                "JSON values (str keys; str, numbers, bool, None, lists, dicts)"
            )
