"""A Ray actor that hosts one task: the same :class:`~sage.kernel.runtime.task.TaskLoop` as a
thread of the local runtime, fed through :mod:`.channels`.

Life of an actor, driven by :class:`~sage.kernel.runtime.ray.executor.RayJob`:

1. constructed with the plan (one object shared through Ray's object store), its task id,
   the job's settings and the started services;
2. ``connect(handles)`` builds the loop with a :class:`~.channels.RemoteChannel` to every
   downstream task actor and starts the service callers; it returns the node it runs on;
3. ``run()`` runs the loop to its end and returns a :class:`TaskOutcome`; meanwhile
   ``push`` receives batches, ``wait_opened`` / ``release`` hold sources until every task
   has opened, and ``request_stop`` / ``cancel`` / ``stats`` serve the driver.

The actor is threaded: ``run`` occupies one thread, and every sender may have ``window``
pushes in flight, each holding a thread while it waits for room in the inbox.
"""

from __future__ import annotations

import logging
import pickle
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from sage.common.errors import JobError
from sage.kernel.config import JobConfig
from sage.kernel.graph.plan import PhysicalPlan
from sage.kernel.runtime.builder import build_task
from sage.kernel.runtime.channel import Inbox
from sage.kernel.runtime.error_policy import DeadLetter, DeadLetterQueue
from sage.kernel.runtime.metrics import TaskStats
from sage.kernel.runtime.ray.channels import OrderedDelivery, RemoteChannel
from sage.kernel.runtime.ray.services import RemoteService, proxy_specs
from sage.kernel.runtime.task import TaskLoop, job_error
from sage.kernel.services.metrics import ServiceMetrics
from sage.kernel.services.registry import ServiceRegistry

__all__ = ["CONTROL_THREADS", "QueueFigures", "TaskActor", "TaskOutcome"]

# Actor threads kept for the driver's calls: run, wait_opened, and a stats/stop/cancel.
CONTROL_THREADS = 4
_LOG_LINES = 1000  # lines of a task's log kept for the job's log (the latest)


class _LogBuffer(logging.Handler):
    """Keeps the latest log lines of the job's functions (``ctx.logger``) and warnings."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: deque[str] = deque(maxlen=_LOG_LINES)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING or record.name.startswith("sage.job."):
            self.lines.append(self.format(record))


@dataclass(frozen=True)
class QueueFigures:
    """A task inbox's figures at the time of a snapshot (what metrics read of a queue)."""

    depth: int
    capacity: int
    high_water: int


@dataclass(frozen=True)
class TaskOutcome:
    """How a task ended, sent back to the driver."""

    task_id: str
    status: str
    error: BaseException | None
    stats: TaskStats
    services: tuple[ServiceMetrics, ...]
    dead_letters: list[DeadLetter]
    log: list[str]


def _portable(error: BaseException) -> BaseException:
    """``error`` if it survives pickling (to the driver), else a ``JobError`` with its text."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        portable = JobError(f"{type(error).__name__}: {error}")
        return portable
    return error


class _ActorControl:
    """The task's view of its job (implements ``task.JobControl``); the driver sets flags."""

    def __init__(self, delivery: OrderedDelivery | None) -> None:
        self._delivery = delivery
        self._lock = threading.Lock()
        self._stop = False
        self._cancelled = False
        self.error: BaseException | None = None
        self.opened = threading.Event()
        self.released = threading.Event()

    @property
    def stop_requested(self) -> bool:
        return self._stop

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def request_stop(self) -> None:
        self._stop = True

    def fail(self, exc: BaseException, task_id: str) -> None:
        with self._lock:
            if self.error is None:
                self.error = job_error(exc, task_id)
        self.cancel()

    def cancel(self) -> None:
        self._cancelled = True
        self.released.set()
        if self._delivery is not None:
            self._delivery.cancel()

    def task_opened(self, task_id: str) -> None:
        self.opened.set()

    def wait_all_opened(self) -> bool:
        self.released.wait()
        return not self._cancelled

    def task_finished(self, task_id: str) -> None:
        self.opened.set()  # a task that failed to open must not hold up the driver


