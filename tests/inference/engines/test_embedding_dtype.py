"""The embedding engine's precision: bfloat16 where the CPU has it gives float32's vectors to
cosine 0.9999, and a wrong dtype is refused naming the valid ones."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sage.common.errors import ConfigError
from sage.inference.engines.factory import build_engine
from sage.inference.engines.sentence_embedding import native_bfloat16

TEXTS = [
    "Streaming dataflows move records between operators.",
    "The Aurora espresso machine has a two-year warranty.",
    "word " * 150,
]


def encode(dtype: str) -> tuple[np.ndarray, str]:
    engine = build_engine("embedding", "all-minilm-l6-v2", dtype=dtype)

    async def run() -> list[list[float]]:
        await engine.start()
        try:
            vectors, _ = await engine.embed(TEXTS)
            return vectors
        finally:
            await engine.stop()

    return np.asarray(asyncio.run(run())), engine.backend


def test_a_wrong_dtype_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="float32, bfloat16, auto"):
        build_engine("embedding", "all-minilm-l6-v2", dtype="float16")


@pytest.mark.slow
def test_bfloat16_gives_float32s_vectors_to_cosine_one() -> None:
    exact, exact_backend = encode("float32")
    auto_vectors, auto_backend = encode("auto")
    assert exact_backend in ("onnxruntime", "sentence-transformers")
    if not native_bfloat16():
        assert auto_backend == exact_backend  # auto keeps float32 without native bfloat16
        pytest.skip("this CPU has no native bfloat16")
    assert auto_backend == "torch-bfloat16"
    cosines = (exact * auto_vectors).sum(axis=1)
    assert cosines.min() > 0.9999
    assert np.allclose(np.linalg.norm(auto_vectors, axis=1), 1.0, atol=1e-5)
