"""The seed's import path of the inference stack, which lives in :mod:`sage.inference`.

Seed imports: ``UnifiedInferenceClient``, ``UnifiedAPIServer``, ``UnifiedServerConfig``,
``BackendInstanceConfig``, ``SchedulingPolicyType`` and ``ControlPlaneVLLMService`` (a
service of :mod:`sage.middleware.services.control_plane`, imported when first asked for).
"""

from typing import Any

from sage.inference import (
    BackendInstanceConfig,
    SchedulingPolicyType,
    UnifiedAPIServer,
    UnifiedInferenceClient,
    UnifiedServerConfig,
)

__all__ = [
    "BackendInstanceConfig",
    "ControlPlaneVLLMService",
    "SchedulingPolicyType",
    "UnifiedAPIServer",
    "UnifiedInferenceClient",
    "UnifiedServerConfig",
]


def __getattr__(name: str) -> Any:
    if name == "ControlPlaneVLLMService":  # a service of the middleware: loaded when asked
        from sage.middleware.services.control_plane import ControlPlaneVLLMService

        return ControlPlaneVLLMService
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
