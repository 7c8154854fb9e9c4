"""The first operator of a task: it turns the task's input into records for the fused body.

* Source heads read records from a collection, an iterator or a source function, in batches.
* :class:`PassThroughHead` hands channel batches to the body (unwrapping keyed pairs when
  the first operator is not keyed).
* :class:`BatchHead` groups records into lists by size and by time, with a timer the task
  loop waits on (no polling).
* :class:`CoMapHead` and :class:`JoinHead` read several connected inputs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from time import perf_counter
from typing import Any

from sage.common.core.functions.source_function import StopSignal
from sage.common.core.state import KeyedStateBackend
from sage.common.errors import OperatorError
from sage.kernel.runtime.error_policy import ErrorHandler
from sage.kernel.runtime.metrics import OperatorStats

__all__ = [
    "BatchHead",
    "BlockingSourceHead",
    "CoMapHead",
    "CollectionSource",
    "FunctionSource",
    "Head",
    "IteratorSource",
    "JoinHead",
    "PassThroughHead",
    "SourceHead",
]


class Head:
    """Reads a task's input; the default passes batches through unchanged."""

    def process(self, input_index: int, records: Sequence[Any]) -> Sequence[Any]:
        """Records for the body, given a batch that arrived on input ``input_index``."""
        return records

    def finish(self) -> list[Any]:
        """Records to emit at end of stream (buffered ones)."""
        return []

    def deadline(self) -> float | None:
        """``perf_counter`` time at which :meth:`on_timer` must run, or ``None``."""
        return None

    def on_timer(self, now: float) -> list[Any]:
        """Records released because time passed."""
        return []

    def snapshot_state(self) -> Any:
        """What a checkpoint saves of this head (a source's position, buffered records)."""
        return None

    def restore_state(self, state: Any) -> None:
        """Take back what :meth:`snapshot_state` gave (before the task runs)."""


def _unwrap(records: Sequence[Any]) -> list[Any]:
    return [value for _, value in records]


class PassThroughHead(Head):
    """Feeds channel batches to the body; strips keys from inputs the body does not key on."""

    def __init__(self, unwrap: Sequence[bool]) -> None:
        self._unwrap = tuple(unwrap)

    def process(self, input_index: int, records: Sequence[Any]) -> Sequence[Any]:
        return _unwrap(records) if self._unwrap[input_index] else records


class BatchHead(Head):
    """``.batch(size, timeout_s)``: emits lists of up to ``size`` records.

    A list is emitted when ``size`` records are buffered, when ``timeout_s`` has passed since
    the oldest buffered record arrived (even if no new record comes), and at end of stream.
    """

    def __init__(
        self, size: int, timeout_s: float | None, stats: OperatorStats, unwrap: Sequence[bool]
    ) -> None:
        self.size = size
        self.timeout_s = timeout_s
        self.stats = stats
        self._unwrap = tuple(unwrap)
        self._buffer: list[Any] = []
        self._deadline: float | None = None

    def process(self, input_index: int, records: Sequence[Any]) -> Sequence[Any]:
        if self._unwrap[input_index]:
            records = _unwrap(records)
        self.stats.records_in += len(records)
        if not self._buffer and records and self.timeout_s is not None:
            self._deadline = perf_counter() + self.timeout_s
        self._buffer.extend(records)
        out: list[Any] = []
        size = self.size
        while len(self._buffer) >= size:
            out.append(self._buffer[:size])
            del self._buffer[:size]
        if out:
            # the remainder arrived with this batch: its clock starts now
            self._deadline = (
                perf_counter() + self.timeout_s if self._buffer and self.timeout_s else None
            )
        self.stats.records_out += len(out)
        return out

    def deadline(self) -> float | None:
        return self._deadline

    def on_timer(self, now: float) -> list[Any]:
        if self._deadline is None or now < self._deadline:
            return []
        return self.finish()

    def finish(self) -> list[Any]:
        self._deadline = None
        if not self._buffer:
            return []
        out, self._buffer = [self._buffer], []
        self.stats.records_out += 1
        return out

    def snapshot_state(self) -> Any:
        return list(self._buffer)

    def restore_state(self, state: Any) -> None:
        self._buffer = list(state)
        if self._buffer and self.timeout_s is not None:
            self._deadline = perf_counter() + self.timeout_s


