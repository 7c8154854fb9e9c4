"""Engines in the client's own process: what ``UnifiedInferenceClient.create(embedded=True)``
talks to instead of a server."""

from __future__ import annotations

import atexit
import queue
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

from sage.common.concurrency import LoopThread
from sage.inference.engines.base import EmbeddingEngine, LLMEngine, SamplingParams
from sage.inference.engines.factory import build_engine

__all__ = ["EmbeddedEngines"]


class EmbeddedEngines:
    """Engines in this process, on one private event-loop thread shared by embedded clients.

    Each model is loaded on first use and kept (one copy per process and embedding dtype)
    until :meth:`shutdown` or interpreter exit, so creating many embedded clients costs
    nothing after the first.
    """

    _runtime: ClassVar[LoopThread | None] = None
    _engines: ClassVar[dict[tuple[str, str, str], Any]] = {}
    _lock: ClassVar[threading.RLock] = threading.RLock()

    def __init__(
        self, llm_model: str, embedding_model: str, embedding_dtype: str = "float32"
    ) -> None:
        self.llm_model, self.embedding_model = llm_model, embedding_model
        self.embedding_dtype = embedding_dtype

    @classmethod
    def _loop_thread(cls) -> LoopThread:
        with cls._lock:
            if cls._runtime is None:
                cls._runtime = LoopThread("sage-embedded-engines")
                atexit.register(cls.shutdown)
            return cls._runtime

    @classmethod
    def call(cls, coro: Any) -> Any:
        return cls._loop_thread().call(coro)

    @classmethod
    def shutdown(cls) -> None:
        """Stop every embedded engine and the loop thread (idempotent)."""
        with cls._lock:
            runtime = cls._runtime
            if runtime is None:
                return
            for engine in cls._engines.values():
                runtime.call(engine.stop())
            cls._engines.clear()
            runtime.stop()
            cls._runtime = None
            atexit.unregister(cls.shutdown)

    def _engine(self, kind: str) -> Any:
        name = self.llm_model if kind == "llm" else self.embedding_model
        options = {} if kind == "llm" else {"dtype": self.embedding_dtype}
        key = (kind, name, options.get("dtype", ""))
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                engine = build_engine(kind, name, **options)
                self.call(engine.start())
                self._engines[key] = engine
        return engine

    def stream(self, params: SamplingParams, messages: Any, prompt: str | None) -> Iterator[str]:
        engine: LLMEngine = self._engine("llm")
        pieces: queue.Queue[str | BaseException | None] = queue.Queue()

        async def pump() -> None:
            try:
                async for delta in engine.generate(params, messages=messages, prompt=prompt):
                    if delta.text:
                        pieces.put(delta.text)
                pieces.put(None)
            except BaseException as exc:
                pieces.put(exc)

        self._loop_thread().submit(pump())
        while (item := pieces.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    def embed(self, texts: list[str]) -> list[list[float]]:
        engine: EmbeddingEngine = self._engine("embedding")
        vectors, _ = self.call(engine.embed(texts))
        return list(vectors)
