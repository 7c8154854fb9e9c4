"""The local multithreaded runtime."""

from sage.kernel.runtime.local.executor import JobStatus, LocalJob

__all__ = ["JobStatus", "LocalJob"]
