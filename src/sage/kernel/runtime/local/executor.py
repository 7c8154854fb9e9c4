"""The local runtime: every task of the plan runs in its own thread of this process.

Tasks exchange batches through bounded :class:`~sage.kernel.runtime.channel.Inbox` objects.
Nothing here polls or sleeps: tasks block on their inbox, sources block on the event that all
tasks have opened, and :meth:`LocalJob.wait` blocks on the event that the job ended.

With ``config["fault_tolerance"]`` a supervisor thread watches each attempt: when a task
fails, every task of the attempt is cancelled and, if the restart strategy allows, a new
attempt starts from the latest complete checkpoint (or from the start without checkpoints).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from time import perf_counter

from sage.common.errors import JobCancelledError, JobError, ServiceError
from sage.kernel.checkpoint.coordinator import CheckpointCoordinator
from sage.kernel.checkpoint.policy import FaultTolerance
from sage.kernel.checkpoint.store import Checkpoint, CheckpointStore
from sage.kernel.config import ErrorMode, JobConfig
from sage.kernel.graph.plan import PhysicalPlan
from sage.kernel.runtime.builder import build_task
from sage.kernel.runtime.channel import Inbox
from sage.kernel.runtime.collect import CollectBuffers, CollectedChunk, CollectTarget, TargetFor
from sage.kernel.runtime.error_policy import DeadLetter, DeadLetterQueue
from sage.kernel.runtime.heads import SourceHead
from sage.kernel.runtime.metrics import JobMetrics, graph_edges, snapshot
from sage.kernel.runtime.monitoring import memory_monitor
from sage.kernel.runtime.output import (
    JOB_LOGGER_PREFIX,
    OutputLine,
    OutputRoute,
    OutputSink,
    capture,
)
from sage.kernel.runtime.publisher import publisher
from sage.kernel.runtime.status import JobStatus
from sage.kernel.runtime.supervisor import Supervisor
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

    def __init__(
        self,
        n_tasks: int,
        inboxes: list[Inbox],
        coordinator: CheckpointCoordinator | None = None,
        collect: CollectBuffers | None = None,
    ) -> None:
        super().__init__()
        self._inboxes = inboxes
        self._coordinator = coordinator
        self._collect = collect
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
        if self._collect is not None:
            self._collect.cancel()  # wakes a collect waiting for its records to be taken
        if self._coordinator is not None:
            self._coordinator.abort()  # wakes tasks waiting for a checkpoint to complete

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


class _Attempts:
    """A local job's attempts, as its :class:`~sage.kernel.runtime.supervisor.Supervisor`
    drives them."""

    def __init__(self, job: LocalJob) -> None:
        self.job = job

    def await_attempt(self) -> BaseException | None:
        """Block until the current attempt's tasks have all ended; its error."""
        control = self.job._control
        control.finished.wait()
        return control.error

    def commit(self) -> None:
        """The job finished: its final checkpoint lets every sink commit."""
        if self.job._coordinator is not None:
            self.job._coordinator.finish()

    def end_attempt(self) -> None:
        """Wake what waits for a checkpoint of the failed attempt; join its threads."""
        if self.job._coordinator is not None:
            self.job._coordinator.abort()
        self.job._join(_JOIN_GRACE_S)

    def latest_checkpoint(self) -> Checkpoint | None:
        """The latest complete checkpoint (``None``: restart from the start)."""
        coordinator = self.job._coordinator
        return None if coordinator is None else coordinator.store.latest()

    def start_attempt(self, restore: Checkpoint | None) -> None:
        """Build a new attempt from ``restore`` and start its threads."""
        self.job._build_attempt(restore)
        self.job._start_attempt(None)

    def log(self, line: str) -> None:
        """A restart of the job (a warning: it failed)."""
        logger.warning("job %r: %s", self.job.name, line)


