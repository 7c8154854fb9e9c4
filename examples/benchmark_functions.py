"""Custom benchmarks: the seed's 《自定义基准测试》 block (seed 003), runnable.

``benchmark_llm`` measures generation latency (mean, standard deviation, P95) over a list of
prompts after ``warmup`` untimed calls; ``benchmark_embedding`` measures embedding
throughput in batches. Both take any client with ``generate`` and ``embed``: here the one
``UnifiedInferenceClient.create_auto()`` returns (a local server if one runs, otherwise the
bundled SmolLM2 and all-MiniLM-L6-v2 in this process).

Run it with ``python examples/benchmark_functions.py``. For comparisons across engines and
scheduling policies, see ``benchmarks/inference.py``.
"""

from __future__ import annotations

# --- the seed block, verbatim (seed 003: 自定义基准测试) --------------------------------------
# fmt: off
# isort: off
import time
from statistics import mean, stdev


def benchmark_llm(client, prompts, warmup=5):
    """LLM 延迟基准测试"""

    # Warmup
    for prompt in prompts[:warmup]:
        client.generate(prompt, max_tokens=50)

    # 测试
    latencies = []
    for prompt in prompts:
        start = time.perf_counter()
        client.generate(prompt, max_tokens=50)
        latencies.append(time.perf_counter() - start)

    print(f"平均延迟: {mean(latencies)*1000:.1f}ms")
    print(f"标准差: {stdev(latencies)*1000:.1f}ms")
    print(f"P95 延迟: {sorted(latencies)[int(len(latencies)*0.95)]*1000:.1f}ms")


def benchmark_embedding(client, texts, batch_size=32):
    """Embedding 吞吐量基准测试"""

    start = time.perf_counter()

    for i in range(0, len(texts), batch_size):
        batch = texts[i:i + batch_size]
        client.embed(batch)

    elapsed = time.perf_counter() - start
    throughput = len(texts) / elapsed

    print(f"总耗时: {elapsed:.2f}s")
    print(f"吞吐量: {throughput:.1f} texts/s")
# isort: on
# fmt: on
# --- end of the seed block ---------------------------------------------------------------------

PROMPTS = [
    "The three primary colours are",
    "Python is a programming language that",
    "The capital of Italy is",
    "A streaming dataflow is",
    "The largest ocean on Earth is",
]


def main(n_prompts: int = 5, n_texts: int = 512) -> None:
    """Benchmark the client :meth:`UnifiedInferenceClient.create_auto` returns."""
    import pydoc_data.topics

    from sage.common.components.sage_llm import UnifiedInferenceClient

    client = UnifiedInferenceClient.create_auto()
    print(f"client: {client!r}")
    lines = (
        line.strip() for text in pydoc_data.topics.topics.values() for line in text.splitlines()
    )
    texts = [line for line in lines if len(line) > 20][:n_texts]
    client.embed(texts[0])  # load the embedding model outside the timed loop
    print(f"== benchmark_llm: {n_prompts} prompts, max_tokens=50, warmup=1")
    benchmark_llm(client, PROMPTS[:n_prompts], warmup=1)
    print(f"== benchmark_embedding: {len(texts)} passages, batch_size=32")
    benchmark_embedding(client, texts, batch_size=32)
    client.close()


if __name__ == "__main__":
    main()
