"""Building an engine object by name: the CPU engines, the GPU-instance simulators, the stubs."""

from __future__ import annotations

from typing import Any

from sage.inference.engines.base import EmbeddingEngine, LLMEngine
from sage.inference.engines.models import resolve_model

__all__ = ["ENGINES", "build_engine"]

ENGINES = ("cpu", "simulated", "stub", "vllm")


def build_engine(
    kind: str, model: str, engine: str = "cpu", **options: Any
) -> LLMEngine | EmbeddingEngine:
    """The engine object for ``sage llm serve --engine``.

    ``stub`` and ``simulated`` accept any model name (nothing is loaded). ``simulated`` takes
    ``profile=`` (a :class:`~sage.inference.engines.simulated.SimulatorProfile`,
    a mapping of its fields, or ``None`` for the defaults) and ignores the CPU engine's options.

    Raises:
        ConfigError: the model is not available, the engine name is unknown or the
            simulator profile is invalid.
    """
    from sage.common.errors import ConfigError

    if engine == "simulated":
        from sage.inference.engines.simulated import (
            SimulatedEmbeddingEngine,
            SimulatedLLMEngine,
            SimulatorProfile,
        )

        profile = options.get("profile")
        if profile is not None and not isinstance(profile, SimulatorProfile):
            profile = SimulatorProfile.from_mapping(profile)
        if kind == "llm":
            return SimulatedLLMEngine(model, profile)
        return SimulatedEmbeddingEngine(model, profile)
    if engine == "stub":
        from sage.inference.engines.stub import StubEmbeddingEngine, StubLLMEngine

        return StubLLMEngine(model) if kind == "llm" else StubEmbeddingEngine(model)
    if engine != "cpu":
        raise ConfigError(
            f"engine {engine!r} has no in-process server; use one of {', '.join(ENGINES)}"
        )
    spec = resolve_model(model, "llm" if kind == "llm" else "embedding")
    if kind == "llm":
        from sage.inference.engines.transformers_llm import TransformersLLMEngine

        return TransformersLLMEngine(
            spec,
            max_batch=int(options.get("max_batch", 8)),
            dtype=str(options.get("dtype") or "float32"),
            threads=options.get("threads"),
        )
    from sage.inference.engines.sentence_embedding import SentenceTransformerEngine

    return SentenceTransformerEngine(spec)
