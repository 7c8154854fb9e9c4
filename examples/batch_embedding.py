"""Batched embeddings: the seed's 《批量嵌入》 and 《分批处理大数据集》 blocks (seed 003), runnable.

``UnifiedInferenceClient.create_auto()`` finds a running gateway or embedding server on the
local ports, and otherwise runs all-MiniLM-L6-v2 in this process (``sage llm serve`` is not
needed). The first block embeds 100 texts in one call and then one by one; the second embeds
10,000 passages of the Python language reference in batches of 64. The program prints how
long each took, so the advice is checked rather than assumed.

The seed writes its inputs as placeholders (``["文本1", ..., "文本100"]`` and ``[...]  #
10000 条文本``); here they are real lists, everything else is verbatim.

Run it with ``python examples/batch_embedding.py [number of texts, default 10000]``.
"""

from __future__ import annotations

import itertools
import time
from typing import Any


def load_texts(n: int) -> list[str]:
    """``n`` lines of the Python language reference that ships with CPython (cycled)."""
    import pydoc_data.topics

    lines = [
        line.strip()
        for text in pydoc_data.topics.topics.values()
        for line in text.splitlines()
        if len(line.strip()) > 20
    ]
    return list(itertools.islice(itertools.cycle(lines), n))


def main(n_texts: int = 10_000) -> dict[str, Any]:
    """Run both seed blocks; return the vectors and timings."""
    start = time.perf_counter()
    # --- seed block: 批量嵌入 (verbatim but for the list of texts) --------------------------
    # fmt: off
    from sage.common.components.sage_llm import UnifiedInferenceClient

    client = UnifiedInferenceClient.create_auto()

    # 批量处理 - 高效
    texts = [f"文本{i}" for i in range(1, 101)]
    vectors = client.embed(texts)  # 一次调用

    # 逐个处理 - 低效（避免）
    for text in texts:
        vector = client.embed(text)  # 100 次调用
    # fmt: on
    # --- end of the seed block -------------------------------------------------------------
    first_block_s = time.perf_counter() - start
    batch_vectors = vectors
    one_call_s = _timed(lambda: client.embed(texts))
    one_by_one_s = _timed(lambda: [client.embed(text) for text in texts])
    print(
        f"100 texts: one call {one_call_s * 1000:.0f} ms, one by one {one_by_one_s * 1000:.0f} ms"
    )

    start = time.perf_counter()

    # --- seed block: 分批处理大数据集 (verbatim but for the list of texts) --------------------
    # fmt: off
    def embed_large_dataset(texts, batch_size=32):
        """分批嵌入大数据集"""
        all_vectors = []

        for i in range(0, len(texts), batch_size):
            batch = texts[i:i + batch_size]
            vectors = client.embed(batch)
            all_vectors.extend(vectors)

            # 可选：显示进度
            print(f"已处理: {min(i + batch_size, len(texts))}/{len(texts)}")

        return all_vectors

    # 使用
    texts = load_texts(n_texts)  # 10000 条文本
    vectors = embed_large_dataset(texts, batch_size=64)
    # fmt: on
    # --- end of the seed block -------------------------------------------------------------
    large_s = time.perf_counter() - start
    print(
        f"{len(vectors)} texts in batches of 64: {large_s:.1f} s ({len(vectors) / large_s:.0f}/s)"
    )
    client.close()
    return {
        "mode": client.mode,
        "batch_vectors": batch_vectors,
        "last_vector": vector,
        "vectors": vectors,
        "texts": texts,
        "first_block_s": first_block_s,
        "one_call_s": one_call_s,
        "one_by_one_s": one_by_one_s,
        "large_s": large_s,
    }


def _timed(work: Any) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


if __name__ == "__main__":
    import sys

    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
