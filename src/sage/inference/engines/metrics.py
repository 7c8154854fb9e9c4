"""What an engine server measures, as Prometheus families: requests, errors and requests
running per endpoint; request latency, time to first token and time per output token as
histograms in seconds; prompt and generated tokens as counters (vLLM's set, named
``sage_engine_*``). An engine that steps (llama.cpp) adds its scheduler's figures: sequences
running and waiting, steps, and what became of cancelled requests (:func:`step_families`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from time import perf_counter
from typing import Literal

from sage.common.observability.prometheus import MetricFamily
from sage.common.stats import REQUEST_BUCKETS, TOKEN_BUCKETS, Histogram
from sage.inference.engines.base import Delta, StepFigures

__all__ = ["Endpoint", "EngineFigures", "step_families"]

Endpoint = Literal["chat", "completions", "embeddings"]


class EngineFigures:
    """The figures of one engine server (one model), written on its event loop.

    Args:
        model: The served model's name (the ``model`` label of every sample).
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.requests: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.running = 0
        self.duration: dict[str, Histogram] = {}
        self.ttft = Histogram(REQUEST_BUCKETS)
        self.per_token = Histogram(TOKEN_BUCKETS)
        self.prompt_tokens = 0
        self.generation_tokens = 0

    def _finish(self, endpoint: Endpoint, started: float, failed: bool) -> None:
        self.requests[endpoint] = self.requests.get(endpoint, 0) + 1
        if failed:
            self.errors[endpoint] = self.errors.get(endpoint, 0) + 1
        histogram = self.duration.get(endpoint)
        if histogram is None:
            histogram = self.duration[endpoint] = Histogram(REQUEST_BUCKETS)
        histogram.observe(perf_counter() - started)

    async def track(
        self, endpoint: Endpoint, deltas: AsyncIterator[Delta], started: float
    ) -> AsyncIterator[Delta]:
        """``deltas``, timed: the first one's arrival is the time to first token; at the
        end (the last delta, an error, or the client going away) the request's duration,
        tokens and time per output token (after the first) are counted, and ``deltas`` is
        closed."""
        self.running += 1
        first: float | None = None
        last: Delta | None = None
        failed = False
        try:
            async for delta in deltas:
                if first is None:
                    first = perf_counter()
                    self.ttft.observe(first - started)
                last = delta
                yield delta
        except Exception:
            failed = True
            raise
        finally:
            self.running -= 1
            self._finish(endpoint, started, failed)
            if last is not None:
                self.prompt_tokens += last.prompt_tokens
                self.generation_tokens += last.completion_tokens
                if first is not None and last.completion_tokens > 1:
                    per_token = (perf_counter() - first) / (last.completion_tokens - 1)
                    self.per_token.observe(per_token)
            await deltas.aclose()  # type: ignore[attr-defined]

    def embedded(self, started: float, tokens: int, failed: bool) -> None:
        """Count an embedding request that started at ``started`` (perf_counter)."""
        self._finish("embeddings", started, failed)
        self.prompt_tokens += tokens

    def families(self) -> list[MetricFamily]:
        """The figures as Prometheus families."""
        model = self.model
        requests = MetricFamily(
            "sage_engine_requests_total", "counter", "Requests the engine finished, per endpoint."
        )
        errors = MetricFamily(
            "sage_engine_errors_total", "counter", "Requests the engine failed, per endpoint."
        )
        for endpoint, count in sorted(self.requests.items()):
            requests.add(count, model=model, endpoint=endpoint)
            errors.add(self.errors.get(endpoint, 0), model=model, endpoint=endpoint)
        running = MetricFamily("sage_engine_requests_running", "gauge", "Requests running now.")
        running.add(self.running, model=model)
        duration = MetricFamily(
            "sage_engine_request_duration_seconds",
            "histogram",
            "Seconds from a request's arrival at the engine to its last token or vector.",
        )
        for endpoint, histogram in sorted(self.duration.items()):
            duration.add_histogram(histogram, model=model, endpoint=endpoint)
        ttft = MetricFamily(
            "sage_engine_time_to_first_token_seconds",
            "histogram",
            "Seconds from a generation request's arrival to its first token.",
        )
        per_token = MetricFamily(
            "sage_engine_time_per_output_token_seconds",
            "histogram",
            "Seconds per generated token after the first, one sample per request.",
        )
        prompt = MetricFamily(
            "sage_engine_prompt_tokens_total", "counter", "Prompt (and embedded) tokens read."
        )
        generated = MetricFamily(
            "sage_engine_generation_tokens_total", "counter", "Tokens generated."
        )
        ttft.add_histogram(self.ttft, model=model)
        per_token.add_histogram(self.per_token, model=model)
        prompt.add(self.prompt_tokens, model=model)
        generated.add(self.generation_tokens, model=model)
        return [requests, errors, running, duration, ttft, per_token, prompt, generated]


def step_families(figures: StepFigures, model: str) -> list[MetricFamily]:
    """A stepping engine's scheduler figures as Prometheus families (``model`` labels them)."""
    running = MetricFamily(
        "sage_engine_sequences_running", "gauge", "Requests holding a slot of the engine now."
    )
    waiting = MetricFamily(
        "sage_engine_sequences_waiting", "gauge", "Requests in the engine waiting for a slot."
    )
    steps = MetricFamily(
        "sage_engine_steps_total", "counter", "Steps (batched forward passes) computed."
    )
    cancelled = MetricFamily(
        "sage_engine_cancelled_total",
        "counter",
        "Requests the engine dropped because their caller stopped reading (left, timed out).",
    )
    after = MetricFamily(
        "sage_engine_steps_after_cancel_total",
        "counter",
        "Steps that computed a cancelled request and ended after it was cancelled.",
    )
    most = MetricFamily(
        "sage_engine_steps_after_cancel_max",
        "gauge",
        "The most steps one cancelled request was computed in after it was cancelled.",
    )
    running.add(figures.running, model=model)
    waiting.add(figures.waiting, model=model)
    steps.add(figures.steps, model=model)
    cancelled.add(figures.cancelled, model=model)
    after.add(figures.steps_after_cancel, model=model)
    most.add(figures.max_steps_after_cancel, model=model)
    return [running, waiting, steps, cancelled, after, most]
