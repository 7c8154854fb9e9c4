"""The task loop: written once, hosted by a thread (local runtime) or an actor (Ray runtime).

A task runs one chain instance: it opens its functions, then either pulls batches from its
source head or reads its inbox, passes each batch through the head and the fused body, and
hands the output to its routers. A batch is cut into chunks small enough that, at the
per-record cost measured so far, outputs leave within ``max_delay_s``: cheap operators keep
whole batches, a slow one (a model call) hands on each result as soon as it has it.

A task ends when its source is exhausted (or the job is asked to stop) or when it has counted
an end-of-stream marker from every upstream task; then it flushes its head, tells its
downstream tasks it has ended, and closes its functions.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Protocol

from sage.common.core.context import RuntimeContext
from sage.common.core.scheduling import Scheduling, scheduling_scope
from sage.common.core.state import KeyedStateBackend
from sage.common.errors import JobError, OperatorError, SageError
from sage.kernel.checkpoint.state import (
    END_OF_INPUT,
    NO_STATE,
    commit_at_end,
    function_state,
    notify_complete,
)
from sage.kernel.runtime.channel import Barrier, Cancelled, EndOfStream
from sage.kernel.runtime.codegen import FusedBody
from sage.kernel.runtime.functions import FunctionInstance
from sage.kernel.runtime.heads import BlockingSourceHead, Head, SourceHead
from sage.kernel.runtime.metrics import OperatorStats, TaskStats
from sage.kernel.runtime.output import Attribution, operator_label
from sage.kernel.runtime.routing import Router

__all__ = [
    "CheckpointChannel",
    "ControlFlags",
    "InputChannel",
    "JobControl",
    "OperatorInstance",
    "PartialBatchFlusher",
    "TaskLoop",
    "ThreadScope",
    "job_error",
]

ThreadScope = Callable[[], AbstractContextManager[Any]]
"""Entered by every thread that runs a task's functions (to route its output, for one)."""

logger = logging.getLogger(__name__)


