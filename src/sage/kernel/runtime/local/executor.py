"""The local runtime: every task of the plan runs in its own thread of this process.

Tasks exchange batches through bounded :class:`~sage.kernel.runtime.channel.Inbox` objects.
Nothing here polls or sleeps: tasks block on their inbox, sources block on the event that all
tasks have opened, and :meth:`LocalJob.wait` blocks on the event that the last task ended.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from time import perf_counter

from sage.common.errors import JobCancelledError, JobError, ServiceError
from sage.kernel.config import ErrorMode, JobConfig
from sage.kernel.graph.plan import PhysicalPlan
from sage.kernel.runtime.builder import build_task
from sage.kernel.runtime.channel import Inbox
from sage.kernel.runtime.error_policy import DeadLetter, DeadLetterQueue
from sage.kernel.runtime.metrics import JobMetrics, snapshot
from sage.kernel.runtime.status import JobStatus
from sage.kernel.runtime.task import ControlFlags, TaskLoop
from sage.kernel.services.registry import ServiceRegistry
from sage.kernel.services.spec import ServiceSpec

__all__ = ["JobStatus", "LocalJob"]

logger = logging.getLogger(__name__)

# How long close()/a failing wait() give threads stuck in user code to return.
_JOIN_GRACE_S = 5.0


@contextmanager
def _pinned(cpus: frozenset[int] | None) -> Iterator[None]:
    """Run the calling thread on ``cpus`` for a while, then restore its affinity."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class LocalJobControl(ControlFlags):
    """Shared flags and events of one local job (implements ``task.JobControl``)."""

    def __init__(self, n_tasks: int, inboxes: list[Inbox]) -> None:
        super().__init__()
        self._inboxes = inboxes
        self._n_tasks = n_tasks
        self._opened = 0
        self._running = n_tasks
        self.all_opened = threading.Event()
        self.finished = threading.Event()
        self.finished_at: float | None = None
        if n_tasks == 0:
            self.finished.set()

    def cancel(self, reason: BaseException | None = None) -> None:
        """Wake and end every task without flushing (``reason`` becomes the error if none yet)."""
        with self._lock:
            if reason is not None and self.error is None:
                self.error = reason
            self._cancelled = True
        self.all_opened.set()
        for inbox in self._inboxes:
            inbox.cancel()

    def task_opened(self, task_id: str) -> None:
        with self._lock:
            self._opened += 1
            if self._opened == self._n_tasks:
                self.all_opened.set()

    def wait_all_opened(self) -> bool:
        self.all_opened.wait()
        return not self._cancelled

    def task_finished(self, task_id: str) -> None:
        with self._lock:
            self._running -= 1
            if self._running == 0:
                self.finished_at = perf_counter()
                self.finished.set()


