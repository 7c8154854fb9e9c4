"""What a function learns about where it runs: given to ``open(context)``, kept as ``self.ctx``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from sage.common.core.scheduling import Scheduling

__all__ = ["AsyncServiceCaller", "RuntimeContext", "ServiceCaller", "ServiceMethods"]


class ServiceMethods(Protocol):
    """One service as seen from a function: ``methods.search(...)`` calls its ``search``."""

    def __getattr__(self, method: str) -> Callable[..., Any]: ...


class ServiceCaller(Protocol):
    """``self.call_service``: ``["name"].method(...)`` or ``("name", *args, method=...)``."""

    def __getitem__(self, name: str) -> ServiceMethods: ...

    def __call__(
        self,
        name: str,
        *args: Any,
        method: str | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any: ...


class AsyncServiceCaller(Protocol):
    """``self.call_service_async``: like :class:`ServiceCaller`, but calls return futures."""

    def __getitem__(self, name: str) -> ServiceMethods: ...

    def __call__(
        self,
        name: str,
        *args: Any,
        method: str | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Future[Any]: ...


@dataclass(frozen=True)
class RuntimeContext:
    """Identity of one parallel instance of an operator.

    Attributes:
        job_name: Name of the environment/job.
        operator_name: Display name of the operator (unique within the job).
        instance_index: 0-based index of this parallel instance.
        parallelism: Number of parallel instances of the operator.
        task_id: Identifier of the physical task hosting the instance (``"chain2#0"``).
        config: The environment's configuration mapping (read-only by convention).
        services: The job's service callers (sync, async), or ``None`` outside a job.
        scheduling: The ``priority`` / ``slo_ms`` the operator's LLM and embedding calls
            carry (its own over the job's), or ``None`` where neither is set.
    """

    job_name: str
    operator_name: str
    instance_index: int
    parallelism: int
    task_id: str
    config: dict[str, Any] = field(default_factory=dict, repr=False)
    services: tuple[ServiceCaller, AsyncServiceCaller] | None = field(default=None, repr=False)
    scheduling: Scheduling | None = None

    @property
    def index(self) -> int:
        """Alias of :attr:`instance_index`."""
        return self.instance_index

    @property
    def logger(self) -> logging.Logger:
        """A logger named after the job and operator."""
        return logging.getLogger(f"sage.job.{self.job_name}.{self.operator_name}")
