"""Engines behind one small interface: CPU transformers LLM, embeddings, vLLM, stubs."""

from sage.inference.engines.base import (
    Delta,
    EmbeddingEngine,
    LLMEngine,
    SamplingParams,
)

__all__ = ["Delta", "EmbeddingEngine", "LLMEngine", "SamplingParams"]
