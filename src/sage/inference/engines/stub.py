"""Stub engines that answer at once: for measuring the gateway and for tests.

They are not models. The LLM stub echoes a fixed sentence word by word; the embedding stub
returns deterministic hash vectors. Named as stubs everywhere they appear.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from sage.inference.engines.base import (
    Delta,
    EmbeddingEngine,
    LLMEngine,
    SamplingParams,
    prompt_text,
)

__all__ = ["StubEmbeddingEngine", "StubLLMEngine"]

ANSWER = "This is the stub engine answering at once."


class StubLLMEngine(LLMEngine):
    """Answers every request at once with :data:`ANSWER` (cut to ``max_tokens`` words)."""

    def __init__(self, model_name: str = "stub-llm", context_length: int = 4096) -> None:
        self.model_name = model_name
        self.context_length = context_length

    def prompt_tokens(
        self,
        messages: Sequence[dict[str, Any]] | None,
        prompt: str | None,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> int:
        return len(prompt_text(messages, prompt).split())

    async def generate(
        self,
        params: SamplingParams,
        *,
        messages: Sequence[dict[str, Any]] | None = None,
        prompt: str | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> AsyncIterator[Delta]:
        words = ANSWER.split()
        kept = words[: params.max_tokens]
        for i, word in enumerate(kept):
            yield Delta(word if i == 0 else " " + word)
        yield Delta(
            "",
            finish_reason="length" if len(kept) < len(words) else "stop",
            prompt_tokens=self.prompt_tokens(messages, prompt),
            completion_tokens=len(kept),
        )


class StubEmbeddingEngine(EmbeddingEngine):
    """Deterministic unit vectors from a hash of each text."""

    def __init__(self, model_name: str = "stub-embedding", dimension: int = 16) -> None:
        self.model_name = model_name
        self.dimension = dimension

    async def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        vectors = []
        for text in texts:
            digest = hashlib.sha256(text.encode()).digest()
            raw = [digest[i % len(digest)] - 127.5 for i in range(self.dimension)]
            norm = sum(v * v for v in raw) ** 0.5
            vectors.append([v / norm for v in raw])
        return vectors, sum(len(t.split()) for t in texts)
