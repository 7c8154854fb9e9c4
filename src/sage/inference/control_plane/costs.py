"""COST_OPTIMIZED placement, and what the requests served have cost.

Each instance may declare ``cost_per_1k_tokens`` (:class:`~sage.inference.config.
BackendInstanceConfig`), in one currency chosen by whoever configures the gateway. Under
COST_OPTIMIZED a granted request goes to the cheapest of its model's healthy instances
with a free slot that is *expected* to answer it before its deadline:

* The expectation is the instance's measured P95 service seconds per token (dispatch to
  last byte, over its last 512 requests answered under COST_OPTIMIZED) times the request's
  predicted tokens (``PendingRequest.tokens``: ``max_tokens`` for generation), compared with
  the time left until ``arrival + slo_ms``. It reflects the load the instance ran at
  lately, not the load it is about to get. An instance that has answered nothing yet is
  predicted with its model's P95 per token over all instances (the dispatcher's
  ``predict_s``); with no sample at all the prediction is 0 (every instance is expected in
  time).
* If no instance is expected in time, the one expected to finish soonest (then the
  cheapest, then the least loaded) takes it: the request is late anyway.
* A request without an SLO goes to the cheapest instance with a free slot.
* Among equally cheap instances, the least loaded (most free slots), then the first
  registered.

An instance without a declared cost counts as the dearest declared cost among its model's
instances (0 when none declares one): an unknown price is never taken for a low one, so
such instances are used last, and a model with no costs at all is placed by expected
finish and load. Requests do not wait for a cheap instance while a dearer one is free.

Cost served is counted when an instance answers a request (any status below 500): its
tokens times ``cost_per_1k_tokens`` / 1000, per instance (``Instance.cost``) and in total
(``Dispatcher.describe()["cost"]``), in the declared currency. The tokens are the answer's
``usage.total_tokens`` when the gateway read it (whole answers from an instance with a
cost), else what the request was charged at admission (the prompt's estimate plus
``max_tokens``: streamed answers and batched embedding calls, riders included). Instances
without a declared cost add nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from weakref import WeakKeyDictionary

from sage.inference.control_plane.figures import LatencyModel
from sage.inference.control_plane.instances import Instance, InstanceRegistry
from sage.inference.control_plane.queues import PendingRequest

__all__ = ["CostPlacer", "cheapest_in_time", "price"]


def price(instance: Instance, peers: Sequence[Instance]) -> float:
    """What 1,000 tokens on ``instance`` cost, for placement: its declared cost, else the
    dearest declared among ``peers`` (its model's instances; 0 when none declares one)."""
    declared = instance.config.cost_per_1k_tokens
    if declared is not None:
        return declared
    costs = [c for p in peers if (c := p.config.cost_per_1k_tokens) is not None]
    return max(costs, default=0.0)


def cheapest_in_time(
    candidates: Sequence[Instance],
    peers: Sequence[Instance],
    finish_s: Callable[[Instance], float],
    budget_s: float | None,
) -> Instance:
    """COST_OPTIMIZED's choice among ``candidates`` (see the module docstring).

    Args:
        candidates: The model's healthy instances with a free slot (at least one).
        peers: All of the model's instances (what an undeclared cost counts as).
        finish_s: The request's predicted service seconds on an instance.
        budget_s: Seconds left until the request's deadline (``None``: it has no SLO).

    Returns:
        The cheapest expected in time; else the one expected to finish soonest.
    """
    prices = {id(i): price(i, peers) for i in candidates}
    if budget_s is None:
        return min(candidates, key=lambda i: (prices[id(i)], -i.capacity_left))
    finish = {id(i): finish_s(i) for i in candidates}
    in_time = [i for i in candidates if finish[id(i)] <= budget_s]
    if in_time:
        return min(in_time, key=lambda i: (prices[id(i)], -i.capacity_left))
    return min(candidates, key=lambda i: (finish[id(i)], prices[id(i)], -i.capacity_left))


class CostPlacer:
    """Places requests by cost (COST_OPTIMIZED) and counts the cost served.

    Args:
        registry: The instances.
        model_predict_s: The model-wide prediction of a request's service seconds (for an
            instance that has answered nothing yet).
        clock: The dispatcher's monotonic clock (deadlines are on it).
    """

    def __init__(
        self,
        registry: InstanceRegistry,
        model_predict_s: Callable[[PendingRequest], float],
        clock: Callable[[], float],
    ) -> None:
        self.registry = registry
        self.model_predict_s = model_predict_s
        self.clock = clock
        self.total = 0.0  # cost served, all instances (removed ones included)
        self._latency: WeakKeyDictionary[Instance, LatencyModel] = WeakKeyDictionary()

    def predict_s(self, instance: Instance, request: PendingRequest) -> float:
        """Predicted service seconds of ``request`` on ``instance``: its P95 per token times
        the request's tokens (the model's prediction before it has answered anything)."""
        model = self._latency.get(instance)
        if model is None or not model.ring.count:
            return self.model_predict_s(request)
        return model.p95_per_token * request.tokens

    def pick(self, request: PendingRequest) -> Instance | None:
        """The instance for ``request`` (``None``: none healthy has a free slot)."""
        peers = self.registry.of_model(request.kind, request.model)
        candidates = [i for i in peers if i.healthy and i.capacity_left > 0]
        if not candidates:
            return None
        budget_s = None
        if request.slo_ms is not None:
            budget_s = request.arrival + request.slo_ms / 1000 - self.clock()
        return cheapest_in_time(candidates, peers, lambda i: self.predict_s(i, request), budget_s)

    def served(
        self,
        instance: Instance,
        request: PendingRequest,
        seconds: float,
        tokens: int,
        learn: bool = True,
    ) -> None:
        """An answer of ``tokens`` tokens took ``seconds`` on ``instance``: count what it
        cost, and learn the instance's speed when ``learn`` (the dispatcher learns only
        under COST_OPTIMIZED, the one policy that reads it: other policies' requests pay
        for no per-instance ring; after a switch, :meth:`predict_s` starts from the model's
        figure)."""
        if learn:
            model = self._latency.get(instance)
            if model is None:
                model = self._latency[instance] = LatencyModel()
            model.add(seconds, request.tokens)
        cost = instance.config.cost_per_1k_tokens
        if cost is not None:
            spent = tokens * cost / 1000
            instance.cost += spent
            self.total += spent
