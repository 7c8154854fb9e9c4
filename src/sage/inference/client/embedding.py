"""Embedders that run without a server, behind one single-text interface."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from typing import Any

from sage.common.errors import ConfigError

__all__ = [
    "BaseEmbedding",
    "EmbeddingClientAdapter",
    "EmbeddingFactory",
    "HFEmbedding",
    "HashEmbedding",
    "OpenAIEmbedding",
]


class BaseEmbedding:
    """``embed("one text") -> vector``; ``embed_batch(texts)`` where a model can do better."""

    method: str = "base"
    dimension: int = 0

    def embed(self, text: str) -> list[float]:
        """The vector of one text (pass a list to :class:`EmbeddingClientAdapter` instead)."""
        if not isinstance(text, str):
            raise TypeError(
                f"{type(self).__name__}.embed takes one string; for a list use "
                "EmbeddingClientAdapter(embedder).embed(texts)"
            )
        return self.embed_batch([text])[0]

    def embed_batch(self, texts: Sequence[str]) -> list[list[float]]:
        """Vectors of several texts (default: one at a time)."""
        return [self.embed(t) for t in texts]


class HashEmbedding(BaseEmbedding):
    """Feature hashing: each word adds +/-1 to one of ``dim`` buckets; unit length.

    No model, no dependencies, deterministic across processes: for tests and for pipelines
    that need vectors before a model is available. Not semantic.
    """

    method = "hash"
    _word = re.compile(r"[a-z][a-z_0-9]{1,}")

    def __init__(self, dim: int = 384) -> None:
        if dim < 1:
            raise ConfigError(f"dim={dim} must be positive")
        self.dimension = dim

    def embed_batch(self, texts: Sequence[str]) -> list[list[float]]:
        out = []
        for text in texts:
            vector = [0.0] * self.dimension
            for word in self._word.findall(text.lower()):
                digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
                bucket = int.from_bytes(digest[:3], "little") % self.dimension
                vector[bucket] += 1.0 if digest[3] & 1 else -1.0
            norm = math.sqrt(sum(v * v for v in vector))
            out.append(
                [v / norm for v in vector]
                if norm
                else [1.0 / math.sqrt(self.dimension)] * self.dimension
            )
        return out


class HFEmbedding(BaseEmbedding):
    """A sentence-transformers model in this process (default: the bundled all-MiniLM-L6-v2).

    ``model`` is a bundled name, a local directory, or a hub name in the local HF cache.
    Vectors are L2-normalised.
    """

    method = "hf"

    def __init__(self, model: str = "all-minilm-l6-v2") -> None:
        from sage.inference.engines.models import resolve_model

        spec = resolve_model(model, "embedding")
        from sentence_transformers import SentenceTransformer

        self.model_name = spec.name
        self._model = SentenceTransformer(str(spec.path), device="cpu")
        loaded: Any = self._model
        get_dim = (
            getattr(loaded, "get_embedding_dimension", None)
            or loaded.get_sentence_embedding_dimension
        )
        self.dimension = int(get_dim())

    def embed_batch(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = self._model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)
        return list(vectors.tolist())


class OpenAIEmbedding(BaseEmbedding):
    """Any OpenAI-compatible ``/v1/embeddings`` endpoint (a SAGE gateway, or a cloud one)."""

    method = "openai"

    def __init__(self, model: str, base_url: str, api_key: str | None = None) -> None:
        from sage.inference.client.unified import UnifiedInferenceClient

        self.model_name = model
        self._client = UnifiedInferenceClient(
            mode="openai", embedding_base_url=base_url, embedding_model=model, api_key=api_key
        )
        self.dimension = len(self._client.embed("dimension probe"))

    def embed_batch(self, texts: Sequence[str]) -> list[list[float]]:
        return list(self._client.embed(list(texts)))


class EmbeddingFactory:
    """Builds an embedder by method name."""

    METHODS = ("hf", "hash", "openai")

    @staticmethod
    def create(method: str, **kwargs: Any) -> BaseEmbedding:
        """An embedder: ``"hf"`` (``model=``), ``"hash"`` (``dim=``) or ``"openai"``.

        ``"openai"`` takes ``model=``, ``base_url=`` and ``api_key=``.

        Raises:
            ConfigError: an unknown method (the message lists them).
        """
        name = method.lower()
        if name in ("hf", "huggingface", "sentence-transformers"):
            return HFEmbedding(**kwargs)
        if name == "hash":
            return HashEmbedding(**kwargs)
        if name == "openai":
            return OpenAIEmbedding(**kwargs)
        raise ConfigError(
            f"unknown embedding method {method!r}; use one of {', '.join(EmbeddingFactory.METHODS)}"
        )


class EmbeddingClientAdapter:
    """The batch interface over a single-text embedder: ``embed(texts) -> vectors``."""

    def __init__(self, embedder: BaseEmbedding) -> None:
        self.embedder = embedder
        self.dimension = embedder.dimension

    def embed(self, texts: str | Sequence[str]) -> list[list[float]]:
        """Vectors for ``texts`` (a single string counts as a list of one)."""
        batch = [texts] if isinstance(texts, str) else list(texts)
        return self.embedder.embed_batch(batch)
