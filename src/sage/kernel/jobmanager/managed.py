"""One job the JobManager keeps: its state, its log, its collected records, and the waiters
of its HTTP clients."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, cast

from sage.kernel.jobmanager import protocol
from sage.kernel.jobmanager.collected import ChunkStore
from sage.kernel.jobmanager.protocol import (
    ENDED,
    JobInfo,
    LogLine,
    LogPage,
    Status,
    Submission,
)
from sage.kernel.runtime.output import OutputLine
from sage.kernel.runtime.status import JobStatus

if TYPE_CHECKING:
    from sage.kernel.api.base_environment import Job

__all__ = ["ManagedJob"]

logger = logging.getLogger(__name__)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ManagedJob:
    """One submitted job: its state, log, collected records and waiters (thread-safe).

    The job's threads write (``log``, ``add_output``, the pump's chunks, ``_finish``); HTTP
    handlers read and wait with :meth:`wait_async`, which parks a future that the writer
    resolves, so no thread blocks for a waiting client.
    """

    def __init__(self, job_id: str, submission: Submission, max_log_lines: int) -> None:
        self.job_id = job_id
        self.submission = submission
        self.name = submission.name
        self.submitted_at = time.time()
        self.ended_at: float | None = None
        self.error: BaseException | None = None
        self.job: Job | None = None
        self.thread: threading.Thread | None = None
        self._submitted_mono = time.monotonic()
        self._ended_mono: float | None = None
        self._status: Status = "running"
        self._started = False
        self._requested: str | None = None  # "stop" or "cancel", before the job started
        self._lock = threading.Lock()
        self._lines: deque[LogLine] = deque(maxlen=max_log_lines)
        self._line_count = 0
        self._waiters: list[asyncio.Future[None]] = []
        self.chunks = ChunkStore(self._lock, self._wake)
        """The collected records the submitter has not taken yet."""
        self.ended = threading.Event()

    # -- written by the job's threads -----------------------------------------------------

    def log(self, line: str) -> None:
        """Append the JobManager's ``line`` about the job to its log; wake followers."""
        now = time.time()
        with self._lock:
            for part in str(line).splitlines() or [""]:
                self._lines.append(LogLine(time=now, text=part))
                self._line_count += 1
            self._wake()

    def add_output(self, lines: Sequence[OutputLine]) -> None:
        """Append lines the job's functions wrote to its log; wake followers."""
        with self._lock:
            for line in lines:
                stream: Literal["stdout", "stderr"] = (
                    "stderr" if line.stream == "stderr" else "stdout"
                )
                self._lines.append(
                    LogLine(time=line.time, text=line.text, origin=line.origin, stream=stream)
                )
                self._line_count += 1
            self._wake()

    def _wake(self) -> None:
        """Resolve every parked future (call with the lock held)."""
        for future in self._waiters:
            with contextlib.suppress(RuntimeError):  # its loop has closed: nobody waits
                future.get_loop().call_soon_threadsafe(_resolve, future)
        self._waiters.clear()

    def _attach(self, job: Job) -> bool:
        """Record the built job; ``False`` if it was cancelled before it could start."""
        with self._lock:
            self.job = job
            return self._requested != "cancel"

    def _mark_started(self) -> str | None:
        """Record that the job runs; the stop or cancel asked for meanwhile, if any."""
        with self._lock:
            self._started = True
            return self._requested

    def _finish(self, error: BaseException | None) -> None:
        with self._lock:
            self.error = error
            self.ended_at = time.time()
            self._ended_mono = time.monotonic()
            self._status = cast("Status", JobStatus.at_end(error).value)
            self.ended.set()
            self._wake()

    # -- read by anyone -----------------------------------------------------------------

    @property
    def status(self) -> Status:
        """``running``, ``stopping``, ``finished``, ``failed`` or ``cancelled``."""
        return self._status

    @property
    def is_ended(self) -> bool:
        """Whether the job has ended."""
        return self._status in ENDED

    def info(self) -> JobInfo:
        """The job as the protocol reports it."""
        with self._lock:
            end = self._ended_mono if self._ended_mono is not None else time.monotonic()
            return JobInfo(
                job_id=self.job_id,
                name=self.name,
                status=self._status,
                submitted_at=self.submitted_at,
                ended_at=self.ended_at,
                elapsed_s=round(end - self._submitted_mono, 6),
                error=None if self.error is None else protocol.error_info(self.error),
            )

    def logs(self, since: int = 0) -> LogPage:
        """Lines from index ``since`` on (those still kept), and the next index."""
        with self._lock:
            first = self._line_count - len(self._lines)
            skip = max(since - first, 0)
            lines = list(self._lines)[skip:] if skip < len(self._lines) else []
            return LogPage(entries=lines, next=self._line_count, status=self._status)

    def _has_lines_after(self, since: int) -> bool:
        return self._line_count > since

    async def wait_async(
        self,
        timeout: float,
        *,
        new_lines_after: int | None = None,
        new_chunks_after: int | None = None,
    ) -> None:
        """Wait (on this event loop, blocking no thread) until the job ended, or, with
        ``new_lines_after``, until its log has more lines than that, or, with
        ``new_chunks_after``, until a chunk numbered that or later came; at most ``timeout``
        seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self._lock:
                if (
                    self.is_ended
                    or (new_lines_after is not None and self._has_lines_after(new_lines_after))
                    or (new_chunks_after is not None and self.chunks.has_after(new_chunks_after))
                ):
                    return
                future: asyncio.Future[None] = loop.create_future()
                self._waiters.append(future)
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    return
                await asyncio.wait_for(future, remaining)
            except TimeoutError:
                return
            finally:
                with self._lock:
                    if future in self._waiters:
                        self._waiters.remove(future)

    # -- control ------------------------------------------------------------------------

    def _request(self, action: str) -> Job | None:
        """Note a stop or cancel request; the job to apply it to now (``None``: the job's
        thread applies it once the job has started, or it has ended)."""
        with self._lock:
            if self.is_ended:
                return None
            if action == "cancel" or self._requested is None:
                self._requested = action
            if action == "stop" and self._status == "running":
                self._status = "stopping"
            return self.job if self._started else None
