"""The request trace: who asks what, and when, drawn from a seed.

A trace is plain data (a tuple of :class:`TraceRequest`), built before anything is sent, so
every policy of a comparison gets the very same requests at the very same offsets. Two
independent random streams are drawn from the seed: one for the requests' attributes (kind,
class, lengths) and one for the arrival times, so changing the rate moves the requests in
time without changing what they are.

Prompts and texts are made of three-letter words: about one token each for real tokenizers
and exactly one for the simulator's estimate (four characters per token).

Example:
    >>> from sage.benchmark.control_plane.config import LLMBenchmarkConfig
    >>> trace = build_trace(LLMBenchmarkConfig(num_requests=5), rate=10.0)
    >>> len(trace.requests), trace.requests[0].kind
    (5, 'llm')
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sage.benchmark.control_plane.config import (
    BenchmarkConfig,
    EmbeddingBenchmarkConfig,
    HybridBenchmarkConfig,
    Kind,
    LLMBenchmarkConfig,
)

__all__ = ["Trace", "TraceRequest", "arrival_times", "build_trace", "make_text", "warmup_requests"]

_VOCABULARY = (
    "the and for you are not but all can had her was one our out day get has him his how man "
    "new now old see two way who boy did its let put say she too use any ask big end far few "
    "got run set sun top try war yes yet act add age ago air art bad bed box car cut dog eat "
    "eye fly fun job key law leg lot low map mix net oil own pay red sea sit six son ten tie"
)
_WORDS = _VOCABULARY.split()


def make_text(tokens: int, offset: int) -> str:
    """A text of ``tokens`` three-letter words (about one token each), varied by ``offset``."""
    n = len(_WORDS)
    return " ".join(_WORDS[(offset * 7 + i) % n] for i in range(tokens))


@dataclass(frozen=True)
class TraceRequest:
    """One request of the trace.

    Attributes:
        index: Position in the trace (negative for warm-up requests).
        at_s: When to send it, in seconds from the start of the trace.
        kind: ``"llm"`` or ``"embedding"``.
        request_class: Name of its :class:`~.config.RequestClass`.
        priority: Its ``priority`` field.
        slo_ms: Its ``slo_ms`` field.
        prompt_tokens: LLM: prompt length in words (~tokens); embedding: words per text.
        max_tokens: LLM: ``max_tokens`` (0 for embeddings).
        texts: Embedding: texts in ``input`` (0 for LLM requests).
        tenant: The tenant sending it (empty: no tenants).
    """

    index: int
    at_s: float
    kind: Kind
    request_class: str
    priority: int
    slo_ms: float
    prompt_tokens: int
    max_tokens: int = 0
    texts: int = 0
    tenant: str = ""

    def body(self, model: str, stream: bool) -> dict[str, Any]:
        """The OpenAI-style request body (with SAGE's ``priority`` and ``slo_ms``)."""
        common = {"model": model, "priority": self.priority, "slo_ms": self.slo_ms}
        if self.kind == "embedding":
            inputs = [make_text(self.prompt_tokens, self.index * 31 + i) for i in range(self.texts)]
            return {**common, "input": inputs}
        body: dict[str, Any] = {
            **common,
            "messages": [{"role": "user", "content": make_text(self.prompt_tokens, self.index)}],
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
        }
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body


@dataclass(frozen=True)
class Trace:
    """A whole trace: its requests in send order, and the rate and seed it came from."""

    requests: tuple[TraceRequest, ...]
    rate: float
    seed: int

    @property
    def span_s(self) -> float:
        """Seconds from the first to the last scheduled arrival."""
        return self.requests[-1].at_s - self.requests[0].at_s if self.requests else 0.0

    def count(self, kind: Kind) -> int:
        """Requests of ``kind``."""
        return sum(1 for r in self.requests if r.kind == kind)


def arrival_times(config: BenchmarkConfig, rate: float, rng: random.Random) -> Iterator[float]:
    """Arrival offsets (seconds, increasing, the first after 0) at mean ``rate`` per second.

    Bursty arrivals are Poisson in "on" time at ``rate * (on + off) / on`` and mapped onto
    the wall clock by skipping the "off" periods, so the mean rate stays ``rate``.
    """
    if config.arrival_pattern == "uniform":
        yield from (i / rate for i in itertools.count(1))
        return
    on, off = config.burst_on_s, config.burst_off_s
    bursty = config.arrival_pattern == "bursty" and off > 0
    busy_rate = rate * (on + off) / on if bursty else rate
    t = 0.0
    while True:
        t += rng.expovariate(busy_rate)
        if not bursty:
            yield t
        else:
            periods, within = divmod(t, on)
            yield periods * (on + off) + within


def _kinds(config: BenchmarkConfig, rng: random.Random) -> Iterator[Kind]:
    """The kind of each request in turn (hybrid: chat with probability ``llm_ratio``)."""
    ratio = config.llm_ratio if isinstance(config, HybridBenchmarkConfig) else None
    while True:
        yield config.kinds[0] if ratio is None else ("llm" if rng.random() < ratio else "embedding")


def _request(
    config: BenchmarkConfig, index: int, at_s: float, kind: Kind, rng: random.Random
) -> TraceRequest:
    """Request ``index`` of ``kind``: its class and lengths drawn from ``rng``."""
    cls = rng.choices(config.classes, weights=[c.share for c in config.classes])[0]
    head = (index, at_s, kind, cls.name, cls.priority, cls.slo_ms)
    if kind == "llm":
        assert isinstance(config, LLMBenchmarkConfig)
        prompt = config.prompt_tokens.sample(rng)
        return TraceRequest(*head, prompt, max_tokens=config.output_tokens.sample(rng))
    assert isinstance(config, EmbeddingBenchmarkConfig)
    texts = config.texts_per_request.sample(rng)
    return TraceRequest(*head, config.text_tokens.sample(rng), texts=texts)


def _stream(
    config: BenchmarkConfig, rate: float, count: int, tenant: str = ""
) -> list[TraceRequest]:
    """``count`` requests (or those within ``config.duration_s``) at ``rate``, drawn from
    the random streams of ``tenant`` (the seed's own for no tenant)."""
    seeds = f"sage-cp-bench/{config.seed}" + (f"/tenant/{tenant}" if tenant else "")
    attributes = random.Random(f"{seeds}/attributes")
    arrivals = random.Random(f"{seeds}/arrivals")
    kinds = _kinds(config, attributes)
    times = arrival_times(config, rate, arrivals)
    if config.duration_s is not None:
        end = config.duration_s
        times = itertools.takewhile(lambda t: t < end, times)
    else:
        times = itertools.islice(times, count)
    return [
        dataclasses.replace(_request(config, i, at, next(kinds), attributes), tenant=tenant)
        for i, at in enumerate(times)
    ]


def build_trace(config: BenchmarkConfig, rate: float) -> Trace:
    """The measured trace of ``config`` at ``rate`` requests per second (all kinds).

    ``config.num_requests`` requests, or as many as arrive within ``config.duration_s``.
    With tenants, each sends its share of ``rate`` (and of ``num_requests``) from random
    streams of its own, merged by arrival: a tenant's requests do not depend on the others'.
    Deterministic: equal ``(config, rate)`` give equal traces.
    """
    if not config.tenants:
        return Trace(tuple(_stream(config, rate, config.num_requests)), rate, config.seed)
    total = sum(t.share for t in config.tenants)
    merged: list[TraceRequest] = []
    for t in config.tenants:
        count = max(1, round(config.num_requests * t.share / total))
        merged += _stream(config, rate * t.share / total, count, t.name)
    merged.sort(key=lambda r: (r.at_s, r.tenant))
    requests = tuple(dataclasses.replace(r, index=i) for i, r in enumerate(merged))
    return Trace(requests, rate, config.seed)


def warmup_requests(config: BenchmarkConfig) -> list[TraceRequest]:
    """``config.warmup_requests`` per kind, short and of mean size, sent before the trace.

    They open the connections and wake every process up; they are not measured.
    """
    out: list[TraceRequest] = []
    cls = config.classes[-1]
    tenant = config.tenants[0].name if config.tenants else ""  # the gateway wants a key
    for kind in config.kinds:
        for _ in range(config.warmup_requests):
            head = (-1 - len(out), 0.0, kind, cls.name, cls.priority, cls.slo_ms)
            if kind == "llm":
                assert isinstance(config, LLMBenchmarkConfig)
                prompt = math.ceil(config.prompt_tokens.expected())
                out.append(
                    TraceRequest(
                        *head,
                        prompt,
                        max_tokens=min(8, config.output_tokens.upper),
                        tenant=tenant,
                    )
                )
            else:
                assert isinstance(config, EmbeddingBenchmarkConfig)
                words = math.ceil(config.text_tokens.expected())
                texts = math.ceil(config.texts_per_request.expected())
                out.append(TraceRequest(*head, words, texts=texts, tenant=tenant))
    return out
