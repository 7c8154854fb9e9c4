"""The seed's import path of the embedding clients, which live in
:mod:`sage.inference.client.embedding`.

Example:
    >>> from sage.common.components.sage_embedding import EmbeddingFactory, EmbeddingClientAdapter
    >>> raw = EmbeddingFactory.create("hash", dim=8)
    >>> len(raw.embed("one text"))              # single-text, as the seed notes
    8
    >>> len(EmbeddingClientAdapter(raw).embed(["a", "b", "c"]))   # the batch interface
    3
"""

from sage.inference.client.embedding import (
    BaseEmbedding,
    EmbeddingClientAdapter,
    EmbeddingFactory,
    HashEmbedding,
    HFEmbedding,
    OpenAIEmbedding,
)

__all__ = [
    "BaseEmbedding",
    "EmbeddingClientAdapter",
    "EmbeddingFactory",
    "HFEmbedding",
    "HashEmbedding",
    "OpenAIEmbedding",
]
