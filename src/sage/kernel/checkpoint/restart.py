"""Restart strategies: after a failure, whether to restart the job and after how long.

The ``config["fault_tolerance"]`` section chooses one, as Flink's ``restart-strategy`` does::

    {"strategy": "restart", "restart_strategy": "fixed", "max_restarts": 3, "delay_s": 1}
    {"strategy": "restart", "restart_strategy": "exponential", "initial_delay_s": 0.5,
     "max_delay_s": 30, "multiplier": 2, "max_restarts": 10}
    {"strategy": "restart", "restart_strategy": "failure_rate", "max_failures": 3,
     "interval_s": 60, "delay_s": 1}

* ``fixed``: up to ``max_restarts`` restarts, ``delay_s`` apart.
* ``exponential``: the delay starts at ``initial_delay_s`` and is multiplied by
  ``multiplier`` after each failure, up to ``max_delay_s``; it returns to the start after
  ``reset_after_s`` without a failure; ``max_restarts`` (optional) bounds the total.
* ``failure_rate``: restart after ``delay_s`` unless more than ``max_failures`` failures fell
  within the last ``interval_s`` seconds (Flink's ``failure-rate``).

A strategy is pure bookkeeping on the times it is given (no clock of its own), so the
runtimes share it and tests drive it with made-up times. When it gives up, the job fails
with :class:`RestartsExhaustedError`, whose cause is the last failure.
"""

from __future__ import annotations

import difflib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from sage.common.errors import ConfigError, JobError

__all__ = [
    "ExponentialBackoff",
    "FailureRate",
    "FixedDelay",
    "RestartStrategy",
    "RestartsExhaustedError",
    "restart_strategy",
]


class RestartsExhaustedError(JobError):
    """The job failed again after its restart strategy gave up; ``__cause__`` is why."""

    @staticmethod
    def of(
        job: str, restarts: int, strategy: RestartStrategy, cause: BaseException
    ) -> RestartsExhaustedError:
        """The error job ``job`` ends with after ``restarts`` restarts, failing with ``cause``."""
        error = RestartsExhaustedError(
            f"job {job!r} failed and its restart strategy gave up after {restarts} restart(s) "
            f"({strategy.describe()}); last failure: {type(cause).__name__}: {cause}"
        )
        error.__cause__ = cause
        return error


class RestartStrategy(Protocol):
    """Decides, failure by failure, whether and when to restart."""

    def on_failure(self, now: float) -> float | None:
        """A failure happened at ``now`` (seconds): the delay before restarting, or
        ``None`` to give up."""

    def describe(self) -> str:
        """One line for errors and logs (``"fixed: 3 restarts, 1 s apart"``)."""


@dataclass
class FixedDelay:
    """Up to ``max_restarts`` restarts, ``delay_s`` apart."""

    max_restarts: int = 3
    delay_s: float = 1.0
    restarts: int = 0

    def on_failure(self, now: float) -> float | None:
        if self.restarts >= self.max_restarts:
            return None
        self.restarts += 1
        return self.delay_s

    def describe(self) -> str:
        return f"fixed: {self.max_restarts} restarts, {self.delay_s:g} s apart"


@dataclass
class ExponentialBackoff:
    """Delays growing by ``multiplier`` up to ``max_delay_s``, reset after a quiet spell."""

    initial_delay_s: float = 1.0
    max_delay_s: float = 60.0
    multiplier: float = 2.0
    reset_after_s: float | None = None
    max_restarts: int | None = None
    restarts: int = 0
    _next_delay: float | None = None
    _last_failure: float | None = None

    def on_failure(self, now: float) -> float | None:
        if self.max_restarts is not None and self.restarts >= self.max_restarts:
            return None
        last, reset = self._last_failure, self.reset_after_s
        if last is not None and reset is not None and now - last >= reset:
            self._next_delay = None  # quiet long enough: start over
        delay = self.initial_delay_s if self._next_delay is None else self._next_delay
        self._next_delay = min(delay * self.multiplier, self.max_delay_s)
        self._last_failure = now
        self.restarts += 1
        return min(delay, self.max_delay_s)

    def describe(self) -> str:
        bound = "" if self.max_restarts is None else f", at most {self.max_restarts} restarts"
        return (
            f"exponential: {self.initial_delay_s:g} s x{self.multiplier:g} up to "
            f"{self.max_delay_s:g} s{bound}"
        )