class LocalJob:
    """A compiled pipeline running on threads of this process.

    Built by ``LocalEnvironment.submit``; use it (or the environment's shortcuts) to wait,
    stop, cancel and read metrics.

    Raises:
        PlanError: a function cannot be constructed for one of its instances (raised by
            the constructor, before any thread starts).
    """

    def __init__(
        self, plan: PhysicalPlan, config: JobConfig, services: Sequence[ServiceSpec] = ()
    ) -> None:
        self.plan = plan
        self.config = config
        self.name = plan.job_name
        self._services = ServiceRegistry(services, plan.job_name)
        self._dead_letters = DeadLetterQueue(config.dead_letter_path)
        inboxes = {t.id: Inbox(config.channel_capacity) for t in plan.tasks if t.expected_eos > 0}
        self._control = LocalJobControl(len(plan.tasks), list(inboxes.values()))
        tasks_by_chain: dict[int, list[Inbox]] = {}
        for task in plan.tasks:
            if task.id in inboxes:
                tasks_by_chain.setdefault(task.chain_id, []).append(inboxes[task.id])
        self._loops: list[TaskLoop] = [
            build_task(
                plan,
                task,
                config=config,
                control=self._control,
                dead_letters=self._dead_letters,
                inbox=inboxes.get(task.id),
                channels_of=tasks_by_chain.__getitem__,
                services=self._services.callers,
            )
            for task in plan.tasks
        ]
        self._threads: list[threading.Thread] = []
        self._started_at: float | None = None
        self._status = JobStatus.CREATED
        self._reported = False

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> LocalJob:
        """Start one thread per task and return at once."""
        self._launch(hosted=None)
        return self

    def run(self) -> None:
        """Run to completion, hosting the first task in the calling thread.

        Equivalent to ``start()`` then ``wait()``, minus one thread: a single-task job
        (a fully fused pipeline) runs entirely in the caller, as a plain loop would.

        Raises:
            Like :meth:`wait`.
        """
        hosted = self._loops[0] if self._loops else None
        self._launch(hosted=hosted)
        if hosted is not None:
            with _pinned(self.config.cpu_affinity):
                hosted.run()
        self.wait()

    def _launch(self, hosted: TaskLoop | None) -> None:
        if self._status is not JobStatus.CREATED:
            raise JobError(f"job {self.name!r} was already started")
        try:
            self._services.start()  # before the first record, so open() can call them too
        except ServiceError:
            self._status = JobStatus.FAILED
            raise
        self._status = JobStatus.RUNNING
        self._started_at = perf_counter()
        # Threads wait at a gate until all exist: a new thread that ran straight away would
        # hold the GIL and make this thread wait a whole switch interval per start.
        gate = threading.Event()

        cpus = self.config.cpu_affinity

        def gated(loop: TaskLoop) -> None:
            if cpus is not None:
                os.sched_setaffinity(0, cpus)  # this thread only
            gate.wait()
            loop.run()

        for loop in self._loops:
            if loop is hosted:
                continue
            thread = threading.Thread(
                target=gated, args=(loop,), name=f"sage-{self.name}-{loop.task_id}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        gate.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every task has ended.

        Args:
            timeout: Seconds to wait at most (``None``: until the job ends).

        Returns:
            ``True`` if the job ended, ``False`` if ``timeout`` passed first.

        Raises:
            OperatorError: user code failed (names operator, instance and record).
            JobError: the job failed or was cancelled.
        """
        if self._status is JobStatus.CREATED:
            raise JobError(f"job {self.name!r} has not been started")
        if not self._control.finished.wait(timeout):
            return False
        self._join(None if self._control.error is None else _JOIN_GRACE_S)
        self._finalize()
        if self._control.error is not None:
            raise self._control.error
        return True

    def stop(self, timeout: float | None = None) -> bool:
        """End the job gracefully: sources stop reading, records in flight reach the sinks.

        Returns and raises like :meth:`wait`.
        """
        if self._status is JobStatus.RUNNING:
            self._status = JobStatus.STOPPING
        self._control.request_stop()
        return self.wait(timeout)

    def cancel(self) -> None:
        """End the job now, dropping records in flight; ``wait`` then raises JobCancelledError."""
        if self._status in (JobStatus.RUNNING, JobStatus.STOPPING):
            self._control.cancel(JobCancelledError(f"job {self.name!r} was cancelled"))

    def close(self) -> None:
        """Cancel the job if it is still running and release its threads; never raises."""
        if self._status in (JobStatus.RUNNING, JobStatus.STOPPING):
            if not self._control.finished.is_set():
                self.cancel()
            self._control.finished.wait(_JOIN_GRACE_S)
            self._join(_JOIN_GRACE_S)
            self._finalize()

    def _join(self, grace: float | None) -> None:
        for thread in self._threads:
            thread.join(grace)
            if thread.is_alive():
                logger.warning(
                    "job %r: thread %s is still inside user code after cancellation; "
                    "it is a daemon thread and will not keep the process alive",
                    self.name,
                    thread.name,
                )

    def _finalize(self) -> None:
        try:
            self._services.close()  # after the last record: finish calls, cleanup()
        except ServiceError as exc:
            if self._control.error is None:
                self._control.error = exc
        error = self._control.error
        self._status = JobStatus.at_end(error)
        if self._reported:
            return
        self._reported = True
        skipped = Counter[str]()
        for loop in self._loops:
            for op in loop.stats.operators:
                if op.errors:
                    skipped[op.name] += op.errors
        if skipped and error is None:
            what = "dead-lettered" if self.config.on_error is ErrorMode.DEAD_LETTER else "skipped"
            logger.warning(
                "job %r finished with %d record(s) %s: %s%s",
                self.name,
                sum(skipped.values()),
                what,
                ", ".join(f"{name}: {n}" for name, n in skipped.items()),
                "; read them from env.dead_letters" if what == "dead-lettered" else "",
            )

    # -- observation ------------------------------------------------------------------

    @property
    def status(self) -> JobStatus:
        """The job's current state."""
        if (
            self._status in (JobStatus.RUNNING, JobStatus.STOPPING)
            and self._control.finished.is_set()
        ):
            return JobStatus.at_end(self._control.error)
        return self._status

    @property
    def error(self) -> BaseException | None:
        """Why the job failed, once it has."""
        return self._control.error

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """Records kept by ``on_error="dead_letter"``, in arrival order."""
        return self._dead_letters.items()

    @property
    def elapsed_s(self) -> float:
        """Seconds since the job started (until it ended, once it has)."""
        if self._started_at is None:
            return 0.0
        end = self._control.finished_at or perf_counter()
        return end - self._started_at

    def metrics(self) -> JobMetrics:
        """A snapshot of per-operator and per-task metrics (during or after the run)."""
        return snapshot(
            self.name,
            self.status.value,
            self.elapsed_s,
            [loop.stats for loop in self._loops],
            len(self._dead_letters),
            self._services.metrics(),
        )
