"""Re-export of :class:`sage.kernel.api.remote_environment.RemoteEnvironment`."""

from sage.kernel.api.remote_environment import RemoteEnvironment

__all__ = ["RemoteEnvironment"]
