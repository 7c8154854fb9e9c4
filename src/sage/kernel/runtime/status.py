"""``JobStatus``: the life cycle of a job, the same for every runtime."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["JobStatus"]


class JobStatus(StrEnum):
    """Life cycle of a job."""

    CREATED = "created"
    RUNNING = "running"
    STOPPING = "stopping"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @staticmethod
    def at_end(error: BaseException | None) -> JobStatus:
        """How a job that has ended with ``error`` (``None``: none) ended."""
        from sage.common.errors import JobCancelledError

        if error is None:
            return JobStatus.FINISHED
        return JobStatus.CANCELLED if isinstance(error, JobCancelledError) else JobStatus.FAILED

    @property
    def ended(self) -> bool:
        """Whether the job has ended (finished, failed or cancelled)."""
        return self in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELLED)
