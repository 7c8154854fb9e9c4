"""SAGE's inference stack: OpenAI-compatible gateway, engines, and the unified client.

Seed imports: ``UnifiedInferenceClient``, ``UnifiedAPIServer``, ``UnifiedServerConfig``,
``BackendInstanceConfig``, ``SchedulingPolicyType`` (and ``ControlPlaneVLLMService``).
"""

from sage.common.components.sage_llm.client import UnifiedInferenceClient
from sage.common.components.sage_llm.config import (
    BackendInstanceConfig,
    SchedulingPolicyType,
    UnifiedServerConfig,
)
from sage.common.components.sage_llm.control_plane.service import ControlPlaneVLLMService
from sage.common.components.sage_llm.server import UnifiedAPIServer

__all__ = [
    "BackendInstanceConfig",
    "ControlPlaneVLLMService",
    "SchedulingPolicyType",
    "UnifiedAPIServer",
    "UnifiedInferenceClient",
    "UnifiedServerConfig",
]