class LocalJob:
    """A compiled pipeline running on threads of this process.

    Built by ``LocalEnvironment.submit``; use it (or the environment's shortcuts) to wait,
    stop, cancel and read metrics.

    Args:
        plan: The compiled job.
        config: Job settings.
        services: The environment's registrations.
        publish: Send metrics to a running dashboard.
        collectors: Where each ``collect()`` puts its records, by collector id (the
            submitter's lists). ``None``: into buffers that :meth:`collected` empties (a
            job that runs for someone else: the JobManager's).
        output: Receives what the job's functions print and log, line by line, labelled
            with their operator instance (``None``: it goes to this process's output).

    Raises:
        PlanError: a function cannot be constructed for one of its instances (raised by
            the constructor, before any thread starts).
        ConfigError: ``config["fault_tolerance"]`` is invalid, or asks for restarts of a
            job that could not be replayed.
    """

    def __init__(
        self,
        plan: PhysicalPlan,
        config: JobConfig,
        services: Sequence[ServiceSpec] = (),
        *,
        publish: bool = True,
        collectors: Mapping[str, CollectTarget] | None = None,
        output: OutputSink | None = None,
    ) -> None:
        self.plan = plan
        self.config = config
        self.name = plan.job_name
        self._collect = CollectBuffers() if collectors is None else None
        self._collectors: TargetFor = (
            self._collect if self._collect is not None else dict(collectors or {}).__getitem__
        )
        self._output = output
        self.fault_tolerance = FaultTolerance.from_config(config.raw)
        self.fault_tolerance.check(plan)
        self._services = ServiceRegistry(services, plan.job_name)
        self._dead_letters = DeadLetterQueue(config.dead_letter_path)
        self._coordinator: CheckpointCoordinator | None = None
        if self.fault_tolerance.restart is not None or self.fault_tolerance.checkpointing:
            self._coordinator = CheckpointCoordinator(
                [t.id for t in plan.tasks],
                CheckpointStore(self.fault_tolerance.checkpoint_dir, plan.job_name),
                self.fault_tolerance.checkpoint_interval_s,
                trigger=self._trigger_checkpoint,
                notify=self._notify_checkpoint,
            )
        self._build_attempt(None)
        # Without restarts the job ends when its one attempt does; else the supervisor says.
        self._supervised = self.fault_tolerance.restart is not None
        self._done = threading.Event() if self._supervised else self._control.finished
        self._final_error: BaseException | None = None
        self.supervisor = Supervisor(self.name, _Attempts(self), self.fault_tolerance.restart)
        self._finished_at: float | None = None
        self._stop_requested = False
        self._started_at: float | None = None
        self._status = JobStatus.CREATED
        self._reported = False
        self.memory_monitor = memory_monitor(config.raw)
        self._publish = publish
        self.dashboard_id: str | None = None

    def _build_attempt(self, restore: Checkpoint | None) -> None:
        """Build the inboxes, control and task loops of a (new) attempt."""
        plan, config = self.plan, self.config
        inboxes = {t.id: Inbox(config.channel_capacity) for t in plan.tasks if t.expected_eos > 0}
        control = LocalJobControl(
            len(plan.tasks), list(inboxes.values()), self._coordinator, self._collect
        )
        tasks_by_chain: dict[int, list[Inbox]] = {}
        for task in plan.tasks:
            if task.id in inboxes:
                tasks_by_chain.setdefault(task.chain_id, []).append(inboxes[task.id])
        self._loops: list[TaskLoop] = [
            build_task(
                plan,
                task,
                config=config,
                control=control,
                dead_letters=self._dead_letters,
                inbox=inboxes.get(task.id),
                channels_of=tasks_by_chain.__getitem__,
                services=self._services.callers,
                checkpoints=self._coordinator,
                restore=None if restore is None else restore.snapshots.get(task.id),
                collectors=self._collectors,
            )
            for task in plan.tasks
        ]
        if self._output is not None:
            for loop in self._loops:
                route = OutputRoute(loop.attribution(), self._emit)
                loop.thread_scope = functools.partial(capture.routed, route)
        self._control = control
        self._threads: list[threading.Thread] = []

    def _emit(self, line: OutputLine) -> None:
        assert self._output is not None
        self._output((line,))

    def _trigger_checkpoint(self, checkpoint_id: int) -> None:
        for loop in self._loops:
            if isinstance(loop.head, SourceHead):
                loop.request_checkpoint(checkpoint_id)

    def _notify_checkpoint(self, checkpoint_id: int) -> None:
        for loop in self._loops:
            loop.notify_checkpoint_complete(checkpoint_id)

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
        hosted = self._loops[0] if self._loops and not self._supervised else None
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
        if self._output is not None:
            capture.install()
            job_logger = logging.getLogger(JOB_LOGGER_PREFIX + self.name)
            if job_logger.level == logging.NOTSET:
                job_logger.setLevel(logging.INFO)  # self.logger.info(...) reaches the output
        if self.memory_monitor is not None:
            self.memory_monitor.start()
        if self._publish:
            self.dashboard_id = publisher().track(self)
        self._start_attempt(hosted)
        if self._supervised:
            threading.Thread(
                target=self._supervise, name=f"sage-{self.name}-supervisor", daemon=True
            ).start()

    def _start_attempt(self, hosted: TaskLoop | None) -> None:
        """Start a thread per task of the current attempt (but ``hosted``'s)."""
        if self._coordinator is not None:
            self._coordinator.start(self.name)
        if self._stop_requested:
            self._control.request_stop()
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

    def _supervise(self) -> None:
        """The supervisor's thread: attempts until one finishes or the strategy gives up."""
        self._final_error = self.supervisor.supervise()
        self._finished_at = perf_counter()
        self._done.set()

    def _failure(self) -> BaseException | None:
        """Why the job failed (so far: the current attempt's error without restarts)."""
        return self._final_error if self._supervised else self._control.error

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
        if not self._done.wait(timeout):
            return False
        self._join(None if self._failure() is None else _JOIN_GRACE_S)
        self._finalize()
        error = self._failure()
        if error is not None:
            raise error
        return True

    def stop(self, timeout: float | None = None) -> bool:
        """End the job gracefully: sources stop reading, records in flight reach the sinks.

        Returns and raises like :meth:`wait`.
        """
        if self._status is JobStatus.RUNNING:
            self._status = JobStatus.STOPPING
        self._stop_requested = True
        self._control.request_stop()
        return self.wait(timeout)

    def cancel(self) -> None:
        """End the job now, dropping records in flight; ``wait`` then raises JobCancelledError."""
        if self._status in (JobStatus.RUNNING, JobStatus.STOPPING):
            self.supervisor.cancel()
            self._control.cancel(JobCancelledError(f"job {self.name!r} was cancelled"))

    def close(self) -> None:
        """Cancel the job if it is still running and release its threads; never raises."""
        if self._status in (JobStatus.RUNNING, JobStatus.STOPPING):
            if not self._done.is_set():
                self.cancel()
            self._done.wait(_JOIN_GRACE_S)
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
            if self._failure() is None:
                if self._supervised:
                    self._final_error = exc
                else:
                    self._control.error = exc
        error = self._failure()
        self._status = JobStatus.at_end(error)
        if self._reported:
            return
        self._reported = True
        if self._output is not None:
            capture.uninstall()
        if self.memory_monitor is not None:
            self.memory_monitor.stop()
        if self._publish:
            publisher().ended(self.dashboard_id)
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

    def collected(self, max_records: int, timeout: float | None) -> list[CollectedChunk] | None:
        """Take the records the job's ``collect()`` operators gathered (when built without
        ``collectors``): up to ``max_records``, pickled by collector, once there are any;
        ``[]`` after ``timeout`` seconds without any; ``None`` once every collector closed
        and was emptied, or the job was cancelled. A collect waits while its buffer is full,
        and does not finish until its last records were taken."""
        return None if self._collect is None else self._collect.take(max_records, timeout)

    # -- observation ------------------------------------------------------------------

    @property
    def restarts(self) -> int:
        """Attempts started after a failure."""
        return self.supervisor.restarts

    @property
    def status(self) -> JobStatus:
        """The job's current state."""
        if self._status in (JobStatus.RUNNING, JobStatus.STOPPING) and self._done.is_set():
            return JobStatus.at_end(self._failure())
        return self._status

    @property
    def checkpoints_completed(self) -> int:
        """Checkpoints this job has completed (across its restarts)."""
        return 0 if self._coordinator is None else self._coordinator.completed_count

    @property
    def error(self) -> BaseException | None:
        """Why the job failed, once it has."""
        return self._failure()

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """Records kept by ``on_error="dead_letter"``, in arrival order."""
        return self._dead_letters.items()

    @property
    def elapsed_s(self) -> float:
        """Seconds since the job started (until it ended, once it has)."""
        if self._started_at is None:
            return 0.0
        end = (self._finished_at if self._supervised else self._control.finished_at) or (
            perf_counter()
        )
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
            graph_edges(self.plan.nodes),
        )