def job_error(exc: BaseException, task_id: str) -> BaseException:
    """The error a job reports when task ``task_id`` failed with ``exc``.

    SAGE's own errors (an ``OperatorError`` naming the operator and record...) are reported
    as they are; anything else is wrapped in a ``JobError`` naming the task.
    """
    if isinstance(exc, SageError | KeyboardInterrupt | SystemExit):
        return exc
    error = JobError(f"task {task_id} failed: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


class ControlFlags:
    """The flags every ``JobControl`` keeps: stop, cancel, and the first error.

    Subclasses say in :meth:`cancel` what cancelling wakes (inboxes, waiting sources).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = False
        self._cancelled = False
        self.error: BaseException | None = None

    @property
    def stop_requested(self) -> bool:
        """Sources should end at the next batch boundary (graceful stop)."""
        return self._stop

    @property
    def cancelled(self) -> bool:
        """The job is being torn down; tasks exit without flushing."""
        return self._cancelled

    def request_stop(self) -> None:
        """Ask sources to end at their next batch boundary; in-flight records still drain."""
        self._stop = True

    def fail(self, exc: BaseException, task_id: str) -> None:
        """Record the job's failure (the first one wins) and cancel."""
        with self._lock:
            if self.error is None:
                self.error = job_error(exc, task_id)
        self.cancel()

    def cancel(self) -> None:
        """Set the cancelled flag; subclasses wake what waits."""
        self._cancelled = True


class JobControl(Protocol):
    """What a task needs from the job it belongs to."""

    @property
    def stop_requested(self) -> bool:
        """Sources should end at the next batch boundary (graceful stop)."""

    @property
    def cancelled(self) -> bool:
        """The job is being torn down; tasks exit without flushing."""

    def fail(self, exc: BaseException, task_id: str) -> None:
        """Record the job's failure (the first one wins) and cancel every task."""

    def task_opened(self, task_id: str) -> None:
        """The task has opened its functions."""

    def wait_all_opened(self) -> bool:
        """Block until every task has opened; ``False`` if the job failed meanwhile."""

    def task_finished(self, task_id: str) -> None:
        """The task has ended (in any way)."""


class CheckpointChannel(Protocol):
    """Where a task sends its snapshots (the job's checkpoint coordinator, or a proxy)."""

    def ack(self, task_id: str, checkpoint_id: int, snapshot: bytes) -> None:
        """The task took its snapshot for ``checkpoint_id``."""

    def final(self, task_id: str, snapshot: bytes) -> None:
        """The task ended cleanly; ``snapshot`` is its state after its last record."""

    def wait_aligned(self, checkpoint_id: int, downstream: Collection[str]) -> bool:
        """Block until the ``downstream`` tasks took their snapshots; ``False`` if the
        checkpoint was aborted."""


class InputChannel(Protocol):
    """A task's inbox."""

    capacity: int
    high_water: int

    def get(self, timeout: float | None = None) -> Any:
        """The next item, or ``None`` after ``timeout`` seconds."""

    @property
    def depth(self) -> int:
        """Items waiting now."""


@dataclass
class OperatorInstance:
    """A function of the chain with what ``open`` needs."""

    function: FunctionInstance
    context: RuntimeContext
    stats: OperatorStats
    state: KeyedStateBackend | None = None


class TaskLoop:
    """Runs one task to completion; see the module docstring."""

    def __init__(
        self,
        *,
        task_id: str,
        head: Head,
        body: FusedBody | None,
        routers: Sequence[Router],
        inbox: InputChannel | None,
        expected_eos: int,
        operators: Sequence[OperatorInstance],
        control: JobControl,
        stats: TaskStats,
        sample_interval_s: float,
        max_delay_s: float,
        checkpoints: CheckpointChannel | None = None,
        restore: bytes | None = None,
        downstream: Collection[str] = (),
        scheduling: Scheduling | None = None,
    ) -> None:
        self.task_id = task_id
        self.head = head
        self.body = body
        self.routers = list(routers)
        self.inbox = inbox
        self.expected_eos = expected_eos
        self.operators = list(operators)
        self.control = control
        self.stats = stats
        self._sample_interval = sample_interval_s
        self._next_sample = 0.0
        self._max_delay = max_delay_s
        self._per_record = 0.0  # smoothed seconds per record through head and body
        self._chunk = 1  # learn the cost on one record before committing to a whole batch
        self._processed_at_s = 0.0  # head + body time of the last delivery
        self.checkpoints = checkpoints
        self.downstream = tuple(downstream)  # the tasks this one sends to
        self._restore = restore
        self._due_checkpoint: int | None = None  # a source's next checkpoint, once triggered
        self._aligning: int | None = None  # the checkpoint whose barriers are arriving
        self._barriers = 0
        self.thread_scope: ThreadScope = contextlib.nullcontext
        self.scheduling = scheduling
        """The scheduling fields current in the task's threads (see :func:`build_task`)."""

    def attribution(self) -> Attribution:
        """Labels the lines this task's functions write with their operator instance."""
        ops = self.operators
        labels = [operator_label(o.stats.name, o.stats.instance, o.stats.parallelism) for o in ops]
        fallback = (
            " -> ".join(o.stats.name for o in ops[:-1]) + " -> " + labels[-1]
            if len(ops) > 1
            else (labels[0] if labels else self.task_id)
        )
        return Attribution(
            [
                (label, o.function.obj, o.function.call)
                for label, o in zip(labels, ops, strict=True)
            ],
            fallback,
        )

    # -- checkpoints ----------------------------------------------------------------------

    def request_checkpoint(self, checkpoint_id: int) -> None:
        """(Source tasks) Take checkpoint ``checkpoint_id`` at the next batch boundary."""
        self._due_checkpoint = checkpoint_id

    def snapshot(self, checkpoint_id: int) -> bytes:
        """The task's state now: its head's (a source's position) and its functions'."""
        state = {
            "head": self.head.snapshot_state(),
            "functions": [function_state(op.function.obj, checkpoint_id) for op in self.operators],
            "keyed": [None if op.state is None else op.state.snapshot() for op in self.operators],
        }
        try:
            return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise JobError(
                f"task {self.task_id}: checkpoint {checkpoint_id} failed: its state cannot be "
                f"pickled ({type(exc).__name__}: {exc}); keep picklable values in state"
            ) from exc

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        """Tell the task's functions that ``checkpoint_id`` is complete (they may commit)."""
        for op in self.operators:
            notify_complete(op.function.obj, checkpoint_id)

    def _checkpoint(self, checkpoint_id: int) -> None:
        """Snapshot, acknowledge, pass the barrier on, and hold output until every task
        this one sends to has its snapshot (the alignment)."""
        checkpoints = self.checkpoints
        assert checkpoints is not None, f"task {self.task_id}: a barrier without checkpoints"
        checkpoints.ack(self.task_id, checkpoint_id, self.snapshot(checkpoint_id))
        barrier = Barrier(checkpoint_id, self.task_id)
        for router in self.routers:
            router.broadcast(barrier)
        if self.downstream and not checkpoints.wait_aligned(checkpoint_id, self.downstream):
            raise Cancelled

    def _restored(self) -> list[Any]:
        """Apply the head's and the keyed state of the snapshot to restore from; return the
        functions' states, which each function gets as it opens."""
        if self._restore is None:
            return [NO_STATE] * len(self.operators)
        state = pickle.loads(self._restore)
        self.head.restore_state(state["head"])
        for op, keyed in zip(self.operators, state["keyed"], strict=True):
            if op.state is not None and keyed is not None:
                op.state.restore(keyed)
        return list(state["functions"])

    # -- running --------------------------------------------------------------------------

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """What every thread running the task's functions enters: the runtime's
        :attr:`thread_scope` and the task's scheduling fields (set once, not per record)."""
        with self.thread_scope(), scheduling_scope(self.scheduling):
            yield

    def run(self) -> None:
        """Open, process until the end of input, flush, signal end of stream, close."""
        with self.scope():
            self._run()

    def _run(self) -> None:
        stats, control = self.stats, self.control
        stats.status = "running"
        stats.started_at = perf_counter()
        opened: list[OperatorInstance] = []
        try:
            function_states = self._restored()
            for op, restored in zip(self.operators, function_states, strict=True):
                try:
                    with scheduling_scope(op.context.scheduling):
                        op.function.open(op.context, op.state, restored)
                except Exception as exc:
                    raise OperatorError(
                        op.stats.name, op.stats.instance, op.stats.parallelism, None, exc, "open"
                    ) from exc
                opened.append(op)
            control.task_opened(self.task_id)
            if isinstance(self.head, SourceHead):
                if not control.wait_all_opened():
                    raise Cancelled
                self._run_source(self.head)
            else:
                self._run_input()
            self._deliver(self.head.finish(), 0)
            if self.checkpoints is not None:
                self.checkpoints.final(self.task_id, self.snapshot(END_OF_INPUT))
            else:  # no restarts: nothing can replay this task's input, commit it now
                for op in self.operators:
                    commit_at_end(op.function.obj)
            for router in self.routers:
                router.end(self.task_id)
            stats.status = "finished"
        except Cancelled:
            stats.status = "cancelled"
        except BaseException as exc:
            stats.status = "failed"
            control.fail(exc, self.task_id)
        finally:
            for op in opened:
                try:
                    with scheduling_scope(op.context.scheduling):
                        op.function.close()
                except Exception as exc:
                    stats.status = "failed"
                    control.fail(
                        OperatorError(
                            op.stats.name,
                            op.stats.instance,
                            op.stats.parallelism,
                            None,
                            exc,
                            "close",
                        ),
                        self.task_id,
                    )
            stats.finished_at = perf_counter()
            control.task_finished(self.task_id)

    def _run_source(self, head: SourceHead) -> None:
        if not isinstance(head, BlockingSourceHead):
            self._source_loop(head)
            return
        flusher = PartialBatchFlusher(self, head)
        head.on_pending = flusher.schedule
        control = self.control
        head.interrupted = lambda: self._due_checkpoint is not None or control.stop_requested
        flusher.start()
        head.lock.acquire()
        try:
            self._source_loop(head)
        finally:
            head.ended = True
            head.lock.release()
            flusher.close()

    def _source_loop(self, head: SourceHead) -> None:
        control = self.control
        while True:
            if control.cancelled:
                raise Cancelled
            if control.stop_requested:
                return
            due = self._due_checkpoint
            if due is not None:
                self._due_checkpoint = None
                self._checkpoint(due)
            records, exhausted = head.next_batch()
            if records:
                self._ingest(None, records)
            if exhausted:
                return

    def _run_input(self) -> None:
        inbox, head, control = self.inbox, self.head, self.control
        assert inbox is not None, f"task {self.task_id} has no inbox"
        ended = 0
        while ended < self.expected_eos:
            deadline = head.deadline()
            if deadline is None:
                item = inbox.get()
            else:
                remaining = deadline - perf_counter()
                item = inbox.get(timeout=remaining) if remaining > 0 else None
            if item is None:
                self._deliver(head.on_timer(perf_counter()), 0)
            elif type(item) is tuple:
                input_index, records = item
                self._ingest(input_index, records)
            elif isinstance(item, EndOfStream):
                ended += 1
                if self._aligning is not None:
                    self._align(ended)
            elif isinstance(item, Barrier):
                if item.checkpoint_id != self._aligning:
                    self._aligning, self._barriers = item.checkpoint_id, 0
                self._barriers += 1
                self._align(ended)
            else:  # pragma: no cover - only the runtime puts items in inboxes
                raise AssertionError(f"task {self.task_id}: unexpected item {item!r}")
            if control.cancelled:
                raise Cancelled

    def _align(self, ended: int) -> None:
        """Take the checkpoint being aligned once every upstream task sent its barrier or
        ended (a sender waits after its barrier, so nothing of its arrives meanwhile)."""
        if self._barriers + ended >= self.expected_eos:
            checkpoint_id, self._aligning, self._barriers = self._aligning, None, 0
            assert checkpoint_id is not None
            self._checkpoint(checkpoint_id)

    def _ingest(self, input_index: int | None, records: Sequence[Any]) -> None:
        """Process input records (``input_index`` None: a source's own) chunk by chunk."""
        n = len(records)
        if n <= self._chunk:
            self._step(input_index, records)
            return
        done = 0
        while done < n:
            part = records[done : done + self._chunk]
            done += len(part)
            self._step(input_index, part)

    def _step(self, input_index: int | None, records: Sequence[Any]) -> None:
        start = perf_counter()
        head_out = records if input_index is None else self.head.process(input_index, records)
        self._deliver(head_out, len(records), start)
        # The cost estimate covers head and body only: waiting on a full downstream
        # channel (backpressure) must not make chunks smaller.
        per_record = self._processed_at_s / len(records) if records else 0.0
        self._per_record = (
            per_record if not self._per_record else (0.7 * self._per_record + 0.3 * per_record)
        )
        self._chunk = max(1, int(self._max_delay / max(self._per_record, 1e-9)))

    def _deliver(self, records: Sequence[Any], n_in: int, start: float | None = None) -> None:
        """Run ``records`` through the body and routers; account ``n_in`` input records."""
        self._processed_at_s = 0.0
        if not records and not n_in:
            return
        if start is None:
            start = perf_counter()
        out: Sequence[Any] = records
        if records and self.body is not None:
            timed = start >= self._next_sample
            out = self.body.process(records, timed=timed)
            if timed:
                self._next_sample = perf_counter() + self._sample_interval
        self._processed_at_s = perf_counter() - start
        if out:
            for router in self.routers:
                router.send(out)
        end = perf_counter()
        stats = self.stats
        stats.batches += 1
        stats.records_in += n_in
        stats.records_out += len(out) if self.routers else 0
        stats.busy_s += end - start
        if n_in:
            stats.latency.add((end - start) / n_in)


class PartialBatchFlusher:
    """Delivers a blocked source's partial batch once it has waited ``max_delay_s``.

    A source function or generator may block between records (waiting on a socket, a queue,
    a slow API). Without this, the records it already produced would wait for the next one,
    however long that takes. Like Flink's output flusher, this helper thread wakes when a
    partial batch is due (never while there is none), takes the source's lock (free while the
    user's code runs) and pushes the records through the task's chain and routers.
    """

    def __init__(self, loop: TaskLoop, head: BlockingSourceHead) -> None:
        self._loop = loop
        self._head = head
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._closed = False
        job = loop.operators[0].context.job_name if loop.operators else "job"
        self._thread = threading.Thread(
            target=self._run, name=f"sage-{job}-{loop.task_id}-flusher", daemon=True
        )

    def start(self) -> None:
        """Start the helper thread."""
        self._thread.start()

    def schedule(self, deadline: float) -> None:
        """A partial batch started; deliver it at ``deadline`` unless the source does first."""
        with self._cond:
            if self._deadline is None or deadline < self._deadline:
                self._deadline = deadline
                self._cond.notify()

    def close(self) -> None:
        """Stop the helper thread and wait for it."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _wait_until_due(self) -> bool:
        with self._cond:
            while not self._closed:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                remaining = self._deadline - perf_counter()
                if remaining <= 0:
                    self._deadline = None
                    return True
                self._cond.wait(remaining)
            return False

    def _run(self) -> None:
        with self._loop.scope():
            self._deliver_when_due()

    def _deliver_when_due(self) -> None:
        head, loop = self._head, self._loop
        while self._wait_until_due():
            if not head.lock.acquire(blocking=False):
                # The source is running, not blocked: it will deliver the batch itself, or
                # block again with records pending, so look again one delay later.
                self.schedule(perf_counter() + head.max_delay_s)
                continue
            try:
                if not head.ended:
                    batch = head.take_pending()
                    if batch:
                        loop._deliver(batch, len(batch))
            except Cancelled:
                return
            except BaseException as exc:
                loop.stats.status = "failed"
                loop.control.fail(exc, loop.task_id)
                return
            finally:
                head.lock.release()
