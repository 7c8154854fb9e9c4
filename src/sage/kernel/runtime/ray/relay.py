"""The driver's side of what a Ray job's task hosts hand back while it runs: the lines its
functions write, and the records its ``collect()`` operators gather.

Both are long-polls (the host answers once it has something, or after :data:`POLL_S`), so
nothing polls on a clock: :class:`OutputRelay` keeps one ``output`` call open per host on a
thread of its own and hands each batch of lines to the job's output sink;
:class:`CollectRelay` keeps one ``collected`` call open per collecting host while someone
(the JobManager) asks it for records, and hands back whatever arrived.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from sage.kernel.runtime.collect import CollectedChunk
from sage.kernel.runtime.output import OutputSink

__all__ = ["POLL_S", "CollectRelay", "OutputRelay"]

logger = logging.getLogger(__name__)

POLL_S = 10.0
"""Longest a host holds a long-poll open before it answers with nothing (then it is asked
again): bounds how long a relay takes to notice a host that went away without a word."""


class OutputRelay:
    """Takes each host's lines as they are written and hands them to ``sink``.

    Args:
        hosts: The hosts of the attempt, by task id.
        key: The attempt's key (the job as the hosts know it).
        sink: Receives each batch of lines.
        name: The job's name (for the thread).
    """

    def __init__(self, hosts: Mapping[str, Any], key: str, sink: OutputSink, name: str) -> None:
        self._hosts = dict(hosts)
        self._key = key
        self._sink = sink
        self._thread = threading.Thread(
            target=self._run, name=f"sage-{name}-ray-output", daemon=True
        )

    def start(self) -> None:
        """Start relaying."""
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until every host said its task ended and its lines were taken; ``False`` if
        ``timeout`` passed first."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        import ray

        pending = {h.output.remote(self._key, POLL_S): t for t, h in self._hosts.items()}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                task_id = pending.pop(ref)
                try:
                    lines = ray.get(ref)
                except ray.exceptions.RayError as exc:  # the host died: its lines with it
                    logger.debug("task %s: no more output (%s)", task_id, exc)
                    continue
                if lines is None:
                    continue
                if lines:
                    try:
                        self._sink(lines)
                    except Exception:  # the sink's problem must not stop the others' lines
                        logger.exception("task %s: handing on its output failed", task_id)
                host = self._hosts[task_id]
                pending[host.output.remote(self._key, POLL_S)] = task_id


class CollectRelay:
    """Takes the records of a job's collecting hosts for whoever asks (see :meth:`take`).

    Args:
        hosts: The hosts of the tasks that collect, by task id.
        key: The attempt's key.
    """

    def __init__(self, hosts: Mapping[str, Any], key: str) -> None:
        self._hosts = dict(hosts)
        self._key = key
        self._open = set(self._hosts)  # hosts that may still have records
        self._pending: dict[Any, str] = {}  # the one call open per host
        self._lock = threading.Lock()

    def take(self, max_records: int, timeout: float | None) -> list[CollectedChunk] | None:
        """Records that arrived, once any did: up to ``max_records`` per host; ``[]`` after
        ``timeout`` seconds without any; ``None`` once every collecting host ended and was
        emptied (or went away)."""
        import ray

        with self._lock:
            for task_id in self._open - set(self._pending.values()):
                handle = self._hosts[task_id]
                self._pending[handle.collected.remote(self._key, max_records, POLL_S)] = task_id
            if not self._pending:
                return None
            refs = list(self._pending)
            done, rest = ray.wait(refs, num_returns=1, timeout=timeout)
            if done and rest:  # take every answer already there
                more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                done += more
            chunks: list[CollectedChunk] = []
            for ref in done:
                task_id = self._pending.pop(ref)
                try:
                    answer = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    logger.warning("task %s: its collected records are lost: %s", task_id, exc)
                    answer = None
                if answer is None:
                    self._open.discard(task_id)
                else:
                    chunks += answer
            if not chunks and not self._open and not self._pending:
                return None
            return chunks
