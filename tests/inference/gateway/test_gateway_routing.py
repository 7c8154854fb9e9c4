"""Routing policies inside the real gateway, over three stub engine servers: where requests
of each customer and each session end up, as the instances themselves counted them."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from tests.metric_names import shaped

from sage.inference.deploy.stack import LocalStack

PREFIX = {name: f"You answer questions for {name}. " * 40 for name in ("acme", "globex", "umbra")}


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    s = LocalStack(
        "stub-llm",
        None,
        engine="stub",
        llm_ports=(0, 0, 0),
        gateway_options={"routing_policy": request.param, "prefix_block_chars": 64},
    ).start()
    yield s
    s.stop()


def served(s: LocalStack) -> dict[str, int]:
    """Requests each instance finished, by instance id."""
    states = httpx.get(f"http://127.0.0.1:{s.port}/v1/management/instances").json()
    return {state["instance_id"]: state["requests"] for state in states["instances"]}


def ask(client: openai.OpenAI, customer: str, question: str, **extra: object) -> None:
    client.chat.completions.create(
        model="stub-llm",
        messages=[
            {"role": "system", "content": PREFIX[customer]},
            {"role": "user", "content": question},
        ],
        max_tokens=2,
        **extra,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("stack", ["prefix_aware"], indirect=True)
def test_prefix_aware_sends_each_customer_where_its_prefix_is(stack: LocalStack) -> None:
    client = openai.OpenAI(base_url=stack.gateway_url, api_key="none", max_retries=0)
    before = served(stack)
    for customer in PREFIX:  # one after another: least loaded would put all on the first
        ask(client, customer, "first question?")
    after_first = served(stack)
    homes = {
        customer: next(i for i in after_first if after_first[i] > before[i])
        for customer in ("acme",)
    }
    assert sorted(after_first[i] - before[i] for i in after_first) == [1, 1, 1]  # spread
    for round_ in range(4):
        for customer in PREFIX:
            ask(client, customer, f"question {round_}?")
    counts = served(stack)
    assert sorted(counts[i] - before[i] for i in counts) == [5, 5, 5]
    assert counts[homes["acme"]] - before[homes["acme"]] == 5
    families = shaped(httpx.get(f"http://127.0.0.1:{stack.port}/metrics").text)
    assert families["sage_gateway_routing_prefix_hits"].samples[0].value == 12
    assert families["sage_gateway_routing_prefix_cached_tokens"].samples[0].value > 0


@pytest.mark.parametrize("stack", ["session"], indirect=True)
def test_session_routing_keeps_a_conversation_on_one_instance(stack: LocalStack) -> None:
    client = openai.OpenAI(base_url=stack.gateway_url, api_key="none", max_retries=0)
    before = served(stack)
    for turn in range(3):
        ask(client, "acme", f"turn {turn}", user="alice")  # the body's user
        ask(client, "acme", f"turn {turn}", extra_headers={"x-sage-session": "bob"})
    counts = {i: n - before[i] for i, n in served(stack).items()}
    assert sorted(counts.values()) == [0, 3, 3]
    state = httpx.get(f"http://127.0.0.1:{stack.port}/v1/management/metrics").json()
    assert state["routing"]["session_hits"] == 4 and state["routing"]["sessions"] == 2
