"""A Ray actor that hosts tasks: the same :class:`~sage.kernel.runtime.task.TaskLoop` as a
thread of the local runtime, fed through :mod:`.channels`.

A :class:`TaskHost` is a long-lived worker process, like a Flink TaskManager slot: it runs
one task at a time, job after job, so a job does not pay for starting a Python process per
task (seconds on a small machine). Life of one assignment, driven by
:class:`~sage.kernel.runtime.ray.executor.RayJob`:

1. ``assign(job, plan, task_id, ...)`` sets up the task (the plan is one object shared
   through Ray's object store) and returns the node the host runs on;
2. ``connect(job, handles)`` builds the loop with a :class:`~.channels.RemoteChannel` to
   every downstream host and starts the service callers;
3. ``run(job)`` runs the loop to its end and returns a :class:`TaskOutcome`; meanwhile
   ``push`` receives batches, ``wait_opened`` / ``release`` hold sources until every task
   has opened, and ``request_stop`` / ``cancel`` / ``stats`` / ``trigger_checkpoint`` /
   ``notify_checkpoint`` serve the driver and the checkpoint coordinator; ``output`` and
   ``collected`` hand the driver what the task's functions printed and logged (caught by
   :mod:`~sage.kernel.runtime.output`) and the records its ``collect()`` gathered;
4. ``free(job)`` once the whole job has ended (its sinks may commit until then).

Every call names its job: a late call of an earlier job (a push still in flight when that
job was cancelled) finds the host serving another job and is ignored. Driver calls run in
their own concurrency groups (the long-polls of ``output`` and ``collected`` in one of
theirs), so pushes blocked on a full inbox never hold them up.
"""

from __future__ import annotations

import logging
import pickle
import sys
import threading
from dataclasses import dataclass
from typing import Any

import ray

from sage.kernel.config import JobConfig
from sage.kernel.graph.plan import PhysicalPlan
from sage.kernel.runtime.builder import build_task
from sage.kernel.runtime.channel import Cancelled, Inbox
from sage.kernel.runtime.collect import CollectBuffers, CollectedChunk, collecting_tasks
from sage.kernel.runtime.error_policy import DeadLetter, DeadLetterQueue
from sage.kernel.runtime.handover import Handover
from sage.kernel.runtime.metrics import TaskStats
from sage.kernel.runtime.output import JOB_LOGGER_PREFIX, OutputLine, OutputRoute, capture
from sage.kernel.runtime.ray.channels import OrderedDelivery, RemoteChannel
from sage.kernel.runtime.ray.checkpoints import RemoteCheckpoints
from sage.kernel.runtime.ray.services import RemoteService, proxy_specs
from sage.kernel.runtime.task import ControlFlags, TaskLoop
from sage.kernel.services.metrics import ServiceMetrics
from sage.kernel.services.registry import ServiceRegistry

__all__ = [
    "CONCURRENCY_GROUPS",
    "DATA_THREADS",
    "Assignment",
    "QueueFigures",
    "TaskHost",
    "TaskOutcome",
]

# Threads of a host: the driver's calls (run and wait_opened block; a stats/stop/cancel
# besides) in their own group, the driver's long-polls for output and collected records in
# another, pushes in the default one (any number works: see OrderedDelivery; more let more
# senders block on a full inbox at once).
CONCURRENCY_GROUPS = {"control": 4, "relay": 2}
DATA_THREADS = 16
LINE_BUFFER = 10_000
"""Lines a task's output holds before a ``print`` waits for the driver to take them."""
LINES_PER_CALL = 5_000  # lines one ``output`` call returns at most


@dataclass(frozen=True)
class QueueFigures:
    """A task inbox's figures at the time of a snapshot (what metrics read of a queue)."""

    depth: int
    capacity: int
    high_water: int


@dataclass(frozen=True)
class Assignment:
    """What a host needs, besides the plan, to run one task of a job (sent with ``assign``).

    Attributes:
        task_id: The task to run.
        config: Job settings.
        services: The job's service replicas.
        window: Pushes a channel keeps unanswered (see :mod:`.channels`).
        checkpoints: The job's checkpoint coordinator actor, if it takes checkpoints.
        restore: The task's snapshot to resume from, if any.
    """

    task_id: str
    config: JobConfig
    services: list[RemoteService]
    window: int
    checkpoints: Any = None
    restore: bytes | None = None


@dataclass(frozen=True)
class TaskOutcome:
    """How a task ended, sent back to the driver."""

    task_id: str
    status: str
    error: BaseException | None
    stats: TaskStats
    services: tuple[ServiceMetrics, ...]
    dead_letters: list[DeadLetter]


