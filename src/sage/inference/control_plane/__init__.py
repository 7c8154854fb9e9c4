"""The control plane: instances and their health and load, the waiting requests and the
policies that order them, and the dispatcher that places them; no HTTP here."""

from sage.inference.control_plane.instances import Instance, InstanceRegistry

__all__ = ["Instance", "InstanceRegistry"]
