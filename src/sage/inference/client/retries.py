"""Retrying the answers that say "not now": 429 and 503, after the ``Retry-After`` they give.

A gateway answers 429 when its queue for the model is full and 503 when no instance can take
the request now (or it is shutting down); an engine answers 503 when it has no room. Either
way the request did not run, so sending it again is safe, streamed or not: a stream is
retried only when the refusal is its answer, before any of its bytes reached the caller.

Example:
    >>> policy = RetryPolicy(attempts=3, max_wait_s=10.0)
    >>> retry_after_s("2")
    2.0
    >>> policy.wait_s(429, "30", attempt=1)  # capped
    10.0
    >>> policy.wait_s(429, None, attempt=3) is None  # the third try was the last
    True
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import NoReturn

import httpx

from sage.common.errors import ConfigError, GatewayError
from sage.inference.client.answers import raise_for

__all__ = [
    "RETRYABLE",
    "RetryPolicy",
    "apost",
    "astream",
    "give_up",
    "post",
    "retry_after_s",
    "stream",
]

logger = logging.getLogger(__name__)

RETRYABLE = frozenset({429, 503})
"""The statuses that say the request did not run and may be sent again later."""


def retry_after_s(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """The seconds a ``Retry-After`` header asks to wait: delta-seconds or an HTTP date
    (RFC 9110); ``None`` if absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # an HTTP date is in GMT
            return None
        seconds = when.timestamp() - now()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"RetryPolicy({name}={value!r}) is invalid; use a finite number {bound}")


@dataclass(frozen=True)
class RetryPolicy:
    """How :class:`~sage.inference.client.unified.UnifiedInferenceClient` retries 429 and
    503 answers (see the module docstring).

    Attributes:
        attempts: Tries in all, the first included (1: never retry).
        max_wait_s: Longest wait before a retry; a longer ``Retry-After`` is cut to it.
        backoff_s: Wait before the first retry of an answer without ``Retry-After``,
            doubled for each further one (up to ``max_wait_s``).
        sleep: How a synchronous call waits (tests pass a fake that records the waits).
        async_sleep: How an async call waits.

    Raises:
        ConfigError: a value is out of range.
    """

    attempts: int = 3
    max_wait_s: float = 30.0
    backoff_s: float = 0.5
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    async_sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, repr=False)

    def __post_init__(self) -> None:
        if (
            isinstance(self.attempts, bool)
            or not isinstance(self.attempts, int)
            or (self.attempts < 1)
        ):
            raise ConfigError(
                f"RetryPolicy(attempts={self.attempts!r}) is invalid; use an integer >= 1 "
                "(tries in all; 1 never retries)"
            )
        _positive("max_wait_s", self.max_wait_s, allow_zero=True)
        _positive("backoff_s", self.backoff_s, allow_zero=True)

    def wait_s(self, status: int, retry_after: str | None, attempt: int) -> float | None:
        """Seconds to wait before trying again after try ``attempt`` (1-based) answered
        ``status`` with header ``retry_after``; ``None``: do not try again."""
        if status not in RETRYABLE or attempt >= self.attempts:
            return None
        asked = retry_after_s(retry_after)
        wait = self.backoff_s * 2 ** (attempt - 1) if asked is None else asked
        return min(wait, self.max_wait_s)

    def after(self, response: httpx.Response, attempt: int) -> float | None:
        """:meth:`wait_s` for ``response``."""
        return self.wait_s(response.status_code, response.headers.get("retry-after"), attempt)


def give_up(response: httpx.Response, tries: int) -> NoReturn:
    """Raise the :class:`GatewayError` of an error answer (status >= 400), saying how often
    it was tried when it is a refusal that retries did not get past."""
    try:
        raise_for(response)
    except GatewayError as exc:
        if response.status_code not in RETRYABLE or tries < 2:
            raise
        raise GatewayError(
            f"{exc} (still {response.status_code} after {tries} tries; to wait longer pass "
            "retry=RetryPolicy(attempts=..., max_wait_s=...) to UnifiedInferenceClient)",
            exc.status,
            exc.param,
        ) from None
    raise AssertionError(f"give_up() on a {response.status_code} answer, not an error")


def _log_retry(response: httpx.Response, policy: RetryPolicy, wait: float, attempt: int) -> None:
    logger.debug(
        "%s answered %d; try %d of %d in %.2f s",
        response.url,
        response.status_code,
        attempt + 1,
        policy.attempts,
        wait,
    )


def post(
    http: httpx.Client, policy: RetryPolicy, url: str, content: bytes, headers: dict[str, str]
) -> httpx.Response:
    """POST ``content``, retrying 429 and 503 answers by ``policy``.

    Returns:
        The last answer (its status may be any other error: the caller reads it).

    Raises:
        GatewayError: the last answer is still a refusal after retries.
    """
    attempt = 1
    while True:
        response = http.post(url, content=content, headers=headers)
        wait = policy.after(response, attempt)
        if wait is None:
            if attempt > 1 and response.status_code in RETRYABLE:
                give_up(response, attempt)
            return response
        _log_retry(response, policy, wait, attempt)
        policy.sleep(wait)
        attempt += 1


async def apost(
    http: httpx.AsyncClient,
    policy: RetryPolicy,
    url: str,
    content: bytes,
    headers: dict[str, str],
) -> httpx.Response:
    """:func:`post` without blocking the event loop."""
    attempt = 1
    while True:
        response = await http.post(url, content=content, headers=headers)
        wait = policy.after(response, attempt)
        if wait is None:
            if attempt > 1 and response.status_code in RETRYABLE:
                give_up(response, attempt)
            return response
        _log_retry(response, policy, wait, attempt)
        await policy.async_sleep(wait)
        attempt += 1


@contextmanager
def stream(
    http: httpx.Client, policy: RetryPolicy, url: str, content: bytes, headers: dict[str, str]
) -> Iterator[httpx.Response]:
    """A streamed POST whose answer is not an error, retrying 429 and 503 before it.

    Raises:
        GatewayError: the answer is an error (a refusal still after retries, or another).
    """
    attempt = 1
    while True:
        with http.stream("POST", url, content=content, headers=headers) as response:
            if response.status_code < 400:
                yield response
                return
            response.read()
            wait = policy.after(response, attempt)  # no byte of a body was read yet
            if wait is None:
                give_up(response, attempt)
            _log_retry(response, policy, wait, attempt)
        policy.sleep(wait)
        attempt += 1


@asynccontextmanager
async def astream(
    http: httpx.AsyncClient,
    policy: RetryPolicy,
    url: str,
    content: bytes,
    headers: dict[str, str],
) -> AsyncIterator[httpx.Response]:
    """:func:`stream` without blocking the event loop."""
    attempt = 1
    while True:
        async with http.stream("POST", url, content=content, headers=headers) as response:
            if response.status_code < 400:
                yield response
                return
            await response.aread()
            wait = policy.after(response, attempt)  # no byte of a body was read yet
            if wait is None:
                give_up(response, attempt)
            _log_retry(response, policy, wait, attempt)
        await policy.async_sleep(wait)
        attempt += 1