class CoMapHead(Head):
    """``connect(...).comap(f)``: records of input *i* go through ``f.map<i>``; ``None`` drops."""

    def __init__(
        self,
        calls: Sequence[Callable[[Any], Any]],
        stats: OperatorStats,
        errors: ErrorHandler,
        keyed_inputs: Sequence[bool],
        state: KeyedStateBackend | None,
    ) -> None:
        self.calls = tuple(calls)
        self.stats = stats
        self.errors = errors
        self._keyed = tuple(keyed_inputs)
        self._state = state

    def process(self, input_index: int, records: Sequence[Any]) -> Sequence[Any]:
        call = self.calls[input_index]
        keyed = self._keyed[input_index]
        state = self._state
        out: list[Any] = []
        start = perf_counter()
        for item in records:
            record = item
            try:
                if keyed:
                    key, record = item
                    if state is not None:
                        state.current_key = key
                result = call(record)
            except Exception as exc:
                self.errors.handle(exc, record)
                continue
            if result is not None:
                out.append(result)
        _account(self.stats, len(records), len(out), start)
        return out


class JoinHead(Head):
    """``a.keyby(k).connect(b.keyby(k)).join(f)``: ``f(payload, key, tag)`` per record."""

    def __init__(
        self,
        call: Callable[[Any, Any, int], Iterable[Any] | None],
        stats: OperatorStats,
        errors: ErrorHandler,
        state: KeyedStateBackend,
    ) -> None:
        self.call = call
        self.stats = stats
        self.errors = errors
        self._state = state

    def process(self, input_index: int, records: Sequence[Any]) -> Sequence[Any]:
        call, state = self.call, self._state
        out: list[Any] = []
        start = perf_counter()
        for key, payload in records:
            state.current_key = key
            try:
                result = call(payload, key, input_index)
                if result is not None:
                    out.extend(result)
            except Exception as exc:
                self.errors.handle(exc, payload)
        _account(self.stats, len(records), len(out), start)
        return out


def _account(stats: OperatorStats, n_in: int, n_out: int, start: float) -> None:
    stats.records_in += n_in
    stats.records_out += n_out
    if n_in:
        stats.latency.add((perf_counter() - start) / n_in)


class SourceHead(Head):
    """A head that produces records instead of reading a channel."""

    def __init__(self, stats: OperatorStats) -> None:
        self.stats = stats

    def next_batch(self) -> tuple[Sequence[Any], bool]:
        """The next records and whether the source is exhausted.

        Raises:
            OperatorError: the source's own code raised (a source cannot skip: it is ended).
        """
        start = perf_counter()
        try:
            records, exhausted = self._read()
        except Exception as exc:
            stats = self.stats
            raise OperatorError(
                stats.name, stats.instance, stats.parallelism, None, exc, phase="read"
            ) from exc
        if records:
            stats = self.stats
            stats.records_out += len(records)
            stats.latency.add((perf_counter() - start) / len(records))
        return records, exhausted

    def _read(self) -> tuple[Sequence[Any], bool]:
        raise NotImplementedError


class CollectionSource(SourceHead):
    """A sized collection; parallel instance *i* of *p* reads items ``i, i+p, i+2p, ...``.

    Lists, tuples and ranges are handed out as slices (a ``range`` slice is itself a lazy
    ``range``): no per-record work happens until the chain iterates the batch.
    """

    def __init__(
        self,
        data: Iterable[Any],
        index: int,
        parallelism: int,
        batch_size: int,
        stats: OperatorStats,
    ) -> None:
        super().__init__(stats)
        self._batch_size = batch_size
        self._seq: Sequence[Any] | None = None
        self._pos = 0  # records handed out: the position a checkpoint saves
        if type(data) in (list, tuple, range):
            seq: Sequence[Any] = data  # type: ignore[assignment]
            self._seq = seq if parallelism == 1 else seq[index::parallelism]
        elif parallelism == 1:
            self._it: Iterator[Any] = iter(data)
        else:
            self._it = islice(iter(data), index, None, parallelism)

    def _read(self) -> tuple[Sequence[Any], bool]:
        size = self._batch_size
        if self._seq is not None:
            start = self._pos
            self._pos = start + size
            return self._seq[start : start + size], self._pos >= len(self._seq)
        records = list(islice(self._it, size))
        self._pos += len(records)
        return records, len(records) < size

    def snapshot_state(self) -> Any:
        return self._pos

    def restore_state(self, state: Any) -> None:
        """Resume after the first ``state`` records (the collection is read again)."""
        self._pos = int(state)
        if self._seq is None:
            for _ in islice(self._it, self._pos):
                pass


