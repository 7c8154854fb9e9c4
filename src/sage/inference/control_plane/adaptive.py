"""ADAPTIVE's rule: which policy orders the requests, from the traffic seen lately."""

from __future__ import annotations

from dataclasses import dataclass, field

from sage.inference.config import SchedulingPolicyType
from sage.inference.control_plane.queues import PendingRequest

__all__ = ["BATCHING", "Traffic", "choose_policy", "first_active"]

BATCHING = (
    SchedulingPolicyType.SLO_AWARE,
    SchedulingPolicyType.HYBRID,
    SchedulingPolicyType.COST_OPTIMIZED,
)
"""The policies that send waiting embedding requests of a model as one batched call."""


@dataclass
class Traffic:
    """What ADAPTIVE looks at: the requests that arrived since its last look."""

    llm: int = 0
    embedding: int = 0
    with_slo: int = 0
    priorities: set[int] = field(default_factory=set)

    def count(self, request: PendingRequest) -> None:
        """Note one arriving request."""
        if request.kind == "llm":
            self.llm += 1
        else:
            self.embedding += 1
        if request.slo_ms is not None:
            self.with_slo += 1
        self.priorities.add(request.priority)

    def choose(self, queued: int) -> SchedulingPolicyType:
        """:func:`choose_policy` for this traffic with ``queued`` requests waiting."""
        return choose_policy(queued, self.llm, self.embedding, self.with_slo, len(self.priorities))


def choose_policy(
    queued: int,
    llm: int,
    embedding: int,
    with_slo: int,
    priority_levels: int,
) -> SchedulingPolicyType:
    """ADAPTIVE's rule: the policy for the traffic seen in the last interval.

    Nothing waiting: FIFO (order does not matter and it costs least). Otherwise, mixed LLM
    and embedding traffic, or embeddings alone: HYBRID (batching pays); requests with SLOs:
    SLO_AWARE; several priority levels: PRIORITY; else FIFO.
    """
    if queued == 0:
        return SchedulingPolicyType.FIFO
    if embedding and (llm or not with_slo):
        return SchedulingPolicyType.HYBRID
    if with_slo:
        return SchedulingPolicyType.SLO_AWARE
    if priority_levels > 1:
        return SchedulingPolicyType.PRIORITY
    return SchedulingPolicyType.FIFO


def first_active(policy: SchedulingPolicyType) -> SchedulingPolicyType:
    """The policy that orders requests when ``policy`` is configured (ADAPTIVE starts FIFO)."""
    return SchedulingPolicyType.FIFO if policy is SchedulingPolicyType.ADAPTIVE else policy
