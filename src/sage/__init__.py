"""SAGE: LLM applications as streaming dataflows.

The import package is organised in layers (see ``DESIGN.md``):

* :mod:`sage.kernel` — the dataflow kernel: pipeline API, compiler, runtimes.
* :mod:`sage.common` — function base classes, configuration, errors, shared components.
* :mod:`sage.core` — re-exports kept for older import paths.
"""

from sage.common.errors import (
    ConfigError,
    GatewayError,
    JobCancelledError,
    JobError,
    OperatorError,
    PlanError,
    SageError,
    ServiceError,
    ServiceTimeoutError,
    UnknownServiceError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "GatewayError",
    "JobCancelledError",
    "JobError",
    "OperatorError",
    "PlanError",
    "SageError",
    "ServiceError",
    "ServiceTimeoutError",
    "UnknownServiceError",
    "__version__",
]
