"""How records cross an edge between parallel instances, and the stable key hash.

Python's ``hash()`` of ``str``/``bytes`` is randomised per process (``PYTHONHASHSEED``), so
using it to route keys would send one key to different instances on different workers.
:func:`stable_hash` gives the same 32-bit value for the same key in every process.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
import zlib
from collections.abc import Hashable
from enum import StrEnum

__all__ = ["Partitioning", "UnstableKeyError", "stable_hash"]

_MASK = 0xFFFFFFFF
_MULT = 0x9E3779B1  # Knuth's multiplicative constant (2^32 / golden ratio)


class Partitioning(StrEnum):
    """Distribution of records over an edge.

    * ``FORWARD``: instance *i* feeds instance *i* (equal parallelism; chainable).
    * ``ROUND_ROBIN``: records are spread evenly over all downstream instances.
    * ``HASH``: a record goes to ``stable_hash(key) % parallelism`` (after ``keyby``).
    * ``BROADCAST``: every record goes to every downstream instance.
    """

    FORWARD = "forward"
    ROUND_ROBIN = "round_robin"
    HASH = "hash"
    BROADCAST = "broadcast"


class UnstableKeyError(TypeError):
    """A key has no hash that is stable across processes."""


def _mix_int(value: int) -> int:
    h = (value ^ (value >> 32)) & _MASK
    return ((h * _MULT) & _MASK) ^ (h >> 16)


def stable_hash(key: Hashable) -> int:
    """A 32-bit hash of ``key`` that is identical in every process and Python run.

    Equal keys hash equally (``1``, ``1.0`` and ``True``; a ``StrEnum`` member and its
    string; a namedtuple and the plain tuple). Supports ``str``, ``bytes``, ``int``,
    ``bool``, ``float``, ``None``, tuples and frozensets of those, enums, and objects whose
    ``repr`` is stable (dataclasses and classes defining ``__repr__``).

    Raises:
        UnstableKeyError: the key's type has no stable representation; return a ``str``,
            ``int`` or ``tuple`` from the key function instead.
    """
    kind = type(key)
    if kind is str:
        return zlib.crc32(key.encode("utf-8", "surrogatepass"))  # type: ignore[attr-defined]
    if kind is int:
        return _mix_int(key)  # type: ignore[arg-type]
    if key is None:
        return 0x5A5A5A5A
    if isinstance(key, str):
        return zlib.crc32(str.encode(key, "utf-8", "surrogatepass"))
    if isinstance(key, int):  # bool, IntEnum and other int subclasses hash as their value
        return _mix_int(int(key))
    if isinstance(key, bytes):
        return zlib.crc32(key)
    if isinstance(key, tuple):
        h = 0x345678
        for item in key:
            h = ((h ^ stable_hash(item)) * 1000003) & _MASK
        return h ^ len(key)
    if isinstance(key, float):
        if key.is_integer():
            return _mix_int(int(key))
        return zlib.crc32(struct.pack("<d", key))
    if isinstance(key, frozenset):
        h = 0
        for item in key:
            h ^= stable_hash(item)
        return h
    if isinstance(key, enum.Enum):
        return zlib.crc32(f"{kind.__qualname__}.{key.name}".encode())
    text = repr(key)
    has_own_repr = dataclasses.is_dataclass(key) or kind.__repr__ is not object.__repr__
    if " at 0x" in text or not has_own_repr:
        raise UnstableKeyError(
            f"key {text:.80} of type {kind.__qualname__} has no hash that is stable across "
            "processes; make the key function return a str, int or tuple of those"
        )
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))
