"""Building an engine object by name: the CPU engines, the GPU-instance simulators, the stubs."""

from __future__ import annotations

from typing import Any

from sage.inference.engines.base import EmbeddingEngine, LLMEngine
from sage.inference.engines.models import ModelSpec, resolve_model

__all__ = ["CPU_ENGINES", "ENGINES", "build_engine", "cpu_llm_engine"]

ENGINES = ("cpu", "llama.cpp", "transformers", "simulated", "stub", "vllm")
CPU_ENGINES = ("cpu", "llama.cpp", "transformers")
"""Engines that load a real model in the server's process (``cpu``: llama.cpp for a GGUF
model, transformers for a Hugging Face checkpoint)."""


def cpu_llm_engine(spec: ModelSpec, engine: str = "cpu") -> str:
    """Which CPU engine serves ``spec``: ``llama.cpp`` or ``transformers``.

    Raises:
        ConfigError: the engine cannot load that model's format.
    """
    from sage.common.errors import ConfigError

    if engine == "cpu":
        return "llama.cpp" if spec.gguf_file else "transformers"
    if engine == "llama.cpp" and not spec.gguf_file:
        raise ConfigError(
            f"{spec.name} is a Hugging Face checkpoint ({spec.path}), not a GGUF file; serve "
            "it with --engine transformers, or pass the path of a .gguf file"
        )
    return engine


def build_engine(
    kind: str, model: str, engine: str = "cpu", **options: Any
) -> LLMEngine | EmbeddingEngine:
    """The engine object for ``sage llm serve --engine``.

    ``stub`` and ``simulated`` accept any model name (nothing is loaded). ``simulated`` takes
    ``profile=`` (a :class:`~sage.inference.engines.simulated.SimulatorProfile`,
    a mapping of its fields, or ``None`` for the defaults) and ignores the CPU engines'
    options. Every LLM engine takes ``context_length`` (most tokens of one request, prompt
    and answer; ``None``: its default). The CPU engines take ``max_batch`` (sequences
    decoded together) and ``threads``; transformers also ``dtype``; llama.cpp also
    ``kv_tokens``. An embedding model is served by sentence-transformers whichever CPU
    engine is named, and takes ``dtype`` (``float32``, ``bfloat16``, ``auto``).

    Raises:
        ConfigError: the model is not available, the engine name is unknown, the engine
            cannot load the model's format, or the simulator profile is invalid.
    """
    from sage.common.errors import ConfigError

    context = options.get("context_length")
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
            return SimulatedLLMEngine(model, profile, **_context(context))
        return SimulatedEmbeddingEngine(model, profile)
    if engine == "stub":
        from sage.inference.engines.stub import StubEmbeddingEngine, StubLLMEngine

        if kind == "llm":
            return StubLLMEngine(model, **_context(context))
        return StubEmbeddingEngine(model)
    if engine not in CPU_ENGINES:
        raise ConfigError(
            f"engine {engine!r} has no in-process server; use one of {', '.join(ENGINES)}"
        )
    spec = resolve_model(model, "llm" if kind == "llm" else "embedding")
    if kind != "llm":
        from sage.inference.engines.sentence_embedding import SentenceTransformerEngine

        return SentenceTransformerEngine(spec, dtype=str(options.get("dtype") or "float32"))
    threads = options.get("threads")
    if cpu_llm_engine(spec, engine) == "llama.cpp":
        if options.get("dtype") not in (None, "float32"):
            raise ConfigError(
                f"dtype={options['dtype']!r} is for the transformers engine; a GGUF model's "
                "precision is its quantisation (pick another .gguf file to change it)"
            )
        from sage.inference.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine(
            spec,
            slots=int(options.get("max_batch", 8)),
            threads=threads,
            context_length=context,
            kv_tokens=options.get("kv_tokens"),
        )
    from sage.inference.engines.transformers_llm import TransformersLLMEngine

    return TransformersLLMEngine(
        spec,
        max_batch=int(options.get("max_batch", 8)),
        dtype=str(options.get("dtype") or "float32"),
        threads=threads,
        context_length=context,
    )


def _context(context_length: int | None) -> dict[str, int]:
    """``context_length=`` for an engine whose own default applies when it is ``None``."""
    return {} if context_length is None else {"context_length": int(context_length)}
