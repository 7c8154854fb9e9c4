"""The scheduling fields of the code running now: a job's ``priority`` and ``slo_ms``.

A job's config (``{"priority": 0, "slo_ms": 800}``), or an operator's own
(``.map(Answer, priority=0)``), says how urgent its model calls are. The runtime makes the
operator's fields *current* while its code runs, a service call carries them to the thread
or Ray actor that serves it, and the inference clients send the current fields with every
request (as the headers ``x-sage-priority`` / ``x-sage-slo-ms``, which the gateway schedules
by). User code passes nothing along.

The fields live in a :class:`contextvars.ContextVar`, so they follow asyncio tasks and
``asyncio.to_thread`` too. The runtime sets them once per task thread, not per record: an
operator pays a set and a reset per call only when its fields differ from the rest of its
task's (see :func:`bind`).

Example:
    >>> fields = Scheduling(priority=0, slo_ms=800.0)
    >>> with scheduling_scope(fields):
    ...     current_scheduling()
    Scheduling(priority=0, slo_ms=800.0)
    >>> current_scheduling() is None
    True
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SCHEDULING_KEYS",
    "Scheduling",
    "bind",
    "current_scheduling",
    "scheduling_problem",
    "scheduling_scope",
]

SCHEDULING_KEYS = ("priority", "slo_ms")
"""The config keys (and operator keywords) that set scheduling fields."""

_PRIORITY_RANGE = (-(2**63), 2**63)  # what the gateway accepts: a 64-bit integer


def scheduling_problem(key: str, value: Any) -> str | None:
    """Why ``value`` is not a valid ``priority`` / ``slo_ms``, or ``None`` if it is.

    The rules are the gateway's (``sage.inference.protocol.SchedulingFields``), so a value
    accepted here is never refused by the gateway on the first call.
    """
    if key == "priority":
        low, high = _PRIORITY_RANGE
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
            return "use an integer (lower runs first), e.g. 0 for interactive and 5 for batch work"
        return None
    if key == "slo_ms":
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            return "use a finite number of milliseconds > 0, e.g. 800"
        return None
    raise KeyError(key)


@dataclass(frozen=True, slots=True)
class Scheduling:
    """A ``priority`` and an ``slo_ms`` (either may be ``None``: not set).

    Attributes:
        priority: Scheduling priority at the gateway, lower first.
        slo_ms: Latency objective in milliseconds.
    """

    priority: int | None = None
    slo_ms: float | None = None

    @classmethod
    def of(cls, priority: Any = None, slo_ms: Any = None) -> Scheduling | None:
        """The fields, or ``None`` when neither is set; the values must be valid already
        (see :func:`scheduling_problem`)."""
        if priority is None and slo_ms is None:
            return None
        return cls(priority, None if slo_ms is None else float(slo_ms))

    def over(self, base: Scheduling | None) -> Scheduling:
        """These fields, each unset one taken from ``base`` (an operator's over its job's)."""
        if base is None:
            return self
        return Scheduling(
            base.priority if self.priority is None else self.priority,
            base.slo_ms if self.slo_ms is None else self.slo_ms,
        )

    def describe(self) -> str:
        """``"priority=0 slo_ms=800"`` (the fields that are set)."""
        return " ".join(
            f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
            for key, value in (("priority", self.priority), ("slo_ms", self.slo_ms))
            if value is not None
        )


_CURRENT: ContextVar[Scheduling | None] = ContextVar("sage_scheduling", default=None)


def current_scheduling() -> Scheduling | None:
    """The fields of the operator (or service call) running now; ``None`` outside one or
    where the job sets none."""
    return _CURRENT.get()


@contextmanager
def scheduling_scope(fields: Scheduling | None) -> Iterator[None]:
    """Make ``fields`` current until the block ends (``None``: no fields inside it)."""
    token = _CURRENT.set(fields)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def _scoped_items(items: Iterable[Any], fields: Scheduling | None) -> Iterator[Any]:
    """The items of ``items``, each produced with ``fields`` current (a lazy flatmap's
    generator runs when the task iterates it, after the call that made it returned)."""
    iterator = iter(items)
    while True:
        token = _CURRENT.set(fields)
        try:
            item = next(iterator)
        except StopIteration:
            return
        finally:
            _CURRENT.reset(token)
        yield item


def bind(function: Callable[..., Any], fields: Scheduling | None) -> Callable[..., Any]:
    """``function`` running with ``fields`` current at each call.

    For an operator whose fields differ from those of the task it runs in: it costs a
    context-variable set and reset per call. A lazy result (a generator) keeps the fields
    while it is iterated.
    """
    var = _CURRENT

    def scoped(*args: Any) -> Any:
        token = var.set(fields)
        try:
            result = function(*args)
        finally:
            var.reset(token)
        if inspect.isgenerator(result):
            return _scoped_items(result, fields)
        return result

    scoped.__wrapped__ = function  # type: ignore[attr-defined]
    return scoped
