"""Memory optimisation: the seed's three 内存优化 operators, runnable in one pipeline.

Reproduces 《性能调优》 → 内存优化 of the design document (seed 003): the blocks
流式处理避免内存峰值 (``StreamingProcessor``), 及时释放资源 (``ResourceAwareOperator``) and
监控内存使用 (``get_memory_usage`` and ``MemoryMonitorOperator``) are copied verbatim. The
helpers they call but the seed leaves undefined are defined here:

* ``process(data)`` tokenises one review (what ``StreamingProcessor`` does per record);
* ``load_model()`` returns a small lexicon-based ``SentimentModel`` with ``.predict``, and
  records a weak reference to it so :func:`main` can show that ``close()`` freed it.

The pipeline runs 300 reviews through all three operators, with ``ResourceAwareOperator`` at
parallelism 2 (each instance loads its own model in ``open`` and frees it in ``close``) and
``MemoryMonitorOperator(threshold_mb=1)``, a threshold any Python process exceeds, so its
warning prints at every 100th record.

Run it with ``python examples/memory_optimization.py``.
"""

from __future__ import annotations

import weakref
from typing import Any

from sage.common.core.functions.map_function import MapFunction
from sage.kernel.api.local_environment import LocalEnvironment

# ---- seed block: 监控内存使用 (verbatim) ----------------------------------------------------
# fmt: off
# isort: off
import psutil
import os

def get_memory_usage():
    """获取当前进程内存使用"""
    process = psutil.Process(os.getpid())
    return process.memory_info().rss / 1024 / 1024  # MB


class MemoryMonitorOperator(MapFunction):
    """内存监控算子"""

    def __init__(self, threshold_mb=1000, **kwargs):
        super().__init__(**kwargs)
        self.threshold = threshold_mb
        self.check_interval = 100
        self.counter = 0

    def execute(self, data):
        self.counter += 1

        if self.counter % self.check_interval == 0:
            memory_mb = get_memory_usage()
            if memory_mb > self.threshold:
                print(f"Warning: 内存使用: {memory_mb:.1f}MB (超过阈值)")

        return data
# isort: on
# fmt: on
# ---- end of seed block ----------------------------------------------------------------------

N_REVIEWS = 300
_POSITIVE = frozenset({"fast", "great", "stable", "clear", "love"})
_NEGATIVE = frozenset({"slow", "broken", "confusing", "crash", "hate"})
_OPENERS = ("the pipeline is", "this release feels", "the dashboard looks", "batching is")
_ADJECTIVES = ("fast", "slow", "great", "broken", "stable", "confusing", "clear", "okay")

# Weak references to every model load_model() returned, oldest first.
LOADED_MODELS: list[weakref.ref[SentimentModel]] = []


def review(i: int) -> str:
    """Review ``i`` of the input (deterministic)."""
    return f"{_OPENERS[i % 4]} {_ADJECTIVES[i % 8]} and {_ADJECTIVES[i * 3 % 8]} today"


def process(data: dict[str, Any]) -> dict[str, Any]:
    """Tokenise one review: what the seed's ``StreamingProcessor`` does per record."""
    return {"id": data["id"], "tokens": data["text"].lower().split()}


class SentimentModel:
    """A tiny lexicon "model": +1 per positive word, -1 per negative word.

    ``weights`` stands in for the memory a real model holds (1 MiB here).
    """

    def __init__(self) -> None:
        self.weights = bytearray(1024 * 1024)
        self.predictions = 0

    def predict(self, data: dict[str, Any]) -> dict[str, Any]:
        self.predictions += 1
        tokens = data["tokens"]
        score = sum(t in _POSITIVE for t in tokens) - sum(t in _NEGATIVE for t in tokens)
        label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
        return {"id": data["id"], "score": score, "sentiment": label}


def load_model() -> SentimentModel:
    """Load (build) a model; remember a weak reference to it in ``LOADED_MODELS``."""
    model = SentimentModel()
    LOADED_MODELS.append(weakref.ref(model))
    return model


# ---- seed block: 流式处理避免内存峰值 (verbatim) --------------------------------------------
# fmt: off
class StreamingProcessor(MapFunction):
    """流式处理，避免一次性加载全部数据"""

    def execute(self, data):
        # 处理单条数据，立即输出
        result = process(data)
        return result
        # 不要在算子中累积大量数据
# fmt: on
# ---- end of seed block ----------------------------------------------------------------------


# ---- seed block: 及时释放资源 (verbatim) ----------------------------------------------------
# fmt: off
class ResourceAwareOperator(MapFunction):
    """资源感知算子"""

    def open(self, context):
        """初始化资源"""
        self.model = load_model()

    def execute(self, data):
        result = self.model.predict(data)
        return result

    def close(self):
        """释放资源"""
        if hasattr(self, 'model'):
            del self.model
            import gc
            gc.collect()  # 触发垃圾回收
# fmt: on
# ---- end of seed block ----------------------------------------------------------------------


def main() -> dict[str, Any]:
    """Run 300 reviews through the three operators.

    Returns:
        ``results`` (what reached the sink), ``models_loaded`` and ``models_alive`` (models
        ``load_model()`` returned during this run, and how many are still referenced after
        it), ``operator_has_model`` (whether instance 0 of ``ResourceAwareOperator`` still
        holds its model), ``monitor_counter`` (records ``MemoryMonitorOperator`` saw) and
        ``memory_mb`` (this process's RSS at the end).
    """
    first_model = len(LOADED_MODELS)
    resource_op = ResourceAwareOperator()  # instance 0 runs this object; instance 1 a copy
    monitor = MemoryMonitorOperator(threshold_mb=1)
    results: list[dict[str, Any]] = []

    env = LocalEnvironment("memory_optimization")
    (
        env.from_collection([{"id": i, "text": review(i)} for i in range(N_REVIEWS)])
        .map(StreamingProcessor)
        .map(resource_op, parallelism=2)
        .map(monitor)
        .sink(results.append)
    )
    print(f"内存使用 (开始): {get_memory_usage():.1f}MB")
    env.submit()
    memory_mb = get_memory_usage()

    loaded = LOADED_MODELS[first_model:]
    alive = sum(ref() is not None for ref in loaded)
    sentiments: dict[str, int] = {}
    for r in results:
        sentiments[r["sentiment"]] = sentiments.get(r["sentiment"], 0) + 1
    print(f"内存使用 (结束): {memory_mb:.1f}MB")
    print(
        f"{len(results)} records reached the sink; sentiments: {dict(sorted(sentiments.items()))}"
    )
    print(
        f"ResourceAwareOperator: {len(loaded)} models loaded in open(), {alive} alive after close()"
    )
    print(f"MemoryMonitorOperator: {monitor.counter} records checked")
    return {
        "results": results,
        "models_loaded": len(loaded),
        "models_alive": alive,
        "operator_has_model": hasattr(resource_op, "model"),
        "monitor_counter": monitor.counter,
        "memory_mb": memory_mb,
    }


if __name__ == "__main__":
    main()
