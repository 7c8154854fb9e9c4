"""An embedding engine on sentence-transformers that batches concurrent requests (encoding
on ONNX Runtime when it can: :mod:`.onnx_encoder`).

``dtype="bfloat16"`` computes in bfloat16 (PyTorch autocast) on CPUs that have it natively
(AVX512-BF16 or AMX): on this project's 2-core AMD EPYC it encodes 200-token documents 2.4x
faster than float32 sentence-transformers and 1.8x faster than the ONNX float32 encoder, with
vectors within cosine 0.99998 of float32's. ``"auto"`` picks it where the CPU has it; the
default, ``"float32"``, gives sentence-transformers' vectors to 1e-6.

A worker thread takes every request waiting when it becomes free and encodes all their
texts in one call; requests arriving during that call form the next batch. A lone request
is encoded at once (no waiting window), and a burst of single-text requests costs about what
one batched call of the same texts costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from typing import Any

from sage.inference.engines.base import EmbeddingEngine, join_thread
from sage.inference.engines.models import ModelSpec

__all__ = ["DTYPES", "SentenceTransformerEngine", "native_bfloat16"]

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "auto")


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), as PyTorch sees it."""
    try:
        import torch

        return bool(
            torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except Exception:  # an old PyTorch without the probe: assume not
        return False


_Job = tuple[list[str], asyncio.Future[tuple[list[list[float]], int]], asyncio.AbstractEventLoop]


class SentenceTransformerEngine(EmbeddingEngine):
    """all-MiniLM-L6-v2 (or any sentence-transformers model) on the CPU.

    Vectors are L2-normalised, as OpenAI's are.

    Args:
        spec: Where the model is.
        max_batch: Texts encoded in one call at most.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"auto"`` (see the module docstring).

    Raises:
        ConfigError: ``dtype`` is none of those.
    """

    def __init__(self, spec: ModelSpec, *, max_batch: int = 256, dtype: str = "float32") -> None:
        if dtype not in DTYPES:
            from sage.common.errors import ConfigError

            raise ConfigError(
                f"dtype={dtype!r} is invalid for an embedding engine; use one of "
                f"{', '.join(DTYPES)}"
            )
        self.dtype = dtype
        self.spec = spec
        self.model_name = spec.name
        self.aliases = spec.aliases
        self.max_batch = max_batch
        self.dimension = 0
        self.model: Any = None
        self.onnx: Any = None
        self.backend = "sentence-transformers"
        """What encodes: ``onnxruntime`` (the same weights, faster), sentence-transformers,
        or ``torch-bfloat16``."""
        self.batches = 0
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._worker: threading.Thread | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self.load)
        self._worker = threading.Thread(
            target=self._run, name=f"sage-emb-{self.model_name}", daemon=True
        )
        self._worker.start()

    def load(self) -> None:
        """Load the model (blocking)."""
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(self.spec.path), device="cpu")
        get_dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dimension = int(get_dim())
        native = native_bfloat16()
        if self.dtype == "auto":
            self.dtype = "bfloat16" if native else "float32"
        if self.dtype == "bfloat16":
            if not native:
                logger.warning(
                    "this CPU has no native bfloat16 (AVX512-BF16, AMX): encoding in "
                    "bfloat16 will be slower than float32; use dtype='auto' or 'float32'"
                )
            self.backend = "torch-bfloat16"
            return
        from sage.inference.engines.onnx_encoder import onnx_encoder

        self.onnx = onnx_encoder(self.model, self.spec.path)
        if self.onnx is not None:
            self.backend = "onnxruntime"

    async def stop(self) -> None:
        if self._worker is not None:
            self._jobs.put(None)
            await join_thread(self._worker)
            self._worker = None

    async def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        if self._worker is None:
            raise RuntimeError(f"engine {self.model_name!r} is not started; await engine.start()")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[list[list[float]], int]] = loop.create_future()
        self._jobs.put((texts, future, loop))
        return await future

    def encode(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """Vectors and token count for ``texts`` (blocking; in-process use)."""
        vectors, lengths = self._encode(texts)
        return vectors, sum(lengths)

    def _encode(self, texts: list[str]) -> tuple[list[list[float]], list[int]]:
        if self.onnx is not None:
            pooled, counts = self.onnx.encode(texts)
            return pooled.tolist(), counts
        with _precision(self.dtype):
            vectors = self.model.encode(
                texts,
                batch_size=max(1, len(texts)),
                normalize_embeddings=True,
                convert_to_numpy=True,
            )
        lengths = [len(ids) for ids in self.model.tokenizer(texts, truncation=True)["input_ids"]]
        return vectors.tolist(), lengths

    def _run(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                return
            jobs = [first]
            size = len(first[0])
            while size < self.max_batch:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._jobs.put(None)
                    break
                jobs.append(job)
                size += len(job[0])
            texts = [t for job in jobs for t in job[0]]
            try:
                vectors, lengths = self._encode(texts)
            except Exception as exc:
                logger.exception("embedding batch failed")
                for _, future, loop in jobs:
                    loop.call_soon_threadsafe(_fail, future, exc)
                continue
            self.batches += 1
            start = 0
            for job_texts, future, loop in jobs:
                end = start + len(job_texts)
                loop.call_soon_threadsafe(
                    _resolve, future, (vectors[start:end], sum(lengths[start:end]))
                )
                start = end


def _precision(dtype: str) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 autocast for ``"bfloat16"``, else nothing."""
    if dtype != "bfloat16":
        return contextlib.nullcontext()
    import torch

    autocast: contextlib.AbstractContextManager[Any] = torch.autocast("cpu", dtype=torch.bfloat16)
    return autocast


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
