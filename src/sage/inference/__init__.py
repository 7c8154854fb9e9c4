"""SAGE's inference stack: an OpenAI-compatible gateway with a control plane, the engines
behind it, and the clients in front.

Rooms (imports go down this list, never up; ``tests/test_layering.py`` holds them to it):

* :mod:`.deploy`: running stacks of engines and gateways (in-process or as processes);
* :mod:`.gateway`: the OpenAI-compatible HTTP server in front of the instances;
* :mod:`.control_plane`: queues, scheduling policies, instances and their health;
* :mod:`.engines`: the engines behind one interface, their HTTP server, model resolution;
* :mod:`.client`: ``UnifiedInferenceClient`` and the embedding clients;
* :mod:`.protocol` and :mod:`.config`: the wire schema and the configuration.

It imports nothing of the kernel or the middleware. The seed's import path,
``sage.common.components.sage_llm``, re-exports these names.
"""

from sage.inference.client.unified import UnifiedInferenceClient
from sage.inference.config import BackendInstanceConfig, SchedulingPolicyType, UnifiedServerConfig
from sage.inference.gateway.server import UnifiedAPIServer

__all__ = [
    "BackendInstanceConfig",
    "SchedulingPolicyType",
    "UnifiedAPIServer",
    "UnifiedInferenceClient",
    "UnifiedServerConfig",
]
