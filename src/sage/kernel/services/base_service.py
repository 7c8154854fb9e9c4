"""``BaseService``: the one base class of long-lived services that operators call."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["BaseService", "ServiceContext"]


@dataclass(frozen=True)
class ServiceContext:
    """Where a service instance runs: set as ``service.ctx`` before ``setup()``.

    Attributes:
        name: The name the service was registered under.
        replica: Index of this instance among the service's replicas (0-based).
        replicas: Number of replicas.
        job_name: The job the instance belongs to.
    """

    name: str
    replica: int
    replicas: int
    job_name: str

    @property
    def logger(self) -> logging.Logger:
        """A logger named after the job and service."""
        return logging.getLogger(f"sage.service.{self.job_name}.{self.name}")


class BaseService:
    """Base class of services: long-lived objects that operators call during a job.

    Register one with ``env.register_service("name", MyService, *args, **kwargs)`` (or a
    zero-argument factory). The job builds each replica once, calls ``setup()`` before the
    first record and ``cleanup()`` after the last. Operators call its public methods with
    ``self.call_service["name"].method(...)`` (blocking) or
    ``self.call_service_async["name"].method(...)`` (a future).

    Any object works as a service; subclassing gives the hooks, a logger, and
    :attr:`max_concurrency`: how many calls one instance serves at once. The default, 1, is
    right for code that is not thread-safe; raise it for code that is (or locks itself).

    Example:
        >>> class Upper(BaseService):
        ...     max_concurrency = 8
        ...     def process(self, text):
        ...         return text.upper()
    """

    max_concurrency: ClassVar[int] = 1

    def __init__(self, **kwargs: Any) -> None:
        self.ctx: ServiceContext | None = None
        self.init_kwargs = kwargs

    def setup(self) -> None:
        """Called once per instance before its first call (open connections, load models)."""

    def cleanup(self) -> None:
        """Called once per instance after the job's last record (flush, close, release)."""

    @property
    def logger(self) -> logging.Logger:
        """A logger named after the service (or its class before the job starts)."""
        ctx = getattr(self, "ctx", None)
        return (
            ctx.logger
            if ctx is not None
            else logging.getLogger(f"sage.service.{type(self).__name__}")
        )