@dataclass
class FailureRate:
    """Restart unless more than ``max_failures`` failures fell within the last ``interval_s``."""

    max_failures: int = 3
    interval_s: float = 60.0
    delay_s: float = 1.0
    _failures: deque[float] = field(default_factory=deque)

    def on_failure(self, now: float) -> float | None:
        failures = self._failures
        failures.append(now)
        while failures and now - failures[0] > self.interval_s:
            failures.popleft()
        if len(failures) > self.max_failures:
            return None
        return self.delay_s

    def describe(self) -> str:
        return (
            f"failure_rate: at most {self.max_failures} failures per {self.interval_s:g} s, "
            f"{self.delay_s:g} s apart"
        )


# strategy name -> (class, {option: kind}); kinds: "count" (int >= 0), "positive count"
# (int >= 1), "seconds" (> 0), "factor" (> 1), and "optional ..." (None allowed)
_STRATEGIES: dict[str, tuple[type[Any], dict[str, str]]] = {
    "fixed": (FixedDelay, {"max_restarts": "count", "delay_s": "seconds"}),
    "exponential": (
        ExponentialBackoff,
        {
            "initial_delay_s": "seconds",
            "max_delay_s": "seconds",
            "multiplier": "factor",
            "reset_after_s": "optional seconds",
            "max_restarts": "optional count",
        },
    ),
    "failure_rate": (
        FailureRate,
        {"max_failures": "positive count", "interval_s": "seconds", "delay_s": "seconds"},
    ),
}
_SECTION_KEYS = frozenset({"strategy", "restart_strategy"})


def _value(name: str, key: str, kind: str, value: Any) -> Any:
    where = f"config['fault_tolerance'][{key!r}]"
    if value is None and kind.startswith("optional"):
        return None
    number = not isinstance(value, bool) and isinstance(value, int | float)
    if kind.endswith("count"):
        least = 1 if kind == "positive count" else 0
        if not number or value != int(value) or value < least:
            raise ConfigError(f"{where}={value!r} is invalid for {name}; use an integer >= {least}")
        return int(value)
    if kind == "factor":
        if not number or value <= 1:
            raise ConfigError(f"{where}={value!r} is invalid for {name}; use a number > 1")
        return float(value)
    if not number or value <= 0:
        raise ConfigError(f"{where}={value!r} is invalid for {name}; use seconds > 0")
    return float(value)


def restart_strategy(section: Mapping[str, Any] | None) -> RestartStrategy | None:
    """The restart strategy ``config["fault_tolerance"]`` asks for (``None``: no restarts).

    ``"strategy": "checkpoint"`` restarts too (from the last checkpoint), with ``fixed`` unless
    ``restart_strategy`` says otherwise.

    Raises:
        ConfigError: an unknown strategy or option, or an invalid value (the message names
            the key and the fix).
    """
    if not section or section.get("strategy") not in ("restart", "checkpoint"):
        return None
    name = section.get("restart_strategy", "fixed")
    if name not in _STRATEGIES:
        raise ConfigError(
            f"config['fault_tolerance']['restart_strategy']={name!r} is unknown; use one of "
            + ", ".join(repr(n) for n in _STRATEGIES)
        )
    cls, options = _STRATEGIES[name]
    allowed = set(options) | _SECTION_KEYS | {"checkpoint_dir", "checkpoint_interval"}
    for key in section:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; {name} takes {sorted(options)}"
            raise ConfigError(f"config['fault_tolerance'][{key!r}] is unknown{hint}")
    values = {
        key: _value(name, key, options[key], section[key]) for key in options if key in section
    }
    strategy: RestartStrategy = cls(**values)
    return strategy
