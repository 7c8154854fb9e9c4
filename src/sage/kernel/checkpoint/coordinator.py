"""The checkpoint coordinator: triggers aligned checkpoints and collects the snapshots.

As in Flink's aligned checkpoints, every ``interval_s`` the coordinator asks each running
source task to take checkpoint *n* at its next batch boundary. A source saves its position
and state, acknowledges, and sends a :class:`~sage.kernel.runtime.channel.Barrier` on every
output channel. A task that has the barrier (or the end of stream) from every upstream task
has processed exactly the records sent before the barriers: it saves its state, acknowledges
and forwards the barrier. Each task then waits until every task it sends to has taken its
snapshot before it sends anything more, so no record sent after a barrier can reach a task
that has not yet taken its snapshot (the alignment; Flink holds such records back at the
receiver instead). A task that ends gives its final state, which stands for
it in every later checkpoint.

When every task has acknowledged, the checkpoint is saved (:class:`.store.CheckpointStore`)
and functions are told (``notify_checkpoint_complete``), which is where transactional sinks
commit. A restart gives every task its snapshot of the latest completed checkpoint.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Iterable
from functools import partial

from sage.kernel.checkpoint.state import END_OF_INPUT
from sage.kernel.checkpoint.store import Checkpoint, CheckpointStore

__all__ = ["CheckpointCoordinator"]

logger = logging.getLogger(__name__)


class CheckpointCoordinator:
    """Runs the checkpoints of one job (thread-safe; see the module docstring).

    Args:
        task_ids: Every task of the job.
        store: Where completed checkpoints go.
        interval_s: Seconds from the end of one checkpoint to the start of the next
            (``None``: no periodic checkpoints; the job's final states are still collected,
            so that a restarting job's sinks commit only when the whole job has ended).
        trigger: Asks the running source tasks to take checkpoint *n* (``trigger(n)``).
        notify: Tells every task's functions that checkpoint *n* is complete.
    """

    def __init__(
        self,
        task_ids: Iterable[str],
        store: CheckpointStore,
        interval_s: float | None,
        trigger: Callable[[int], None],
        notify: Callable[[int], None],
    ) -> None:
        self.task_ids = frozenset(task_ids)
        self.store = store
        self.interval_s = interval_s
        self._trigger = trigger
        self._notify = notify
        self._cond = threading.Condition()
        self._next_id = 1
        self._pending: int | None = None  # the checkpoint being taken
        self._acks: dict[str, bytes] = {}
        self._finals: dict[str, bytes] = {}
        self._completed = 0  # id of the latest complete checkpoint
        self._aborted = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self.completed_count = 0

    # -- the job's side ---------------------------------------------------------------

    def start(self, name: str) -> None:
        """Start taking checkpoints (a background thread)."""
        with self._cond:
            self._aborted = False
            self._acks.clear()
            self._finals.clear()
            self._pending = None
        if self.interval_s is None:
            return
        self._thread = threading.Thread(
            target=self._run, name=f"sage-{name}-checkpoints", daemon=True
        )
        self._thread.start()

    def abort(self) -> None:
        """The attempt failed or was cancelled: drop the checkpoint in progress, stop
        triggering, and wake every task waiting on a checkpoint (they see ``False``)."""
        with self._cond:
            self._aborted = True
            self._pending = None
            self._cond.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def finish(self) -> None:
        """Every task ended cleanly: save their final states and commit (``END_OF_INPUT``)."""
        self.abort()
        with self._cond:
            snapshots = dict(self._finals)
            next_id = self._next_id
            self._next_id += 1
        self.store.save(Checkpoint(next_id, snapshots))
        self._notify(END_OF_INPUT)

    # -- the tasks' side --------------------------------------------------------------

    def ack(self, task_id: str, checkpoint_id: int, snapshot: bytes) -> None:
        """Task ``task_id`` took its snapshot for ``checkpoint_id``."""
        with self._cond:
            if checkpoint_id == self._pending:
                self._acks[task_id] = snapshot
                self._complete_if_done()
                self._cond.notify_all()  # senders waiting for this task, or for completion

    def final(self, task_id: str, snapshot: bytes) -> None:
        """Task ``task_id`` ended cleanly; ``snapshot`` is its state after its last record."""
        with self._cond:
            self._finals[task_id] = snapshot
            if self._pending is not None:
                self._complete_if_done()
            self._cond.notify_all()

    def wait_aligned(self, checkpoint_id: int, downstream: Collection[str]) -> bool:
        """Block until every task in ``downstream`` has its snapshot for ``checkpoint_id``
        (or has ended, or the checkpoint is complete); ``False`` if it was aborted."""
        with self._cond:
            while not self._aborted and not self._aligned(checkpoint_id, downstream):
                self._cond.wait()
            return not self._aborted

    def _aligned(self, checkpoint_id: int, downstream: Collection[str]) -> bool:
        if self._completed >= checkpoint_id:
            return True
        if self._pending != checkpoint_id:
            return False
        answered = self._acks.keys() | self._finals.keys()
        return all(task in answered for task in downstream)

    # -- internals ------------------------------------------------------------------

    def _complete_if_done(self) -> None:
        """Under the lock: finish the pending checkpoint once every task has answered (the
        caller wakes the waiters)."""
        if self.task_ids <= self._acks.keys() | self._finals.keys():
            self._completed = self._pending or self._completed
            self._pending = None

    def _answered(self, checkpoint_id: int) -> bool:
        """Under the lock: whether ``checkpoint_id`` completed or the attempt was aborted."""
        return self._aborted or self._completed >= checkpoint_id

    def _run(self) -> None:
        interval = self.interval_s
        while True:
            with self._cond:
                # The interval is the point of this wait, not a guess at an event.
                self._cond.wait_for(lambda: self._aborted, timeout=interval)
                if self._aborted or self.task_ids <= self._finals.keys():
                    return
                checkpoint_id = self._next_id
                self._next_id += 1
                self._pending = checkpoint_id
                self._acks = {}
            try:
                self._trigger(checkpoint_id)
            except Exception:
                logger.exception("checkpoint %d: triggering the sources failed", checkpoint_id)
                return
            with self._cond:
                self._cond.wait_for(partial(self._answered, checkpoint_id))
                if self._completed < checkpoint_id:  # aborted
                    return
                snapshots = {t: self._acks.get(t) or self._finals[t] for t in self.task_ids}
            self.store.save(Checkpoint(checkpoint_id, snapshots))
            self.completed_count += 1
            try:
                self._notify(checkpoint_id)
            except Exception:
                logger.exception("checkpoint %d: notifying the functions failed", checkpoint_id)
