"""The gateway: an OpenAI-compatible HTTP server that queues requests in the control plane
and relays them to the instances it places them on."""

from sage.inference.gateway.server import UnifiedAPIServer

__all__ = ["UnifiedAPIServer"]
