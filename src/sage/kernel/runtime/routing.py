"""Send a task's output batch over one edge, partitioned the way the plan says.

A router holds the channels of the downstream tasks of one edge. Round-robin splits a batch
record by record (``batch[j::p]`` slices), so even a single small batch spreads evenly over
all instances — important when each record is slow (a remote call).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from sage.common.errors import OperatorError
from sage.kernel.graph.partition import Partitioning, stable_hash
from sage.kernel.runtime.channel import Barrier, EndOfStream

__all__ = ["Channel", "Router", "make_router"]


class Channel(Protocol):
    """Where a router puts items (a local :class:`~.channel.Inbox` or a remote proxy)."""

    def put(self, item: Any) -> None:
        """Deliver ``item``, blocking while the receiver is full."""


class Router:
    """Delivers batches of one edge; subclasses choose the targets."""

    def __init__(self, channels: Sequence[Channel], input_index: int) -> None:
        self.channels = list(channels)
        self.input_index = input_index

    def send(self, records: Sequence[Any]) -> None:
        """Deliver ``records`` (non-empty)."""
        raise NotImplementedError

    def end(self, sender: str) -> None:
        """Tell every target that ``sender`` has finished."""
        self.broadcast(EndOfStream(sender))

    def broadcast(self, marker: EndOfStream | Barrier) -> None:
        """Put ``marker`` in every target's channel."""
        for channel in self.channels:
            channel.put(marker)


class ForwardRouter(Router):
    """Instance *i* feeds instance *i* (the router holds that single channel)."""

    def send(self, records: Sequence[Any]) -> None:
        self.channels[0].put((self.input_index, records))


class BroadcastRouter(Router):
    """Every record to every target."""

    def send(self, records: Sequence[Any]) -> None:
        item = (self.input_index, records)
        for channel in self.channels:
            channel.put(item)


class RoundRobinRouter(Router):
    """Records dealt in turn over the targets, continuing where the previous batch stopped."""

    def __init__(self, channels: Sequence[Channel], input_index: int, start: int = 0) -> None:
        super().__init__(channels, input_index)
        self._next = start % len(self.channels)

    def send(self, records: Sequence[Any]) -> None:
        channels, n, p = self.channels, len(records), len(self.channels)
        if p == 1:
            channels[0].put((self.input_index, records))
            return
        first = self._next
        for j in range(min(p, n)):
            channels[(first + j) % p].put((self.input_index, records[j::p]))
        self._next = (first + n) % p


class HashRouter(Router):
    """``(key, record)`` pairs to ``stable_hash(key) % p``; errors name the keyby operator."""

    def __init__(
        self, channels: Sequence[Channel], input_index: int, keyby: tuple[str, int, int]
    ) -> None:
        super().__init__(channels, input_index)
        self._keyby = keyby  # (operator name, instance, parallelism) for error messages

    def send(self, records: Sequence[Any]) -> None:
        channels, p = self.channels, len(self.channels)
        if p == 1:
            channels[0].put((self.input_index, records))
            return
        buckets: list[list[Any]] = [[] for _ in range(p)]
        pair: Any = None
        try:
            for pair in records:
                buckets[stable_hash(pair[0]) % p].append(pair)
        except Exception as exc:
            name, instance, parallelism = self._keyby
            raise OperatorError(name, instance, parallelism, pair[1], exc) from exc
        for target, bucket in enumerate(buckets):
            if bucket:
                channels[target].put((self.input_index, bucket))


def make_router(
    partitioning: Partitioning,
    targets: Sequence[Channel],
    *,
    input_index: int,
    src_index: int,
    keyby: tuple[str, int, int] | None = None,
) -> Router:
    """The router of one edge for upstream instance ``src_index``.

    Args:
        partitioning: The edge's partitioning.
        targets: Channels of every downstream instance, by instance index.
        input_index: Which input of the downstream head the edge feeds.
        src_index: Upstream instance index (selects the forward target, staggers round-robin).
        keyby: For hash edges, the keyby operator's (name, instance, parallelism).
    """
    match partitioning:
        case Partitioning.FORWARD:
            return ForwardRouter([targets[src_index]], input_index)
        case Partitioning.ROUND_ROBIN:
            return RoundRobinRouter(targets, input_index, start=src_index)
        case Partitioning.HASH:
            return HashRouter(targets, input_index, keyby or ("keyby", src_index, 1))
        case Partitioning.BROADCAST:
            return BroadcastRouter(targets, input_index)
    raise AssertionError(f"unknown partitioning {partitioning!r}")  # pragma: no cover