class TaskActor:
    """Hosts one task of a job (see the module docstring).

    Args:
        plan: The compiled job.
        task_id: Which of its tasks this actor runs.
        config: The job's settings.
        services: The job's started services.
        window: Pushes each sender keeps in flight per receiver.
    """

    def __init__(
        self,
        plan: PhysicalPlan,
        task_id: str,
        config: JobConfig,
        services: list[RemoteService],
        window: int,
    ) -> None:
        self._plan = plan
        self._task = next(t for t in plan.tasks if t.id == task_id)
        self._config = config
        self._window = window
        inbox = Inbox(config.channel_capacity) if self._task.expected_eos > 0 else None
        self._delivery = OrderedDelivery(inbox) if inbox is not None else None
        self._control = _ActorControl(self._delivery)
        self._dead_letters = DeadLetterQueue(config.dead_letter_path)
        self._registry = ServiceRegistry(proxy_specs(services), plan.job_name) if services else None
        self._loop: TaskLoop | None = None
        self._log = _LogBuffer()  # the actor's process is the task's own: take its root log
        logging.getLogger().addHandler(self._log)
        logging.getLogger(f"sage.job.{plan.job_name}").setLevel(logging.INFO)

    def connect(self, handles: dict[int, list[Any]]) -> str:
        """Build the loop, sending to the task actors ``handles`` (by chain, by instance).

        Returns:
            The id of the node this actor runs on.

        Raises:
            PlanError: a function cannot be constructed for this instance.
            ServiceError: the service callers could not start.
        """
        import ray

        channels: dict[tuple[int, int], RemoteChannel] = {}

        def channels_of(chain_id: int) -> list[RemoteChannel]:
            out = []
            for index, handle in enumerate(handles[chain_id]):
                key = (chain_id, index)
                if key not in channels:  # one numbered stream per receiver, for every edge
                    channels[key] = RemoteChannel(handle, self._task.id, self._window)
                out.append(channels[key])
            return out

        if self._registry is not None:
            self._registry.start()
        self._loop = build_task(
            self._plan,
            self._task,
            config=self._config,
            control=self._control,
            dead_letters=self._dead_letters,
            inbox=None if self._delivery is None else self._delivery.inbox,
            channels_of=channels_of,
            services=None if self._registry is None else self._registry.callers,
        )
        node_id: str = ray.get_runtime_context().get_node_id()
        return node_id

    def push(self, sender: str, seq: int, item: Any) -> bool:
        """Receive the ``seq``-th item from ``sender``; ``False`` if the task was cancelled."""
        if self._delivery is None:  # pragma: no cover - the plan never sends to a source
            raise JobError(f"task {self._task.id} has no input")
        return self._delivery.deliver(sender, seq, item)

    def run(self) -> TaskOutcome:
        """Run the task to its end and report how it ended."""
        loop = self._loop
        assert loop is not None, "connect() first"
        loop.run()
        if self._registry is not None:
            try:
                self._registry.close()
            except Exception as exc:
                self._control.fail(exc, self._task.id)
        error = self._control.error
        if error is not None:
            loop.stats.status = "failed"
        return TaskOutcome(
            task_id=self._task.id,
            status=loop.stats.status,
            error=None if error is None else _portable(error),
            stats=self._stats(),
            services=self._service_metrics(),
            dead_letters=self._dead_letters.items(),
            log=list(self._log.lines),
        )

    def wait_opened(self) -> bool:
        """Block until the task has opened its functions (or ended trying)."""
        self._control.opened.wait()
        return True

    def release(self) -> None:
        """Every task has opened: a source may start reading."""
        self._control.released.set()

    def request_stop(self) -> None:
        """End a source at its next batch boundary (graceful stop)."""
        self._control.request_stop()

    def cancel(self) -> None:
        """End the task now, without flushing."""
        self._control.cancel()

    def stats(self) -> tuple[TaskStats, tuple[ServiceMetrics, ...]]:
        """A snapshot of the task's counters and of its service calls."""
        return self._stats(), self._service_metrics()

    def _stats(self) -> TaskStats:
        assert self._loop is not None
        live = self._loop.stats
        copy = TaskStats(live.task_id, live.instance, live.operators)
        for name in ("records_in", "records_out", "batches", "busy_s", "latency", "status"):
            setattr(copy, name, getattr(live, name))
        queue = live.queue
        if queue is not None:
            copy.queue = QueueFigures(queue.depth, queue.capacity, queue.high_water)
        return copy

    def _service_metrics(self) -> tuple[ServiceMetrics, ...]:
        return () if self._registry is None else self._registry.metrics()
