"""``stream.collect()``: a pipeline's records, back in the submitting process.

What Flink's ``executeAndCollect()``, Spark's ``collect()`` and Ray Data's ``take_all()`` do,
on both environments: ``collect()`` ends the stream in a collecting operator and returns a
:class:`CollectResult`, which holds the records once ``submit()`` returns. On a
``LocalEnvironment`` the operator appends straight to it; on a ``RemoteEnvironment`` the
records travel from the cluster through the JobManager while ``submit()`` (or ``wait()``)
waits, with backpressure: a job whose submitter has not taken its records yet waits for it.

The driver keeps every record in memory, so a collect has a cap (``max_records``); a job
that would pass it fails with :class:`~sage.common.errors.CollectLimitError` (whatever its
``on_error`` mode) rather than hand back a truncated result.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

from sage.common.core.functions.sink_function import SinkFunction
from sage.common.errors import CollectLimitError, JobError, PlanError

if TYPE_CHECKING:
    from sage.kernel.runtime.collect import CollectTarget

__all__ = [
    "DEFAULT_MAX_RECORDS",
    "CollectResult",
    "CollectSink",
    "ListCollector",
    "check_max_records",
]

DEFAULT_MAX_RECORDS = 1_000_000
"""Records one ``collect()`` accepts unless told otherwise (Spark caps results at 1 GiB)."""


class ListCollector:
    """Where a ``LocalEnvironment``'s collect puts its records: the result's list (a
    ``CollectTarget`` of :mod:`sage.kernel.runtime.collect`)."""

    def __init__(self, records: list[Any]) -> None:
        self.put = records.append

    def close(self) -> None:
        """Nothing to flush."""


def check_max_records(max_records: Any) -> int:
    """``max_records`` if it is an int >= 1, else a :class:`PlanError` saying what to pass."""
    if isinstance(max_records, bool) or not isinstance(max_records, int) or max_records < 1:
        raise PlanError(
            f"collect: max_records={max_records!r} is invalid; use an integer >= 1 (the most "
            f"records the driver may hold; default {DEFAULT_MAX_RECORDS:,})"
        )
    return max_records


class CollectSink(SinkFunction):
    """The operator :meth:`DataStream.collect` adds: counts each record against the cap and
    hands it to the collector the runtime attached with :meth:`attach`.

    Always one instance (parallelism 1), like Flink's collect sink, so the count is the
    job's and the records keep the order they arrive in.

    Args:
        collector_id: Which :class:`CollectResult` of the environment the records fill.
        max_records: The cap.
    """

    def __init__(self, collector_id: str, max_records: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.collector_id = collector_id
        self.max_records = max_records
        self._target: CollectTarget | None = None
        self._count = 0

    def attach(self, target: CollectTarget) -> None:
        """Deliver to ``target`` (the runtime calls this before ``open``)."""
        self._target = target
        self._count = 0

    def execute(self, data: Any) -> None:
        self._count += 1
        if self._count > self.max_records:
            operator = self.ctx.operator_name if self.ctx is not None else "collect"
            raise CollectLimitError(
                f"{operator}: more than max_records={self.max_records:,} records reached "
                "collect(); the job stops rather than return a truncated result. Raise the cap "
                "with "
                ".collect(max_records=N) (the driver holds every record in memory), or write "
                "the records to a file sink and read them from there"
            )
        target = self._target
        if target is None:
            raise JobError(
                f"collect {self.collector_id!r} runs without a collector: the runtime did not "
                "attach one; run the pipeline with env.submit()"
            )
        target.put(data)

    def close(self) -> None:
        if self._target is not None:
            self._target.close()

    def __getstate__(self) -> dict[str, Any]:
        # The collector belongs to the process that runs the job: it never travels.
        state = dict(self.__dict__)
        state["_target"] = None
        return state


class CollectResult(Sequence[Any]):
    """The records of one ``collect()``: a read-only sequence, filled by the job.

    After ``env.submit()`` returns (or ``env.wait()`` after ``submit(autostop=False)``), it
    holds every record the collect received, in the order they arrived; while the job runs,
    the records received so far. Each new job of the environment starts it empty.

    Example:
        >>> from sage.kernel.api.local_environment import LocalEnvironment
        >>> env = LocalEnvironment("squares")
        >>> squares = env.from_collection(range(4)).map(lambda x: x * x).collect()
        >>> _ = env.submit()
        >>> list(squares)
        [0, 1, 4, 9]
    """

    def __init__(self, collector_id: str, operator: str, max_records: int) -> None:
        self.collector_id = collector_id
        self.operator = operator
        self.max_records = max_records
        self._records: list[Any] = []

    def __repr__(self) -> str:
        return f"<CollectResult of {self.operator}: {len(self._records):,} records>"

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        return self._records[index]

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._records)

    def _restart(self) -> list[Any]:
        """Start empty for a new job; the list the job fills."""
        self._records = []
        return self._records
