"""The control plane: instances, their health and load, and (next) scheduling policies."""

from sage.common.components.sage_llm.control_plane.instances import Instance, InstanceRegistry

__all__ = ["Instance", "InstanceRegistry"]
