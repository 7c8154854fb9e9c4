"""The clients of the inference stack: ``UnifiedInferenceClient`` (chat, generate, embed over
a gateway, engines, a cloud endpoint or in-process engines) and the embedding clients."""

from sage.inference.client.embedding import (
    BaseEmbedding,
    EmbeddingClientAdapter,
    EmbeddingFactory,
    HashEmbedding,
    HFEmbedding,
    OllamaEmbedding,
    OpenAIEmbedding,
)
from sage.inference.client.retries import RetryPolicy
from sage.inference.client.unified import UnifiedInferenceClient

__all__ = [
    "BaseEmbedding",
    "EmbeddingClientAdapter",
    "EmbeddingFactory",
    "HFEmbedding",
    "HashEmbedding",
    "OllamaEmbedding",
    "OpenAIEmbedding",
    "RetryPolicy",
    "UnifiedInferenceClient",
]
