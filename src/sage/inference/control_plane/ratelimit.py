"""Per-tenant rate limits: requests per minute (RPM) and tokens per minute (TPM).

Each limit is a token bucket of ``limit`` units, full at the start and refilled
continuously at ``limit / 60`` units a second, so a tenant may burst up to its whole
minute's budget and then goes at the limit's pace (what OpenAI's limits do too). A request
takes one unit of the request bucket and its predicted tokens (prompt estimate plus
``max_tokens``) of the token bucket, and is admitted only when both hold enough; a refused
request takes nothing.

What each limit tells a client (the ``x-ratelimit-*`` headers): the limit, what remains
after this request, and how long until the bucket is full again (``reset``). A refused
request is told when both buckets will hold enough for it (``Retry-After``).

Pure and synchronous (``now`` is passed in), like the queues: tested with a fake clock.

Example:
    >>> limits = RateLimiter(rpm=2, tpm=None, now=0.0)
    >>> [limits.admit(10, now=0.0).admitted for _ in range(3)]
    [True, True, False]
    >>> limits.admit(10, now=0.0).retry_after_s  # one request comes back every 30 s
    30.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["LimitState", "RateLimiter", "TokenBucket", "Verdict"]


@dataclass(frozen=True)
class LimitState:
    """One limit as a client is told it.

    Attributes:
        limit: Units per minute.
        remaining: Whole units left now.
        reset_s: Seconds until the bucket is full again.
    """

    limit: int
    remaining: int
    reset_s: float


@dataclass
class TokenBucket:
    """``limit`` units a minute, refilled continuously; full when made.

    Attributes:
        limit: Units per minute (the bucket's size).
        level: Units available at ``updated``.
        updated: When ``level`` was last brought up to date.
    """

    limit: int
    level: float
    updated: float

    @classmethod
    def full(cls, limit: int, now: float) -> TokenBucket:
        """A full bucket of ``limit`` units a minute."""
        return cls(limit, float(limit), now)

    def refill(self, now: float) -> None:
        """Add what has dripped in since the last look."""
        if now > self.updated:
            self.level = min(float(self.limit), self.level + (now - self.updated) * self.limit / 60)
            self.updated = now

    def wait_s(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0: now); call :meth:`refill` first."""
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing * 60 / self.limit

    def state(self) -> LimitState:
        """The limit, what remains and when it is full again."""
        reset_s = (self.limit - self.level) * 60 / self.limit
        return LimitState(self.limit, math.floor(self.level), reset_s)


@dataclass(frozen=True)
class Verdict:
    """What a tenant's limits say about one request.

    Attributes:
        admitted: Whether it may go (it took its units).
        requests: The RPM limit after the decision (``None``: no RPM limit).
        tokens: The TPM limit after the decision (``None``: no TPM limit).
        exceeded: The limits that refused it (``"rpm"``, ``"tpm"``); empty when admitted.
        retry_after_s: Seconds until both limits could admit it (0 when admitted).
    """

    admitted: bool
    requests: LimitState | None
    tokens: LimitState | None
    exceeded: tuple[str, ...] = ()
    retry_after_s: float = 0.0


class RateLimiter:
    """The RPM and TPM buckets of one tenant.

    Args:
        rpm: Requests per minute (``None``: no limit).
        tpm: Tokens per minute (``None``: no limit).
        now: The clock now (the buckets start full).
    """

    def __init__(self, rpm: int | None, tpm: int | None, now: float) -> None:
        self.requests = TokenBucket.full(rpm, now) if rpm is not None else None
        self.tokens = TokenBucket.full(tpm, now) if tpm is not None else None

    def fits(self, tokens: int) -> bool:
        """Whether a request of ``tokens`` can ever pass the TPM limit (not above it)."""
        return self.tokens is None or tokens <= self.tokens.limit

    def admit(self, tokens: int, now: float) -> Verdict:
        """Admit a request of ``tokens`` predicted tokens if both limits allow (taking one
        request and ``tokens`` tokens), else refuse it (taking nothing)."""
        waits: dict[str, float] = {}
        for name, bucket, amount in (("rpm", self.requests, 1), ("tpm", self.tokens, tokens)):
            if bucket is not None:
                bucket.refill(now)
                waits[name] = bucket.wait_s(amount)
        exceeded = tuple(name for name, wait in waits.items() if wait > 0)
        if not exceeded:
            if self.requests is not None:
                self.requests.level -= 1
            if self.tokens is not None:
                self.tokens.level -= tokens
        return Verdict(
            admitted=not exceeded,
            requests=self.requests.state() if self.requests is not None else None,
            tokens=self.tokens.state() if self.tokens is not None else None,
            exceeded=exceeded,
            retry_after_s=max(waits.values(), default=0.0),
        )
