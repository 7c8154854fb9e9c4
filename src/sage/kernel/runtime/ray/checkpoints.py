"""Checkpoints on Ray: the job's :class:`~sage.kernel.checkpoint.coordinator.CheckpointCoordinator`
in an actor, and the tasks' proxy to it.

The coordinator runs in an actor on the driver's node (where ``checkpoint_dir`` is), with a
thread per caller so tasks waiting for a checkpoint to complete never hold up the acks that
complete it. It triggers the sources and tells every task of a completed checkpoint through
the hosts of the current attempt (:meth:`CoordinatorActor.start`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import ray

from sage.kernel.checkpoint.coordinator import CheckpointCoordinator
from sage.kernel.checkpoint.store import Checkpoint, CheckpointStore

__all__ = ["CoordinatorActor", "RemoteCheckpoints", "start_coordinator"]

logger = logging.getLogger(__name__)


class CoordinatorActor:
    """Holds one job's coordinator; every method may be called concurrently."""

    def __init__(
        self, job: str, task_ids: Sequence[str], directory: Path | None, interval_s: float | None
    ) -> None:
        self._job = job
        self._key = ""
        self._sources: list[Any] = []
        self._hosts: list[Any] = []
        self._coordinator = CheckpointCoordinator(
            task_ids,
            CheckpointStore(directory, job),
            interval_s,
            trigger=self._trigger,
            notify=self._notify,
        )

    def start(self, key: str, sources: list[Any], hosts: list[Any]) -> None:
        """A new attempt runs on ``hosts`` (calls name it ``key``): start checkpointing."""
        self._key, self._sources, self._hosts = key, sources, hosts
        self._coordinator.start(self._job)

    def abort(self) -> None:
        """The attempt failed: drop the checkpoint in progress and wake waiting tasks."""
        self._coordinator.abort()

    def finish(self) -> None:
        """Every task ended cleanly: save their final states and let the sinks commit."""
        self._coordinator.finish()

    def ack(self, task_id: str, checkpoint_id: int, snapshot: bytes) -> None:
        """See :meth:`CheckpointCoordinator.ack`."""
        self._coordinator.ack(task_id, checkpoint_id, snapshot)

    def final(self, task_id: str, snapshot: bytes) -> None:
        """See :meth:`CheckpointCoordinator.final`."""
        self._coordinator.final(task_id, snapshot)

    def wait_aligned(self, checkpoint_id: int, downstream: list[str]) -> bool:
        """See :meth:`CheckpointCoordinator.wait_aligned`."""
        return self._coordinator.wait_aligned(checkpoint_id, downstream)

    def latest(self) -> Checkpoint | None:
        """The latest complete checkpoint (what a restart resumes from)."""
        return self._coordinator.store.latest()

    def completed(self) -> int:
        """How many checkpoints completed."""
        return self._coordinator.completed_count

    def _trigger(self, checkpoint_id: int) -> None:
        for handle in self._sources:
            handle.trigger_checkpoint.remote(self._key, checkpoint_id)

    def _notify(self, checkpoint_id: int) -> None:
        refs = [h.notify_checkpoint.remote(self._key, checkpoint_id) for h in self._hosts]
        for ref in refs:
            # a host that died is restarted from this checkpoint, which commits for it
            with contextlib.suppress(ray.exceptions.RayActorError):
                ray.get(ref)


def start_coordinator(
    job: str, task_ids: Sequence[str], directory: Path | None, interval_s: float | None
) -> Any:
    """Start the job's coordinator actor on this (the driver's) node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    actor: Any = ray.remote(num_cpus=0, max_concurrency=len(task_ids) + 8)(CoordinatorActor)
    return actor.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)
    ).remote(job, list(task_ids), directory, interval_s)


class RemoteCheckpoints:
    """A task's :class:`~sage.kernel.runtime.task.CheckpointChannel` to the coordinator actor."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def ack(self, task_id: str, checkpoint_id: int, snapshot: bytes) -> None:
        ray.get(self._handle.ack.remote(task_id, checkpoint_id, snapshot))

    def final(self, task_id: str, snapshot: bytes) -> None:
        ray.get(self._handle.final.remote(task_id, snapshot))

    def wait_aligned(self, checkpoint_id: int, downstream: Collection[str]) -> bool:
        answer: bool = ray.get(self._handle.wait_aligned.remote(checkpoint_id, list(downstream)))
        return answer
