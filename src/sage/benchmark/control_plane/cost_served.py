"""What a run's requests cost, from the gateway's own figures.

The gateway counts the cost served (``GET /v1/management/metrics``: ``cost`` in all, each
instance's ``cost`` and ``requests``; see :mod:`sage.inference.control_plane.costs`). A run
reads those figures twice, once the warm-up is answered and once the trace is, and keeps the
difference: the cost of the measured requests only, on a fresh gateway or on a running one
that served other traffic before. Neither snapshot waits for anything: the gateway counts a
request before it ends its answer (a whole answer before sending it, a streamed one before
the last, empty chunk of its body) and the driver reads every answer to its end, so once
the warm-up (or the trace) is answered, all of its requests are in the figures. A request
the driver gave up on (past its timeout) failed, and failed requests cost nothing.

A run has cost figures only when some instance declares ``cost_per_1k_tokens``; without
one, nothing about cost appears in the reports.

Example:
    >>> before = {"cost": 0.5, "instances": [
    ...     {"instance_id": "a", "instance_type": "llm", "cost_per_1k_tokens": 1.0,
    ...      "requests": 2, "cost": 0.5}]}
    >>> after = {"cost": 2.5, "instances": [
    ...     {"instance_id": "a", "instance_type": "llm", "cost_per_1k_tokens": 1.0,
    ...      "requests": 6, "cost": 2.5}]}
    >>> run = cost_served(before, after, completed=4)
    >>> run.total, run.per_1k_requests, run.instances[0].share
    (2.0, 500.0, 1.0)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from sage.benchmark.control_plane.driver import management
from sage.common.errors import GatewayError

__all__ = ["InstanceCost", "RunCost", "cost_served", "format_cost", "gateway_metrics"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstanceCost:
    """One instance's part of a run.

    Attributes:
        instance_id: The gateway's name for it (``host:port``).
        kind: ``llm`` or ``embedding``.
        cost_per_1k_tokens: Its declared cost (``None``: none).
        requests: Requests it answered during the run.
        share: Its share of the requests its kind's instances answered (0..1).
        cost: The cost it served during the run (``None``: no cost declared).
    """

    instance_id: str
    kind: str
    cost_per_1k_tokens: float | None
    requests: int
    share: float
    cost: float | None


@dataclass(frozen=True)
class RunCost:
    """The cost served during a run.

    Attributes:
        total: Cost served in all, in the instances' declared currency.
        completed: Requests of the trace that succeeded (what ``per_1k_requests`` is over).
        instances: Each instance's part, in the gateway's order.
    """

    total: float
    completed: int
    instances: list[InstanceCost] = field(default_factory=list)

    @property
    def per_1k_requests(self) -> float:
        """Cost per 1,000 completed requests (0 when none completed)."""
        return self.total / self.completed * 1000 if self.completed else 0.0

    def share_of_dearest(self) -> float:
        """The share of its kind's requests that the dearest priced instance answered."""
        priced = [i for i in self.instances if i.cost_per_1k_tokens is not None]
        if not priced:
            return 0.0
        return max(priced, key=lambda i: i.cost_per_1k_tokens or 0.0).share

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with ``per_1k_requests``."""
        return {
            "total": self.total,
            "per_1k_requests": self.per_1k_requests,
            "completed": self.completed,
            "instances": [asdict(i) for i in self.instances],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunCost:
        """What :meth:`to_dict` wrote."""
        return cls(
            float(data["total"]),
            int(data["completed"]),
            [InstanceCost(**i) for i in data.get("instances", [])],
        )


def format_cost(value: float) -> str:
    """A cost: whole numbers from 1,000, two decimals from 1, four below."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.4f}"


def cost_served(
    before: Mapping[str, Any], after: Mapping[str, Any], completed: int
) -> RunCost | None:
    """The cost served between two ``/v1/management/metrics`` snapshots.

    Args:
        before: The snapshot once the warm-up was answered (``{}``: none, count from 0).
        after: The snapshot once the trace was answered.
        completed: Requests of the trace that succeeded.

    Returns:
        The figures; ``None`` when no instance declares a cost (or ``after`` is empty).
    """
    instances = list(after.get("instances") or ())
    if not any(i.get("cost_per_1k_tokens") is not None for i in instances):
        return None
    earlier = {i["instance_id"]: i for i in before.get("instances") or ()}

    def gained(instance: Mapping[str, Any], key: str) -> float:
        then = earlier.get(instance["instance_id"], {}).get(key) or 0
        return float(instance.get(key) or 0) - float(then)

    answered = {i["instance_id"]: int(gained(i, "requests")) for i in instances}
    by_kind: dict[str, int] = {}
    for i in instances:
        kind = str(i.get("instance_type", "llm"))
        by_kind[kind] = by_kind.get(kind, 0) + answered[i["instance_id"]]
    parts = []
    for i in instances:
        kind, requests = str(i.get("instance_type", "llm")), answered[i["instance_id"]]
        price = i.get("cost_per_1k_tokens")
        parts.append(
            InstanceCost(
                instance_id=str(i["instance_id"]),
                kind=kind,
                cost_per_1k_tokens=price,
                requests=requests,
                share=requests / by_kind[kind] if by_kind[kind] else 0.0,
                cost=None if price is None else gained(i, "cost"),
            )
        )
    total = float(after.get("cost") or 0.0) - float(before.get("cost") or 0.0)
    return RunCost(total, completed, parts)


async def gateway_metrics(url: str, api_key: str | None = None) -> dict[str, Any]:
    """``GET /v1/management/metrics``: the figures :func:`cost_served` takes; ``{}`` when the
    gateway does not answer (logged: the run then has no cost figures)."""
    try:
        return dict(await management(url, "GET", "/management/metrics", api_key=api_key))
    except GatewayError as exc:
        logger.warning("could not read the gateway's metrics: %s", exc)
        return {}
