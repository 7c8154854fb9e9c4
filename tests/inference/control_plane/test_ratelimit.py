"""Per-tenant RPM/TPM token buckets with a fake clock: admission, refill, what a refused
request is told."""

from __future__ import annotations

import pytest

from sage.inference.control_plane.ratelimit import LimitState, RateLimiter


def test_a_full_minute_may_be_spent_at_once_then_it_refills_at_the_limits_pace() -> None:
    limits = RateLimiter(rpm=60, tpm=None, now=0.0)
    assert all(limits.admit(1, now=0.0).admitted for _ in range(60))
    refused = limits.admit(1, now=0.0)
    assert not refused.admitted and refused.exceeded == ("rpm",)
    assert refused.retry_after_s == pytest.approx(1.0)  # one request a second drips back
    assert refused.requests == LimitState(60, 0, 60.0)
    assert not limits.admit(1, now=0.5).admitted
    again = limits.admit(1, now=1.0)
    assert again.admitted and again.requests is not None and again.requests.remaining == 0
    assert again.tokens is None  # no TPM limit: nothing said about tokens


def test_tokens_are_counted_by_the_requests_prediction_and_a_refusal_takes_nothing() -> None:
    limits = RateLimiter(rpm=100, tpm=1000, now=0.0)
    first = limits.admit(700, now=0.0)
    assert first.admitted and first.tokens == LimitState(1000, 300, 42.0)
    refused = limits.admit(400, now=0.0)  # 100 tokens short: 6 s at 1000/min
    assert not refused.admitted and refused.exceeded == ("tpm",)
    assert refused.retry_after_s == pytest.approx(6.0)
    assert refused.requests is not None and refused.requests.remaining == 99  # not taken
    assert limits.admit(300, now=0.0).admitted  # what is left still fits


def test_both_limits_must_allow_and_the_retry_covers_the_slower_one() -> None:
    limits = RateLimiter(rpm=1, tpm=100, now=0.0)
    assert limits.admit(90, now=0.0).admitted
    refused = limits.admit(50, now=0.0)
    assert refused.exceeded == ("rpm", "tpm")
    assert refused.retry_after_s == pytest.approx(60.0)  # the request budget takes longer


def test_a_request_larger_than_a_whole_minute_of_tokens_never_fits() -> None:
    limits = RateLimiter(rpm=None, tpm=100, now=0.0)
    assert limits.fits(100) and not limits.fits(101)
    assert RateLimiter(rpm=5, tpm=None, now=0.0).fits(10**9)


def test_the_buckets_never_hold_more_than_a_minute() -> None:
    limits = RateLimiter(rpm=2, tpm=None, now=0.0)
    assert limits.admit(1, now=3600.0).requests == LimitState(2, 1, 30.0)
    assert limits.admit(1, now=3600.0).admitted
    assert not limits.admit(1, now=3600.0).admitted
