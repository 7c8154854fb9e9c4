"""The llama.cpp CPU engine: GGUF weights kept quantised, continuous batching, a prefix cache."""

from sage.inference.engines.llamacpp.engine import LlamaCppEngine

__all__ = ["LlamaCppEngine"]