def _portable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling (to the driver), else a ``JobError`` with its text."""
    from sage.common.errors import JobError

    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return JobError(f"{type(error).__name__}: {error}")
    return error


class _ActorControl(ControlFlags):
    """The task's view of its job (implements ``task.JobControl``); the driver sets flags."""

    def __init__(self, delivery: OrderedDelivery | None, collect: CollectBuffers | None) -> None:
        super().__init__()
        self._delivery = delivery
        self._collect = collect
        self.opened = threading.Event()
        self.released = threading.Event()

    def cancel(self) -> None:
        super().cancel()
        self.released.set()
        if self._delivery is not None:
            self._delivery.cancel()
        if self._collect is not None:
            self._collect.cancel()

    def task_opened(self, task_id: str) -> None:
        self.opened.set()

    def wait_all_opened(self) -> bool:
        self.released.wait()
        return not self._cancelled

    def task_finished(self, task_id: str) -> None:
        self.opened.set()  # a task that failed to open must not hold up the driver


class _Task:
    """One task of one job, as a host runs it."""

    def __init__(self, plan: PhysicalPlan, assignment: Assignment) -> None:
        config, services = assignment.config, assignment.services
        self.plan = plan
        self.task = next(t for t in plan.tasks if t.id == assignment.task_id)
        self.config = config
        self.window = assignment.window
        checkpoints = assignment.checkpoints
        self.checkpoints = None if checkpoints is None else RemoteCheckpoints(checkpoints)
        self.restore = assignment.restore
        inbox = Inbox(config.channel_capacity) if self.task.expected_eos > 0 else None
        self.delivery = OrderedDelivery(inbox) if inbox is not None else None
        collects = assignment.task_id in collecting_tasks(plan)
        self.collect = CollectBuffers() if collects else None
        self.control = _ActorControl(self.delivery, self.collect)
        self.dead_letters = DeadLetterQueue(config.dead_letter_path)
        self.registry = ServiceRegistry(proxy_specs(services), plan.job_name) if services else None
        self.loop: TaskLoop | None = None
        self.output = Handover(LINE_BUFFER)
        self.lines = self.output.buffer("lines")
        self.route: OutputRoute | None = None

    def _emit(self, line: OutputLine) -> None:
        try:
            self.lines.put(line)
        except Cancelled:  # the host was freed: nobody takes lines any more
            stream = sys.__stderr__ if line.stream == "stderr" else sys.__stdout__
            if stream is not None:
                stream.write(f"({line.origin}) {line.text}\n")

    def connect(self, job: str, handles: dict[int, list[Any]]) -> None:
        channels: dict[tuple[int, int], RemoteChannel] = {}

        def channels_of(chain_id: int) -> list[RemoteChannel]:
            out = []
            for index, handle in enumerate(handles[chain_id]):
                key = (chain_id, index)
                if key not in channels:  # one numbered stream per receiver, for every edge
                    channels[key] = RemoteChannel(handle, job, self.task.id, self.window)
                out.append(channels[key])
            return out

        if self.registry is not None:
            self.registry.start()
        self.loop = build_task(
            self.plan,
            self.task,
            config=self.config,
            control=self.control,
            dead_letters=self.dead_letters,
            inbox=None if self.delivery is None else self.delivery.inbox,
            channels_of=channels_of,
            services=None if self.registry is None else self.registry.callers,
            checkpoints=self.checkpoints,
            restore=self.restore,
            collectors=self.collect,
        )
        # A host runs one task: every thread of it writes this task's output.
        self.route = OutputRoute(self.loop.attribution(), self._emit)
        capture.default = self.route

    def run(self) -> TaskOutcome:
        loop, route = self.loop, self.route
        assert loop is not None and route is not None, "connect() first"
        try:
            loop.run()
            if self.registry is not None:
                try:
                    self.registry.close()
                except Exception as exc:
                    self.control.fail(exc, self.task.id)
        finally:
            capture.flush_partial(route)
            self.lines.close()  # the driver takes what is left, then hears the end
        error = self.control.error
        if error is not None:
            loop.stats.status = "failed"
        return TaskOutcome(
            task_id=self.task.id,
            status=loop.stats.status,
            error=None if error is None else _portable(error),
            stats=self.stats(),
            services=self.service_metrics(),
            dead_letters=self.dead_letters.items(),
        )

    def release(self) -> None:
        """The job has ended: stop catching output for it, end every wait."""
        if capture.default is self.route:
            capture.default = None
        self.output.cancel()
        self.control.cancel()

    def stats(self) -> TaskStats:
        assert self.loop is not None
        live = self.loop.stats
        copy = TaskStats(live.task_id, live.instance, live.operators)
        for name in ("records_in", "records_out", "batches", "busy_s", "latency", "status"):
            setattr(copy, name, getattr(live, name))
        queue = live.queue
        if queue is not None:
            copy.queue = QueueFigures(queue.depth, queue.capacity, queue.high_water)
        return copy

    def service_metrics(self) -> tuple[ServiceMetrics, ...]:
        return () if self.registry is None else self.registry.metrics()