def _never() -> bool:
    return False


class BlockingSourceHead(SourceHead):
    """A source whose code may block between records: a generator or a source function.

    Records are gathered into a pending batch. The task thread holds :attr:`lock` while it
    works and releases it only while the user's code runs, so when the source blocks with a
    partial batch, the task's flusher can take the lock and deliver the pending records
    (:meth:`take_pending`) instead of leaving them stranded until the next record arrives.
    :attr:`on_pending` is told when a new pending batch starts and when it must leave.

    Args:
        fetch: Returns the next record (may block).
        none_means: What a ``None`` from ``fetch`` means: ``"end"`` (BatchFunction),
            ``"skip"`` (SourceFunction: nothing this time) or ``"record"`` (iterators).
        stop_iteration_ends: ``StopIteration`` from ``fetch`` ends the stream (iterators).
        batch_size: Records per batch at most.
        max_delay_s: Longest a partial batch waits.
        stats: The source's metrics.
    """

    _CLOCK_EVERY = 64  # records between clock reads; the flusher bounds the delay anyway

    def __init__(
        self,
        fetch: Callable[[], Any],
        *,
        none_means: str,
        stop_iteration_ends: bool,
        batch_size: int,
        max_delay_s: float,
        stats: OperatorStats,
    ) -> None:
        super().__init__(stats)
        self._fetch = fetch
        self._none_means = none_means
        self._stop_iteration_ends = stop_iteration_ends
        self._batch_size = batch_size
        self.max_delay_s = max_delay_s
        self.lock = threading.Lock()
        self.on_pending: Callable[[float], None] | None = None
        self.ended = False
        self.interrupted: Callable[[], bool] = _never
        """Whether the task has something to do between batches (a checkpoint is due, the
        job is stopping): tested when a source function returns ``None``, so an idle
        never-ending source returns at once instead of after up to 64 more empty polls."""
        self._pending: list[Any] = []

    def take_pending(self) -> list[Any]:
        """Remove and return the partial batch (the caller holds :attr:`lock`)."""
        pending, self._pending = self._pending, []
        if pending:
            self.stats.records_out += len(pending)
        return pending

    def _read(self) -> tuple[list[Any], bool]:
        lock, fetch, none_means = self.lock, self._fetch, self._none_means
        size, every = self._batch_size, self._CLOCK_EVERY
        deadline = perf_counter() + self.max_delay_s
        calls = 0
        while True:
            calls += 1
            lock.release()
            try:
                record = fetch()
            except StopIteration:
                if not self._stop_iteration_ends:
                    raise
                break
            finally:
                lock.acquire()
            if record is None:
                if none_means == "end":
                    break
                if none_means == "skip":
                    if self.interrupted() or (calls % every == 0 and perf_counter() >= deadline):
                        return self._take(), False
                    continue
            elif record is StopSignal or type(record) is StopSignal:
                break
            pending = self._pending  # re-read: the flusher may have taken the last batch
            if not pending and self.on_pending is not None:
                self.on_pending(perf_counter() + self.max_delay_s)
            pending.append(record)
            if len(pending) >= size or (calls % every == 0 and perf_counter() >= deadline):
                return self._take(), False
        self.ended = True
        return self._take(), True

    def _take(self) -> list[Any]:
        pending, self._pending = self._pending, []
        return pending


class IteratorSource(BlockingSourceHead):
    """A one-shot iterable (generator, file, iterator); ``None`` items are records."""

    def __init__(
        self, data: Iterable[Any], batch_size: int, max_delay_s: float, stats: OperatorStats
    ) -> None:
        super().__init__(
            iter(data).__next__,
            none_means="record",
            stop_iteration_ends=True,
            batch_size=batch_size,
            max_delay_s=max_delay_s,
            stats=stats,
        )


class FunctionSource(BlockingSourceHead):
    """``SourceFunction.execute()`` until it returns ``StopSignal`` (``None`` emits nothing),
    or ``BatchFunction.execute()`` until it returns ``None``.
    """

    def __init__(
        self,
        call: Callable[[], Any],
        *,
        none_ends: bool,
        batch_size: int,
        max_delay_s: float,
        stats: OperatorStats,
    ) -> None:
        super().__init__(
            call,
            none_means="end" if none_ends else "skip",
            stop_iteration_ends=False,
            batch_size=batch_size,
            max_delay_s=max_delay_s,
            stats=stats,
        )
