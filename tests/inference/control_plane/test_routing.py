"""Placement by routing policy on hand-built states: instances whose load is set by hand,
requests whose prefixes and sessions are given, no servers."""

from __future__ import annotations

import asyncio

import pytest

from sage.common.errors import ConfigError
from sage.inference.config import BackendInstanceConfig, RoutingPolicyType, UnifiedServerConfig
from sage.inference.control_plane.instances import Instance, InstanceRegistry
from sage.inference.control_plane.prefixes import PrefixIndex, prompt_blocks, prompt_text
from sage.inference.control_plane.queues import PendingRequest
from sage.inference.control_plane.routing import Router

BLOCK = 16
CUSTOMER_A = "a" * (BLOCK * 6)
CUSTOMER_B = "b" * (BLOCK * 6)


def registry(n: int = 3, slots: int = 8) -> tuple[InstanceRegistry, list[Instance]]:
    """``n`` instances (never connected to: their pools need a loop only to exist)."""

    async def build() -> tuple[InstanceRegistry, list[Instance]]:
        reg = InstanceRegistry()
        configs = [
            BackendInstanceConfig(port=9100 + i, model_name="m", max_concurrent_requests=slots)
            for i in range(n)
        ]
        return reg, [reg.add(config) for config in configs]

    return asyncio.run(build())


def request(text: str = "", session: str | None = None) -> PendingRequest:
    return PendingRequest(
        arrival=0.0, model="m", prefix=prompt_blocks(text, BLOCK), session=session
    )


def send(router: Router, req: PendingRequest) -> Instance:
    """Place ``req`` and count it in flight there (as the dispatcher does)."""
    instance = router.pick(req)
    assert instance is not None
    instance.in_flight += 1
    router.placed(instance, req)
    return instance


def test_block_hashes_are_chained_and_whole_blocks_only() -> None:
    a = prompt_blocks(CUSTOMER_A + "question one", BLOCK)
    b = prompt_blocks(CUSTOMER_A + "another question", BLOCK)
    assert a[:6] == b[:6] and len(a) == 6 and len(b) == 7  # a's tail is a partial block
    c = prompt_blocks("x" + CUSTOMER_A[1:], BLOCK)
    assert not set(c) & set(a)  # a different first block changes every hash after it
    assert prompt_blocks("short", BLOCK) == ()


def test_prompt_text_reads_chat_and_completions_bodies() -> None:
    chat = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        ]
    }
    assert prompt_text(chat) == "<system>be brief\n<user>hi"
    assert prompt_text({"prompt": "once upon"}) == "once upon"
    assert prompt_text({"tools": [{"type": "function"}], "messages": []}).startswith("[{")
    odd = {"messages": [{"role": "user", "content": [{"text": {}}, {"text": "ok"}]}, "x"]}
    assert prompt_text(odd) == "<user>ok"  # shapes the engine will refuse: never an error here


def test_prefix_index_matches_the_leading_blocks_and_forgets_the_oldest() -> None:
    index = PrefixIndex(capacity=8)
    a = prompt_blocks(CUSTOMER_A + "q" * BLOCK, BLOCK)  # 7 blocks
    index.add(a[:6])
    assert index.matched(a) == 6 and index.matched(a[:3]) == 3
    assert index.matched(prompt_blocks(CUSTOMER_B, BLOCK)) == 0
    index.add(prompt_blocks(CUSTOMER_B, BLOCK))  # 6 more: 12 > 8, a's oldest 4 go
    assert len(index) == 8 and index.matched(a) == 0
    assert index.matched(prompt_blocks(CUSTOMER_B, BLOCK)) == 6


def test_prefix_aware_keeps_a_prefix_where_it_is_cached_and_spreads_new_ones() -> None:
    reg, (i0, i1, i2) = registry()
    router = Router(reg, "prefix_aware", balance_slack=2, block_chars=BLOCK)
    first = send(router, request(CUSTOMER_A + "q1"))
    assert first is i0  # nothing cached anywhere: least loaded, the first registered
    # the same customer again goes where its prefix is, though i0 is now the busiest
    assert send(router, request(CUSTOMER_A + "q2")) is i0
    # a new customer: no instance holds it, so the least loaded, with least cached
    assert send(router, request(CUSTOMER_B + "q1")) is i1
    assert router.prefix_hits == 1 and router.prefix_tokens == 6 * BLOCK // 4
    # i0 has 2 in flight, the least loaded (i2) 0: within the slack, A stays on i0
    assert send(router, request(CUSTOMER_A + "q3")) is i0
    # 3 in flight on i0 is more than 0 + slack: A goes to the least loaded instead
    assert send(router, request(CUSTOMER_A + "q4")) is i2


def test_prefix_aware_skips_unhealthy_and_full_instances() -> None:
    reg, (i0, i1, _) = registry(slots=2)
    router = Router(reg, "prefix_aware", block_chars=BLOCK)
    assert send(router, request(CUSTOMER_A)) is i0
    i0.healthy = False
    assert send(router, request(CUSTOMER_A)) is not i0
    i0.healthy = True
    i0.in_flight = 2  # full
    assert send(router, request(CUSTOMER_A)) is not i0
    for instance in reg.all():
        instance.in_flight = 2
    assert router.pick(request(CUSTOMER_A)) is None
    assert i1.id in router.describe()["prefix_blocks"]


def test_session_stays_unless_its_instance_is_down_or_too_busy() -> None:
    reg, (i0, i1, i2) = registry()
    router = Router(reg, "session", balance_slack=1)
    home = send(router, request(session="alice"))
    assert home is i0
    assert send(router, request(session="bob")) is i1
    assert send(router, request(session="alice")) is i0  # 1 in flight vs least 0: stays
    assert router.session_hits == 1
    moved = send(router, request(session="alice"))  # 2 vs 0: more than the slack
    assert moved is i2 and router.session_moves == 1
    i2.healthy = False
    assert send(router, request(session="alice")) is not i2
    assert send(router, request()) in (i0, i1)  # no session: least loaded


def test_round_robin_takes_turns_skipping_full_instances() -> None:
    reg, (i0, i1, i2) = registry(slots=1)
    router = Router(reg, "round_robin")
    assert [send(router, request()) for _ in range(3)] == [i0, i1, i2]
    i1.in_flight = 0
    assert router.pick(request()) is i1


def test_least_loaded_is_the_default_and_names_parse() -> None:
    reg, (i0, i1, _) = registry()
    router = Router(reg)
    assert router.policy is RoutingPolicyType.LEAST_LOADED
    i0.in_flight = 1
    assert router.pick(request(CUSTOMER_A)) is i1
    assert RoutingPolicyType.parse("cache-aware") is RoutingPolicyType.PREFIX_AWARE
    with pytest.raises(ConfigError, match="least_loaded, round_robin"):
        RoutingPolicyType.parse("nearest")
    with pytest.raises(ConfigError, match="routing_balance_slack"):
        UnifiedServerConfig(routing_balance_slack=-1)
    assert UnifiedServerConfig(routing_policy="session").routing_policy is RoutingPolicyType.SESSION