class TaskHost:
    """A long-lived actor that runs the tasks assigned to it (see the module docstring)."""

    def __init__(self) -> None:
        self._job: str | None = None
        self._task: _Task | None = None
        self._lock = threading.Lock()
        self._capturing = False

    def _current(self, job: str) -> _Task | None:
        """The task of ``job``, or ``None`` if this host serves another job (or none)."""
        return self._task if self._job == job else None

    @ray.method(concurrency_group="control")
    def assign(self, job: str, plan: PhysicalPlan, assignment: Assignment) -> str:
        """Take ``assignment``'s task of ``job`` (``plan``: one object in Ray's store, shared
        by every task); returns the id of this host's node."""
        from sage.common.errors import JobError

        with self._lock:
            if self._task is not None:
                raise JobError(f"host busy with job {self._job!r}; cannot take {job!r}")
            task = _Task(plan, assignment)
            if not self._capturing:
                capture.install()  # for good: with no task assigned, output passes through
                self._capturing = True
            logging.getLogger(JOB_LOGGER_PREFIX + plan.job_name).setLevel(logging.INFO)
            self._job, self._task = job, task
        node_id: str = ray.get_runtime_context().get_node_id()
        return node_id

    @ray.method(concurrency_group="control")
    def connect(self, job: str, handles: dict[int, list[Any]]) -> None:
        """Build the task's loop, sending to the hosts ``handles`` (by chain, by instance).

        Raises:
            PlanError: a function cannot be constructed for this instance.
            ServiceError: the service callers could not start.
        """
        task = self._current(job)
        if task is not None:
            task.connect(job, handles)

    def push(self, job: str, sender: str, seq: int, item: Any) -> bool:
        """Receive the ``seq``-th item from ``sender``; ``False`` if the task was cancelled."""
        task = self._current(job)
        if task is None or task.delivery is None:
            return False  # a late push of an ended job
        return task.delivery.deliver(sender, seq, item)

    @ray.method(concurrency_group="control")
    def run(self, job: str) -> TaskOutcome | None:
        """Run the task to its end and report how it ended (the host stays ``job``'s until
        :meth:`free`: a finished sink commits when the whole job has ended)."""
        task = self._current(job)
        if task is None:
            return None
        return task.run()

    @ray.method(concurrency_group="control")
    def free(self, job: str) -> None:
        """Drop ``job``'s task once the job has ended: the host is idle."""
        with self._lock:
            task = self._current(job)
            if task is None:
                return
            task.release()
            self._job, self._task = None, None

    @ray.method(concurrency_group="relay")
    def output(self, job: str, timeout: float) -> list[OutputLine] | None:
        """The lines the task's functions wrote since the last call, once there are any (at
        most ``timeout`` seconds: then ``[]``); ``None`` once the task ended and every line
        was taken."""
        task = self._current(job)
        if task is None:
            return None
        taken = task.output.take(LINES_PER_CALL, timeout)
        if taken is None:
            return None
        return [line for _, lines in taken for line in lines]

    @ray.method(concurrency_group="relay")
    def collected(self, job: str, max_records: int, timeout: float) -> list[CollectedChunk] | None:
        """Up to ``max_records`` records of the task's ``collect()`` operators, once there are
        any (at most ``timeout`` seconds: then ``[]``); ``None`` once they closed and every
        record was taken. The collect waits (backpressure) while no one takes them."""
        task = self._current(job)
        if task is None or task.collect is None:
            return None
        return task.collect.take(max_records, timeout)

    @ray.method(concurrency_group="control")
    def wait_opened(self, job: str) -> bool:
        """Block until the task has opened its functions (or ended trying)."""
        task = self._current(job)
        if task is not None:
            task.control.opened.wait()
        return True

    @ray.method(concurrency_group="control")
    def release(self, job: str) -> None:
        """Every task has opened: a source may start reading."""
        task = self._current(job)
        if task is not None:
            task.control.released.set()

    @ray.method(concurrency_group="control")
    def request_stop(self, job: str) -> None:
        """End a source at its next batch boundary (graceful stop)."""
        task = self._current(job)
        if task is not None:
            task.control.request_stop()

    @ray.method(concurrency_group="control")
    def trigger_checkpoint(self, job: str, checkpoint_id: int) -> None:
        """(Source tasks) Take checkpoint ``checkpoint_id`` at the next batch boundary."""
        task = self._current(job)
        if task is not None and task.loop is not None:
            task.loop.request_checkpoint(checkpoint_id)

    @ray.method(concurrency_group="control")
    def notify_checkpoint(self, job: str, checkpoint_id: int) -> None:
        """Checkpoint ``checkpoint_id`` is complete: the task's functions may commit."""
        task = self._current(job)
        if task is not None and task.loop is not None:
            task.loop.notify_checkpoint_complete(checkpoint_id)

    @ray.method(concurrency_group="control")
    def cancel(self, job: str) -> None:
        """End the task now, without flushing."""
        task = self._current(job)
        if task is not None:
            task.control.cancel()

    @ray.method(concurrency_group="control")
    def stats(self, job: str) -> tuple[TaskStats, tuple[ServiceMetrics, ...]] | None:
        """A snapshot of the task's counters and service calls (``None``: it has ended)."""
        task = self._current(job)
        if task is None or task.loop is None:
            return None
        return task.stats(), task.service_metrics()
