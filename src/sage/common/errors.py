"""The exception tree of SAGE.

Every error SAGE raises on purpose derives from :class:`SageError`, with one branch per
layer, so callers can catch as broadly or narrowly as they need::

    SageError
    ├── ConfigError          a configuration value or argument is invalid
    ├── PlanError            the pipeline cannot be built or compiled
    ├── JobError             a job failed while running
    │   ├── OperatorError    user code raised inside an operator (names operator, instance, record)
    │   ├── JobCancelledError the job was cancelled before it finished
    │   └── CollectLimitError more records reached collect() than its max_records
    ├── ServiceError         a service could not be created, called or cleaned up
    │   ├── UnknownServiceError  no service or method of that name (lists what exists)
    │   └── ServiceTimeoutError  a call did not finish in time and no fallback took it
    ├── GatewayError         an inference server answered with an error, or none was found
    └── HttpError            a server's answer with an HTTP status (sage.common.http)

Warnings SAGE issues derive from :class:`SageWarning` (a ``UserWarning``), so they can be
filtered as one: ``warnings.simplefilter("error", SageWarning)``.

Messages say what happened, why, and what to do next.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

__all__ = [
    "CollectLimitError",
    "ConfigError",
    "GatewayError",
    "JobCancelledError",
    "JobError",
    "OperatorError",
    "PlanError",
    "SageError",
    "SageWarning",
    "ServiceError",
    "ServiceTimeoutError",
    "UnknownServiceError",
    "unknown_key",
]


class SageError(Exception):
    """Root of every error SAGE raises on purpose."""


class ConfigError(SageError, ValueError):
    """A configuration value or an argument is invalid; the message names it and the fix."""


def unknown_key(key: object, where: str, valid: Sequence[str]) -> ConfigError:
    """The error for a configuration key ``where`` does not know: the closest valid key,
    then all of them."""
    close = difflib.get_close_matches(str(key), valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{where}: unknown key {key!r}{hint}; valid keys are: {', '.join(valid)}")


class PlanError(SageError, ValueError):
    """The pipeline cannot be built or compiled (bad operator argument, missing source, ...)."""


class JobError(SageError, RuntimeError):
    """A job failed while running."""


class JobCancelledError(JobError):
    """The job was cancelled (by ``stop``/``close`` or an interrupt) before it finished."""


class CollectLimitError(JobError):
    """More records reached ``stream.collect()`` than its ``max_records``.

    Raised by the collecting operator whatever the job's ``on_error`` mode: dropping the
    records past the cap would silently truncate the result.
    """


class SageWarning(UserWarning):
    """Something will probably not do what was meant, but may be intended (the message says
    which, and how to silence it by doing the intended thing)."""


def _short_repr(value: Any, limit: int = 200) -> str:
    """``repr`` that never raises and never floods a log line."""
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not hide the real error
        text = f"<unrepresentable {type(value).__name__}: {exc!r}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class OperatorError(JobError):
    """User code raised inside an operator.

    The original exception is chained as ``__cause__``.

    Attributes:
        operator: Display name of the operator (for example ``"map 'Parse'"``).
        instance: Index of the parallel instance that failed (0-based).
        parallelism: Number of parallel instances of the operator.
        record: The input record the operator was processing (``None`` for ``open``/``close``).
        phase: ``"execute"`` (a record), ``"read"`` (a source), ``"open"`` or ``"close"``.
    """

    def __init__(
        self,
        operator: str,
        instance: int,
        parallelism: int,
        record: Any,
        cause: BaseException,
        phase: str = "execute",
    ) -> None:
        self.operator = operator
        self.instance = instance
        self.parallelism = parallelism
        self.record = record
        self.phase = phase
        self.cause = cause
        where = f"{operator} (instance {instance + 1}/{parallelism})"
        cause_text = f"{type(cause).__name__}: {cause}"
        if phase == "execute":
            message = f"{where} failed on record {_short_repr(record)}: {cause_text}"
        elif phase == "read":
            message = f"{where} failed while producing its next record: {cause_text}"
        else:
            message = f"{where} failed in {phase}(): {cause_text}"
        hint = (
            "; to keep the job running past bad records, use "
            'config={"on_error": "skip"} or {"on_error": "dead_letter"}'
            if phase == "execute"
            else ""
        )
        super().__init__(message + hint)
        self.__cause__ = cause

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.operator, self.instance, self.parallelism, self.record, self.cause, self.phase),
        )


class ServiceError(SageError, RuntimeError):
    """A service could not be created, called or cleaned up."""


class UnknownServiceError(ServiceError, LookupError):
    """No service, or no method, of the given name; the message lists what exists."""


class ServiceTimeoutError(ServiceError, TimeoutError):
    """A service call did not finish within its timeout and no fallback took it."""


class GatewayError(SageError, RuntimeError):
    """An inference server answered with an error, or no server could be found.

    Attributes:
        status: The HTTP status (0 when no server answered).
        param: The request parameter the server blamed, if any.
    """

    def __init__(self, message: str, status: int = 0, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
