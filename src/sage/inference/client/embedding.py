"""Embedders behind one single-text interface: in-process (``hash``, ``hf``) or remote
(``openai`` for any OpenAI-compatible endpoint, ``ollama`` for an Ollama server)."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from sage.common.errors import ConfigError, GatewayError

__all__ = [
    "BaseEmbedding",
    "EmbeddingClientAdapter",
    "EmbeddingFactory",
    "HFEmbedding",
    "HashEmbedding",
    "OllamaEmbedding",
    "OpenAIEmbedding",
]


class BaseEmbedding:
    """``embed("one text") -> vector``; ``embed_batch(texts)`` where a model can do better."""

    method: str = "base"
    dimension: int = 0  # 0: not known yet (a remote embedder learns it from its first answer)

    @property
    def method_name(self) -> str:
        """The :class:`EmbeddingFactory` name of this embedder ("hash", "hf", "openai", ...)."""
        return self.method

    def get_dim(self) -> int:
        """The length of this embedder's vectors; a remote embedder without ``dim=`` embeds
        one probe text to learn it, once."""
        if not self.dimension:
            self.dimension = len(self.embed("dimension probe"))
        return self.dimension

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


class _RemoteEmbedding(BaseEmbedding):
    """An embedder that asks a server: checks its arguments, and every answer's shape."""

    def __init__(self, model: str, base_url: str, dim: int | None) -> None:
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"model={model!r} must name the server's embedding model")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"base_url={base_url!r} must be an http:// or https:// URL of the server"
            )
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ConfigError(
                f"dim={dim!r} must be a positive integer, or None to learn it from the server"
            )
        self.model_name = model
        self.base_url = base_url.rstrip("/")
        self.dimension = dim or 0

    def _checked(self, found: Any, count: int, where: str) -> list[list[float]]:
        """``found`` if it is ``count`` vectors of this embedder's length (learnt if unknown)."""
        if not isinstance(found, list) or len(found) != count:
            got = len(found) if isinstance(found, list) else type(found).__name__
            raise GatewayError(f"{where} answered {got} vectors for {count} texts")
        for vector in found:
            if not isinstance(vector, list) or not vector:
                raise GatewayError(f"{where} answered an empty or malformed vector")
            if self.dimension and len(vector) != self.dimension:
                raise GatewayError(
                    f"{where} answered {len(vector)}-dimensional vectors, not dim="
                    f"{self.dimension}; pass the model's dimension as dim= or leave dim out"
                )
            self.dimension = len(vector)
        return found


class OpenAIEmbedding(_RemoteEmbedding):
    """Any OpenAI-compatible ``/v1/embeddings`` endpoint: a SAGE gateway, vLLM, a cloud one.

    ``base_url`` is the part before ``/embeddings`` (e.g. ``http://127.0.0.1:8090/v1``).
    """

    method = "openai"

    def __init__(
        self, model: str, base_url: str, api_key: str | None = None, dim: int | None = None
    ) -> None:
        from sage.inference.client.unified import UnifiedInferenceClient

        super().__init__(model, base_url, dim)
        self._client = UnifiedInferenceClient(
            mode="openai", embedding_base_url=base_url, embedding_model=model, api_key=api_key
        )

    def embed_batch(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        found = self._client.embed(list(texts))
        return self._checked(found, len(texts), f"{self.base_url}/embeddings")


class OllamaEmbedding(_RemoteEmbedding):
    """An Ollama server's embedding model, through its ``POST /api/embed`` (one request a
    batch), so Ollama-served models plug in where SAGE expects an embedder."""

    method = "ollama"

    def __init__(
        self,
        model: str = "nomic-embed-text",
        base_url: str = "http://127.0.0.1:11434",
        dim: int | None = None,
        timeout: float = 120.0,
    ) -> None:
        super().__init__(model, base_url, dim)
        self._http = httpx.Client(timeout=timeout)

    def embed_batch(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        url = f"{self.base_url}/api/embed"
        body = orjson.dumps({"model": self.model_name, "input": list(texts)})
        try:
            response = self._http.post(
                url, content=body, headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise GatewayError(
                f"cannot reach Ollama at {self.base_url} ({exc}); start it with `ollama serve` "
                "or pass the right base_url="
            ) from exc
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            answer = None
        if response.status_code >= 400:
            error = answer.get("error") if isinstance(answer, dict) else None
            hint = f"; run `ollama pull {self.model_name}`" if response.status_code == 404 else ""
            raise GatewayError(
                f"{response.status_code} from {url}: {error or response.text}{hint}",
                response.status_code,
            )
        if not isinstance(answer, dict) or "embeddings" not in answer:
            raise GatewayError(f"{url} answered without 'embeddings'; is it an Ollama server?")
        return self._checked(answer["embeddings"], len(texts), url)

    def close(self) -> None:
        """Close the pooled connections to the server."""
        self._http.close()


class EmbeddingFactory:
    """Builds an embedder by method name."""

    METHODS = ("hf", "hash", "openai", "ollama")

    @staticmethod
    def create(method: str, **kwargs: Any) -> BaseEmbedding:
        """An embedder: ``"hf"`` (``model=``), ``"hash"`` (``dim=``), ``"openai"`` or
        ``"ollama"``.

        ``"openai"`` takes ``model=``, ``base_url=`` (any OpenAI-compatible endpoint),
        ``api_key=`` and ``dim=``; ``"ollama"`` takes ``model=`` (``nomic-embed-text``),
        ``base_url=`` (``http://127.0.0.1:11434``) and ``dim=``.

        Raises:
            ConfigError: an unknown method (the message lists them).
        """
        if not isinstance(method, str):
            raise ConfigError(
                f"method={method!r} must be a string, one of {', '.join(EmbeddingFactory.METHODS)}"
            )
        name = method.lower()
        if name in ("hf", "huggingface", "sentence-transformers"):
            return HFEmbedding(**kwargs)
        if name == "hash":
            return HashEmbedding(**kwargs)
        if name == "openai":
            return OpenAIEmbedding(**kwargs)
        if name == "ollama":
            return OllamaEmbedding(**kwargs)
        raise ConfigError(
            f"unknown embedding method {method!r}; use one of {', '.join(EmbeddingFactory.METHODS)}"
        )


class EmbeddingClientAdapter:
    """The batch interface over a single-text embedder: ``embed(texts) -> vectors``."""

    def __init__(self, embedder: BaseEmbedding) -> None:
        self.embedder = embedder

    @property
    def dimension(self) -> int:
        """The embedder's vector length (a remote one learns it on first use)."""
        return self.embedder.get_dim()

    def embed(self, texts: str | Sequence[str]) -> list[list[float]]:
        """Vectors for ``texts`` (a single string counts as a list of one)."""
        batch = [texts] if isinstance(texts, str) else list(texts)
        return self.embedder.embed_batch(batch)
