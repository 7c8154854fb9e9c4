"""Placement: which of a model's instances a request goes to, by the routing policy.

The queue policy (:mod:`.queues`) decides *which* waiting request leaves next; the router
decides *where* it goes, among the model's healthy instances with a free slot. They are
independent: any routing policy works under any scheduling policy (SLO-aware ordering with
prefix-aware placement, say), except COST_OPTIMIZED, which places requests by cost itself
(:mod:`.costs`; the router still learns where prefixes went).

Routing policies (:class:`~sage.inference.config.RoutingPolicyType`):

* ``least_loaded`` — the instance with the most free slots (the default; ties go to the one
  registered first).
* ``round_robin`` — the next instance in turn that has a free slot.
* ``prefix_aware`` — the instance expected to hold the longest prefix of the prompt in its
  KV cache (:mod:`.prefixes`), among those within ``balance_slack`` requests in flight of the
  least loaded: a cache hit saves the prefill, but not at any queueing cost. With no
  instance holding any of it, the least loaded one, and among equally loaded ones the one
  whose cache holds least: new prefixes spread over the instances, so that together their
  caches hold more of them.
* ``session`` — a conversation (the ``x-sage-session`` header, else the body's ``user``)
  stays on the instance it was placed on, where its KV cache is, unless that instance is
  unhealthy, full, or more than ``balance_slack`` requests busier than the least loaded;
  then it moves to the least loaded one. Requests without a session: least loaded.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

from sage.common.errors import ConfigError
from sage.inference.config import RoutingPolicyType
from sage.inference.control_plane.instances import Instance, InstanceRegistry
from sage.inference.control_plane.prefixes import CHARS_PER_TOKEN, PrefixIndex
from sage.inference.control_plane.queues import PendingRequest

__all__ = ["Router"]


class Router:
    """Places requests on instances by the routing policy; see the module docstring.

    Args:
        registry: The instances.
        policy: The routing policy (a :class:`RoutingPolicyType` or its name).
        balance_slack: How many more requests in flight than the least loaded instance an
            instance may have and still be chosen for its cache or its session.
        block_chars: Characters per prefix block (``prefix_aware``).
        cache_tokens: Tokens each instance's prefix index remembers (about its KV cache).
        max_sessions: Sessions remembered at most (least recently used forgotten first).

    Raises:
        ConfigError: an unknown policy, or ``block_chars`` below 1 (``UnifiedServerConfig``
            checks the rest).
    """

    def __init__(
        self,
        registry: InstanceRegistry,
        policy: RoutingPolicyType | str = RoutingPolicyType.LEAST_LOADED,
        *,
        balance_slack: int = 4,
        block_chars: int = 128,
        cache_tokens: int = 16384,
        max_sessions: int = 65536,
    ) -> None:
        if block_chars < 1:
            raise ConfigError(f"routing block_chars={block_chars} must be at least 1")
        self.registry = registry
        self.policy = RoutingPolicyType.parse(policy)
        self.balance_slack = balance_slack
        self.block_chars = block_chars
        self.index_blocks = max(1, cache_tokens * CHARS_PER_TOKEN // block_chars)
        self.max_sessions = max_sessions
        self._indexes: dict[str, PrefixIndex] = {}
        self._sessions: OrderedDict[str, str] = OrderedDict()
        self._homes: Counter[str] = Counter()  # sessions placed on each instance
        self._turn: dict[tuple[str, str], int] = {}
        self.prefix_hits = 0  # requests placed where some of their prefix was expected
        self.prefix_tokens = 0  # ... the prompt tokens expected cached there, estimated
        self.session_hits = 0  # requests that stayed on their session's instance
        self.session_moves = 0  # sessions moved (their instance was down, full or busy)

    @property
    def wants_prefix(self) -> bool:
        """Whether requests need their prefix blocks (``PendingRequest.prefix``)."""
        return self.policy is RoutingPolicyType.PREFIX_AWARE

    @property
    def wants_session(self) -> bool:
        """Whether requests need their session key (``PendingRequest.session``)."""
        return self.policy is RoutingPolicyType.SESSION

    def set_policy(self, policy: RoutingPolicyType | str) -> RoutingPolicyType:
        """Switch the routing policy (what was learnt of caches and sessions is kept).

        Raises:
            ConfigError: an unknown policy name.
        """
        self.policy = RoutingPolicyType.parse(policy)
        return self.policy

    def forget(self, instance_id: str) -> None:
        """Drop what is known of a removed instance's cache."""
        self._indexes.pop(instance_id, None)
        self._homes.pop(instance_id, None)

    # -- placement ---------------------------------------------------------------------------

    def pick(self, request: PendingRequest) -> Instance | None:
        """The instance ``request`` goes to (``None``: none healthy has a free slot)."""
        policy = self.policy
        if policy is RoutingPolicyType.LEAST_LOADED:  # the default: one pass, no list
            best = None
            for instance in self.registry.of_model(request.kind, request.model):
                if (
                    instance.healthy
                    and instance.capacity_left > 0
                    and (best is None or instance.capacity_left > best.capacity_left)
                ):
                    best = instance
            return best
        candidates = [
            i
            for i in self.registry.of_model(request.kind, request.model)
            if i.healthy and i.capacity_left > 0
        ]
        if not candidates:
            return None
        if policy is RoutingPolicyType.PREFIX_AWARE and request.prefix:
            return self._by_prefix(candidates, request.prefix)
        if policy is RoutingPolicyType.SESSION and request.session is not None:
            return self._by_session(candidates, request.session)
        if policy is RoutingPolicyType.ROUND_ROBIN:
            return self._in_turn(candidates, (request.kind, request.model))
        return self._least_loaded(candidates)

    def placed(self, instance: Instance, request: PendingRequest) -> None:
        """Note that ``request`` was sent to ``instance`` (its prefix is cached there now)."""
        if request.prefix:
            index = self._indexes.get(instance.id)
            if index is None:
                index = self._indexes[instance.id] = PrefixIndex(self.index_blocks)
            index.add(request.prefix)

    def _cached_blocks(self, instance: Instance) -> int:
        index = self._indexes.get(instance.id)
        return len(index) if index is not None else 0

    def _least_loaded(self, candidates: list[Instance]) -> Instance:
        """Most free slots; among equals, the one whose cache holds least, then the one
        with fewest sessions, then the first registered (new prefixes and conversations
        spread out)."""
        return max(
            candidates,
            key=lambda i: (i.capacity_left, -self._cached_blocks(i), -self._homes[i.id]),
        )

    def _in_turn(self, candidates: list[Instance], key: tuple[str, str]) -> Instance:
        instances = self.registry.of_model(*key)
        turn = self._turn.get(key, 0)
        free = {id(i) for i in candidates}
        for step in range(len(instances)):
            instance = instances[(turn + step) % len(instances)]
            if id(instance) in free:
                self._turn[key] = (turn + step + 1) % len(instances)
                return instance
        return candidates[0]  # unreachable: every candidate is one of the instances

    def _by_prefix(self, candidates: list[Instance], blocks: tuple[int, ...]) -> Instance:
        least = min(i.in_flight for i in candidates)
        best: Instance | None = None
        best_key = (0, 0)
        for instance in candidates:
            if instance.in_flight > least + self.balance_slack:
                continue
            index = self._indexes.get(instance.id)
            matched = index.matched(blocks) if index is not None else 0
            key = (matched, -instance.in_flight)
            if matched and key > best_key:
                best, best_key = instance, key
        if best is None:
            return self._least_loaded(candidates)
        self.prefix_hits += 1
        self.prefix_tokens += best_key[0] * self.block_chars // CHARS_PER_TOKEN
        return best

    def _by_session(self, candidates: list[Instance], session: str) -> Instance:
        sessions = self._sessions
        home = sessions.get(session)
        if home is not None:
            sessions.move_to_end(session)
            least = min(i.in_flight for i in candidates)
            for instance in candidates:
                if instance.id == home and instance.in_flight <= least + self.balance_slack:
                    self.session_hits += 1
                    return instance
            self.session_moves += 1
            self._homes[home] -= 1
        chosen = self._least_loaded(candidates)
        sessions[session] = chosen.id
        self._homes[chosen.id] += 1
        if len(sessions) > self.max_sessions:
            self._homes[sessions.popitem(last=False)[1]] -= 1
        return chosen

    def describe(self) -> dict[str, Any]:
        """JSON-ready state: policy, counters, and the prefix index's size per instance."""
        return {
            "policy": str(self.policy),
            "balance_slack": self.balance_slack,
            "prefix_hits": self.prefix_hits,
            "prefix_cached_tokens": self.prefix_tokens,
            "session_hits": self.session_hits,
            "session_moves": self.session_moves,
            "sessions": len(self._sessions),
            "prefix_blocks": {key: len(index) for key, index in self._indexes.items()},
        }
