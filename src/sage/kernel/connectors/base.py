"""``ConnectorSource``: the small interface of never-ending sources with checkpointed offsets.

A connector says where it is (:meth:`~ConnectorSource.position`), how to go on from there
(:meth:`~ConnectorSource.connect`), and what came next (:meth:`~ConnectorSource.poll`).
This base class does the rest: it hands the polled records out one per ``execute()``, puts
the position and the records polled but not yet handed out into the job's checkpoints, and
tells the connector when a checkpoint holding a position is complete
(:meth:`~ConnectorSource.commit`: where a Kafka consumer commits its offsets). After a
restart the connector resumes from the position of the last complete checkpoint, so with
the job's aligned checkpoints every record counts exactly once.

A Kafka source on ``confluent_kafka`` is a few dozen lines::

    class KafkaSource(ConnectorSource):
        def __init__(self, topic, servers, **kwargs):
            super().__init__(**kwargs)
            self.topic, self.servers = topic, servers

        def connect(self, position):
            from confluent_kafka import Consumer, TopicPartition
            self.consumer = Consumer({"bootstrap.servers": self.servers,
                                      "group.id": "sage", "enable.auto.commit": False})
            self.offsets = dict(position or {})   # partition -> next offset
            parts = self.consumer.list_topics(self.topic).topics[self.topic].partitions
            self.consumer.assign([TopicPartition(self.topic, p, self.offsets.get(p, 0))
                                  for p in parts])

        def poll(self, timeout):
            messages = self.consumer.consume(num_messages=500, timeout=timeout)
            for m in messages:
                self.offsets[m.partition()] = m.offset() + 1
            return [m.value() for m in messages if m.error() is None]

        def position(self):
            return dict(self.offsets)

        def commit(self, position):
            from confluent_kafka import TopicPartition
            self.consumer.commit(offsets=[TopicPartition(self.topic, p, o)
                                          for p, o in position.items()], asynchronous=True)

        def disconnect(self):
            self.consumer.close()
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from sage.common.core.functions.source_function import SourceFunction, StopSignal

__all__ = ["ConnectorSource"]


class ConnectorSource(SourceFunction):
    """Base class of sources that follow something without end (see the module docstring).

    Subclasses implement :meth:`connect`, :meth:`poll` and :meth:`position`, and may
    implement :meth:`commit`, :meth:`disconnect` and :meth:`finished`. Use it as any source
    function: ``env.from_source(MySource, *args)``.

    Attributes:
        poll_timeout_s: Longest one :meth:`poll` waits for records. An idle source returns
            to the runtime this often, so checkpoints and stop requests are never held up
            longer than this.
    """

    poll_timeout_s: float = 0.05

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._records: deque[Any] = deque()
        self._resume_from: Any = None
        self._commit_lock = threading.Lock()
        self._positions: dict[int, Any] = {}  # checkpoint id -> the position it holds

    # -- what a connector implements ------------------------------------------------------

    def connect(self, position: Any) -> None:
        """Start reading after ``position`` (from :meth:`position` in the last complete
        checkpoint), or from the beginning when it is ``None`` (a fresh job)."""
        raise NotImplementedError(f"{type(self).__name__}.connect(position) is not implemented")

    def poll(self, timeout: float) -> list[Any]:
        """The records that came next, waiting up to ``timeout`` seconds for the first one
        (``[]``: none yet). Block on the event itself (a socket, a queue, a file watcher),
        never sleep a fixed time."""
        raise NotImplementedError(f"{type(self).__name__}.poll(timeout) is not implemented")

    def position(self) -> Any:
        """Where reading goes on after everything :meth:`poll` returned so far: any
        picklable value (an offset, a dict of them)."""
        raise NotImplementedError(f"{type(self).__name__}.position() is not implemented")

    def commit(self, position: Any) -> None:
        """A checkpoint holding ``position`` is complete: records up to it will never be
        read again (acknowledge them upstream here). Called from another thread than
        :meth:`poll`."""

    def disconnect(self) -> None:
        """Release what :meth:`connect` took (called when the task ends, also on failure)."""

    def finished(self) -> bool:
        """Whether there will never be another record (a bounded connector); the stream
        ends once the records polled so far are handed out."""
        return False

    # -- the source function ------------------------------------------------------------

    def open(self, context: Any) -> None:
        self.connect(self._resume_from)

    def execute(self) -> Any:
        records = self._records
        if not records:
            polled = self.poll(self.poll_timeout_s)
            if not polled:
                return StopSignal("connector finished") if self.finished() else None
            records.extend(polled)
        return records.popleft()

    def close(self) -> None:
        self.disconnect()

    # -- checkpoints ------------------------------------------------------------------------

    def get_state(self, checkpoint_id: int) -> dict[str, Any]:
        """The position and the records polled but not yet handed out."""
        position = self.position()
        with self._commit_lock:
            self._positions[checkpoint_id] = position
        return {"position": position, "records": list(self._records)}

    def restore_state(self, state: dict[str, Any]) -> None:
        """Resume after a restart: hand out the saved records first, then go on from the
        saved position (:meth:`open` passes it to :meth:`connect`)."""
        self._resume_from = state["position"]
        self._records = deque(state["records"])

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        """Commit the position the checkpoint holds (older ones are superseded)."""
        with self._commit_lock:
            position = self._positions.pop(checkpoint_id, None)
            for older in [c for c in self._positions if c < checkpoint_id]:
                del self._positions[older]
        if position is not None:
            self.commit(position)
