"""``LLMService``: chat, generation and embeddings as a dataflow service.

Register it and call it from any operator; it holds one pooled client for the whole job::

    env.register_service("llm_service", LLMService)            # finds a server, else in-process
    ...
    self.call_service["llm_service"].chat("Summarise: ...", max_tokens=64)
"""

from __future__ import annotations

from typing import Any

from sage.kernel.services.base_service import BaseService

__all__ = ["LLMService"]


class LLMService(BaseService):
    """Chat / generate / embed through a :class:`UnifiedInferenceClient`.

    Args:
        client: A client to use; by default one is created with ``create_auto(**options)``
            at setup (a local gateway or engine if one runs, else in-process engines).
        **options: Passed to ``UnifiedInferenceClient.create_auto`` (e.g.
            ``control_plane_url=``, ``default_llm_model=``).
    """

    max_concurrency = 16  # requests wait in the engines' batches, not here

    def __init__(self, client: Any = None, **options: Any) -> None:
        super().__init__()
        self.client = client
        self.options = options

    def setup(self) -> None:
        if self.client is None:
            from sage.inference.client.unified import UnifiedInferenceClient

            self.client = UnifiedInferenceClient.create_auto(**self.options)

    def chat(self, messages: Any, **kwargs: Any) -> Any:
        """The answer to ``messages`` (a string or role/content dicts)."""
        return self.client.chat(messages, **kwargs)

    def generate(self, prompt: str, **kwargs: Any) -> Any:
        """A completion of ``prompt``."""
        return self.client.generate(prompt, **kwargs)

    def embed(self, texts: Any, **kwargs: Any) -> Any:
        """One vector for a text, a list of vectors for a list."""
        return self.client.embed(texts, **kwargs)
