"""Tenants through the real gateway (stub engines on loopback) with the official OpenAI SDK:
API keys name tenants; RPM and TPM limits answer 429 with ``Retry-After`` and OpenAI's
``x-ratelimit-*`` headers; a limited tenant's answers carry the headers; per-tenant figures
on ``/metrics`` and in the JSON snapshot."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from metric_names import family_names, shaped  # type: ignore[import-not-found]
from sage.common.errors import ConfigError
from sage.inference.config import TenantConfig, UnifiedServerConfig
from sage.inference.deploy.stack import LocalStack
from sage.inference.gateway.auth import accepted_keys
from sage.inference.gateway.scheduling import charged_tokens
from sage.inference.gateway.tenants import duration_text

TENANTS = {
    "counted": {"api_keys": ["key-counted"], "rpm": 3, "priority": 5},
    "metered": {"api_keys": ["key-metered"], "tpm": 400, "weight": 2},
    "free": {"api_keys": ["key-free"]},
}
GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?\d+(\.\d+)?(ms|s)$")
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack(
        "stub-llm",
        "stub-emb",
        engine="stub",
        max_concurrent_requests=4,
        gateway_options={"api_key": "ops-key", "tenants": TENANTS},
    ) as s:
        yield s


def sdk(stack: LocalStack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.gateway_url, api_key=key, max_retries=0)


def chat(client: openai.OpenAI, max_tokens: int = 2) -> Any:
    return client.chat.completions.with_raw_response.create(
        model="stub-llm", messages=MESSAGES, max_tokens=max_tokens
    )


def test_over_its_rpm_a_tenant_gets_429_with_retry_after_and_the_ratelimit_headers(
    stack: LocalStack,
) -> None:
    client = sdk(stack, "key-counted")
    answers = [chat(client) for _ in range(3)]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["2", "1", "0"]
    for answer in answers:
        assert answer.headers["x-ratelimit-limit-requests"] == "3"
        assert GO_DURATION.match(answer.headers["x-ratelimit-reset-requests"])
        assert "x-ratelimit-limit-tokens" not in answer.headers  # no TPM limit: not said
        assert answer.parse().choices[0].message.content
    with pytest.raises(openai.RateLimitError) as refused:
        chat(client)
    headers = refused.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 20  # one request drips back every 20 s
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    reset = headers["x-ratelimit-reset-requests"]  # the whole budget: about a minute
    assert GO_DURATION.match(reset) and reset.startswith(("59.", "1m0s"))
    error = refused.value.body
    assert isinstance(error, dict)
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
    assert "'counted'" in error["message"] and "(rpm) limit 3" in error["message"]
    other = chat(sdk(stack, "key-free"))  # another tenant is not held back
    assert other.http_response.status_code == 200
    assert not [h for h in other.headers if h.startswith("x-ratelimit")]


def test_over_its_tpm_a_tenant_gets_429_and_a_request_above_a_minutes_tokens_400(
    stack: LocalStack,
) -> None:
    client = sdk(stack, "key-metered")
    first = chat(client, max_tokens=300)  # charged ~301: prompt estimate + max_tokens
    assert first.headers["x-ratelimit-limit-tokens"] == "400"
    left = int(first.headers["x-ratelimit-remaining-tokens"])
    assert 90 <= left <= 99
    assert GO_DURATION.match(first.headers["x-ratelimit-reset-tokens"])
    with pytest.raises(openai.RateLimitError) as refused:
        chat(client, max_tokens=200)
    headers = refused.value.response.headers
    assert int(headers["retry-after"]) >= 1 and "x-ratelimit-remaining-tokens" in headers
    assert "(tpm) limit 400" in str(refused.value)
    with pytest.raises(openai.BadRequestError) as too_big:
        chat(client, max_tokens=500)
    body = too_big.value.body
    assert isinstance(body, dict)
    assert body["code"] == "request_too_large" and body["param"] == "max_tokens"
    assert "tpm=400" in body["message"]


def test_a_streamed_answer_carries_the_headers_and_an_unknown_key_is_refused(
    stack: LocalStack,
) -> None:
    fresh = LocalStack(
        "stub-llm",
        None,
        engine="stub",
        gateway_options={"tenants": {"s": {"api_keys": ["key-s"], "rpm": 100}}},
    )
    with fresh:
        url = fresh.gateway_url + "/chat/completions"
        body = {"model": "stub-llm", "messages": MESSAGES, "stream": True}
        headers = {"authorization": "Bearer key-s"}
        with httpx.stream("POST", url, json=body, headers=headers) as answer:
            assert answer.status_code == 200
            assert answer.headers["x-ratelimit-remaining-requests"] == "99"
            assert b"[DONE]" in b"".join(answer.iter_bytes())
        refused = httpx.post(url, json=body, headers={"authorization": "Bearer nope"})
        assert refused.status_code == 401  # tenants' keys are the gateway's keys


def test_tenant_figures_on_metrics_and_in_the_snapshot(stack: LocalStack) -> None:
    for key in ("key-free", "ops-key"):  # ops-key belongs to no tenant: "default"
        chat(sdk(stack, key))
    for _ in range(4):  # "counted" (3 a minute) is refused by the fourth at the latest
        try:
            chat(sdk(stack, "key-counted"))
        except openai.RateLimitError:
            break
    snapshot = httpx.get(
        stack.gateway_url + "/management/metrics", headers={"authorization": "Bearer ops-key"}
    ).json()
    tenants = snapshot["tenants"]
    assert set(tenants) == {"default", "counted", "metered", "free"}
    assert tenants["default"]["answered"] >= 1 and tenants["free"]["answered"] >= 1
    counted = tenants["counted"]
    assert counted["rpm"] == 3 and counted["rate_limited"] >= 1
    assert counted["requests"] == counted["answered"] + counted["rate_limited"]
    assert tenants["metered"]["weight"] == 2 and tenants["free"]["tokens"] >= 3
    assert tenants["free"]["p95_ms"] is not None and tenants["free"]["queued"] == 0
    # fair share is on with tenants: each served tenant has a counter in the model's lane
    assert "llm/stub-llm" in tenants["free"]["virtual_tokens"]
    assert snapshot["classes"]["llm:p5"]["requests"] >= 3  # "counted" has priority 5
    text = httpx.get(stack.gateway_url.removesuffix("/v1") + "/metrics").text
    families = shaped(text)
    assert {
        "sage_tenant_requests",
        "sage_tenant_rate_limited",
        "sage_tenant_tokens",
        "sage_tenant_queued",
        "sage_tenant_virtual_tokens",
        "sage_tenant_request_duration_seconds",
    } <= family_names(text)
    limited = {s.labels["tenant"]: s.value for s in families["sage_tenant_rate_limited"].samples}
    assert limited["counted"] >= 1 and limited["free"] == 0


def test_tenant_keys_are_accepted_keys_and_bad_tenants_are_named() -> None:
    tenants: dict[str, Any] = {"a": {"api_keys": ["k1", "k2"]}}  # as a config file gives them
    config = UnifiedServerConfig(api_key="k0", tenants=tenants)
    assert set(accepted_keys(config)) >= {b"k0", b"k1", b"k2"}
    assert config.tenants["a"] == TenantConfig(api_keys=["k1", "k2"])
    cases: list[tuple[dict[str, Any], str]] = [
        ({"a": {"rpm": 0}}, r"tenants\.a\.rpm=0 is invalid"),
        ({"a": {"api_keys": ["k"]}, "b": {"api_keys": ["k"]}}, "give each key to one tenant"),
        ({"a": {"wieght": 2}}, "did you mean 'weight'"),
        ({"a b": {}}, "tenant name 'a b' is invalid"),
    ]
    for bad, match in cases:
        with pytest.raises(ConfigError, match=match):
            UnifiedServerConfig(tenants=bad)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0201, "21ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (3725.25, "1h2m5.25s"),
    ],
)
def test_reset_times_are_written_as_openai_writes_them(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


def test_a_request_is_charged_its_prompt_estimate_plus_max_tokens_whatever_its_shape() -> None:
    chat = {"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 10}
    assert charged_tokens("llm", chat) == 100 + 1 + 10
    parts = {"messages": [{"content": [{"type": "text", "text": "x" * 40}, {"text": {}}]}]}
    assert charged_tokens("llm", parts) == 10 + 1 + 256  # the engine's default max_tokens
    assert charged_tokens("llm", {"prompt": [1, 2, 3], "max_tokens": 1}) == 3 + 1 + 1
    for odd in ({"messages": [[{"text": 5}]]}, {"messages": "hi"}, {"prompt": [[1], None]}):
        assert charged_tokens("llm", odd) >= 257  # never an error: the engine validates
    assert charged_tokens("embedding", {"input": ["x" * 40]}) == 11
