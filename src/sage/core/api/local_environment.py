"""Re-export of :class:`sage.kernel.api.local_environment.LocalEnvironment`."""

from sage.kernel.api.local_environment import LocalEnvironment

__all__ = ["LocalEnvironment"]
