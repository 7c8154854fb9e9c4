"""``BaseFunction``: the one base class of every user function."""

from __future__ import annotations

import logging
from typing import Any

from sage.common.core.context import AsyncServiceCaller, RuntimeContext, ServiceCaller
from sage.common.core.state import KeyedState

__all__ = ["BaseFunction"]


class BaseFunction:
    """Base class of user functions.

    The runtime builds one function object per parallel instance of an operator (from the
    class and its arguments, or by copying an instance) and calls, in that instance's thread:

    * ``open(context)`` once, before the first record;
    * ``execute(...)`` for each record;
    * ``close()`` once, at the end (also when the job fails or is stopped).

    Subclasses accept and forward ``**kwargs`` (``super().__init__(**kwargs)``).

    Example:
        >>> class Upper(BaseFunction):
        ...     def execute(self, data):
        ...         return data.upper()
    """

    ctx: RuntimeContext | None
    _sage_state: KeyedState | None

    def __init__(self, **kwargs: Any) -> None:
        self.ctx = None
        self._sage_state = None
        self.init_kwargs = kwargs

    def open(self, context: RuntimeContext) -> None:
        """Called once per parallel instance before its first record."""

    def execute(self, *args: Any) -> Any:
        """Process one record; subclasses override this."""
        raise NotImplementedError(
            f"{type(self).__name__}.execute() is not implemented; override execute() "
            "in your function class"
        )

    def close(self) -> None:
        """Called once per parallel instance after its last record (also on failure)."""

    @property
    def logger(self) -> logging.Logger:
        """A logger named after the operator instance (or the class before ``open``)."""
        ctx = getattr(self, "ctx", None)
        return (
            ctx.logger if ctx is not None else logging.getLogger(f"sage.fn.{type(self).__name__}")
        )

    def _services(self) -> tuple[ServiceCaller, AsyncServiceCaller]:
        ctx: RuntimeContext | None = getattr(self, "ctx", None)
        if ctx is None or ctx.services is None:
            raise RuntimeError(
                f"{type(self).__name__}: services are reachable from a function running in a "
                "job (from open() on); register them with env.register_service(name, ...) "
                "before env.submit()"
            )
        return ctx.services

    @property
    def call_service(self) -> ServiceCaller:
        """Call a service of the job and wait for the result.

        ``self.call_service["vdb"].search(q, top_k=5)`` or
        ``self.call_service("vdb", q, method="search", timeout=2.0)``.
        """
        return self._services()[0]

    @property
    def call_service_async(self) -> AsyncServiceCaller:
        """Call a service of the job without waiting: returns a ``concurrent.futures.Future``.

        ``future = self.call_service_async["vdb"].search(batch)``; ``future.result()`` later.
        """
        return self._services()[1]

    @property
    def state(self) -> KeyedState:
        """Per-key state of the current record's key (only after ``keyby``).

        Raises:
            AttributeError: the operator does not run on a keyed stream.
        """
        state: KeyedState | None = getattr(self, "_sage_state", None)
        if state is None:
            raise AttributeError(
                f"{type(self).__name__}.state is per-key state and exists only for operators "
                "that follow .keyby(...); key the stream first, e.g. "
                "stream.keyby(lambda r: r['user'])"
            )
        return state
