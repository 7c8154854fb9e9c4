"""Operator parallelism: the seed's "设置算子并行度" block, runnable.

Reproduces 《性能调优》 → Pipeline 并行优化 → 设置算子并行度 of the design document
(seed 003): a source feeding a CPU-heavy operator with 4 parallel instances and a model
operator with 2. The seed leaves ``DataSource``, ``CPUIntensiveOperator``,
``GPUInferenceOperator`` and ``OutputSink`` undefined; they are defined here, above the seed
block, which is copied verbatim into :func:`build_pipeline`.

What runs:

* ``DataSource`` emits 2,000 small text documents, then ``StopSignal``.
* ``CPUIntensiveOperator`` does real CPU work: an iterated SHA-256 over a 4 KiB buffer per
  record. The local runtime runs parallel instances as threads, and ``hashlib`` releases the
  GIL while hashing buffers over 2 KiB, so the 4 instances can hash at the same time.
* ``GPUInferenceOperator`` is a CPU stand-in for a GPU model (no GPU, no ML library): it
  scores each digest with a fixed linear model in plain Python arithmetic.
* ``OutputSink`` collects every result.

Run it with ``python examples/parallel_pipeline.py``; it prints how many records reached the
sink and SAGE's per-operator and per-instance metrics.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from sage.common.core.functions.map_function import MapFunction
from sage.common.core.functions.sink_function import SinkFunction
from sage.common.core.functions.source_function import SourceFunction, StopSignal
from sage.kernel.api.datastream import DataStream
from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.runtime.metrics import JobMetrics

N_RECORDS = 2000
HASH_ROUNDS = 20
BLOCK_BYTES = 4096  # over hashlib's 2 KiB threshold for releasing the GIL

# A fixed "model": 32 weights in [-1, 1], one per digest byte.
WEIGHTS = tuple((i * 37 % 17 - 8) / 8 for i in range(32))


def document(i: int) -> str:
    """The text of document ``i`` (what ``DataSource`` emits)."""
    return f"document {i:04d}: streaming dataflow record number {i} of {N_RECORDS}"


def fingerprint(text: str, rounds: int = HASH_ROUNDS) -> str:
    """Iterated SHA-256 of ``text`` repeated to a 4 KiB block (the CPU-intensive work)."""
    raw = text.encode()
    block = (raw * (BLOCK_BYTES // len(raw) + 1))[:BLOCK_BYTES]
    digest = b""
    for _ in range(rounds):
        digest = hashlib.sha256(digest + block).digest()
    return digest.hex()


def score_digest(digest_hex: str) -> float:
    """Logistic score of a digest under the fixed linear model ``WEIGHTS``."""
    features = bytes.fromhex(digest_hex)
    logit = sum(w * (b / 255.0) for w, b in zip(WEIGHTS, features, strict=True))
    return 1.0 / (1.0 + math.exp(-logit))


class DataSource(SourceFunction):
    """Emits ``n`` documents ``{"id": i, "text": ...}``, then ``StopSignal``."""

    def __init__(self, n: int = N_RECORDS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n = n
        self.next_id = 0

    def execute(self) -> Any:
        if self.next_id >= self.n:
            return StopSignal(f"emitted {self.n} documents")
        i = self.next_id
        self.next_id += 1
        return {"id": i, "text": document(i)}


class CPUIntensiveOperator(MapFunction):
    """Real CPU work per record: :func:`fingerprint` (``HASH_ROUNDS`` SHA-256 of 4 KiB).

    Adds ``digest`` and ``cpu_instance`` (which parallel instance did the work).
    """

    def __init__(self, rounds: int = HASH_ROUNDS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rounds = rounds

    def execute(self, data: dict[str, Any]) -> dict[str, Any]:
        assert self.ctx is not None  # set by the runtime before open()
        return {
            **data,
            "digest": fingerprint(data["text"], self.rounds),
            "cpu_instance": self.ctx.instance_index,
        }


class GPUInferenceOperator(MapFunction):
    """A CPU stand-in for GPU inference: no GPU and no ML library are used.

    It "scores" each record with :func:`score_digest`, a fixed 32-weight linear model
    evaluated in plain Python arithmetic, so the example runs on any machine. Replace
    ``execute`` with a real model call to serve one; keep the parallelism low, as the seed's
    comment says, since each instance would hold its own copy of the model on the GPU.
    """

    def execute(self, data: dict[str, Any]) -> dict[str, Any]:
        assert self.ctx is not None
        score = score_digest(data["digest"])
        return {
            "id": data["id"],
            "digest": data["digest"],
            "score": score,
            "label": "positive" if score >= 0.5 else "negative",
            "cpu_instance": data["cpu_instance"],
            "gpu_instance": self.ctx.instance_index,
        }


class OutputSink(SinkFunction):
    """Collects every result in ``self.results``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.results: list[dict[str, Any]] = []

    def execute(self, data: dict[str, Any]) -> None:
        self.results.append(data)


def build_pipeline() -> tuple[LocalEnvironment, DataStream]:
    """The seed block, verbatim (indented into this function); returns ``(env, stream)``."""
    # fmt: off
    from sage.kernel.api.local_environment import LocalEnvironment

    env = LocalEnvironment("optimized_pipeline")

    stream = (
        env.from_source(DataSource())
        .map(
            CPUIntensiveOperator(),
            parallelism=4  # 4 个并行实例
        )
        .map(
            GPUInferenceOperator(),
            parallelism=2  # GPU 算子通常不需要太高并行度
        )
        .sink(OutputSink())
    )
    # fmt: on
    return env, stream


def print_summary(results: list[dict[str, Any]], metrics: JobMetrics) -> None:
    """Print the record count, per-operator metrics and the per-instance split."""
    print(f"{metrics.job}: {len(results)} records reached OutputSink in {metrics.elapsed_s:.3f}s")
    print(
        f"{'operator':<32} {'par':>3} {'in':>6} {'out':>6} {'err':>4} {'p50 ms':>8} {'p95 ms':>8}"
    )
    for op in metrics.operators:
        print(
            f"{op.operator:<32} {op.parallelism:>3} {op.records_in:>6} {op.records_out:>6} "
            f"{op.errors:>4} {op.p50_ms:>8.3f} {op.p95_ms:>8.3f}"
        )
    for name in ("map 'CPUIntensiveOperator'", "map 'GPUInferenceOperator'"):
        split = [row.records_in for row in metrics.instances if row.operator == name]
        print(f"{name} records per instance: {split}")
    positive = sum(1 for r in results if r["label"] == "positive")
    print(f"labels: {positive} positive, {len(results) - positive} negative")


def main() -> dict[str, Any]:
    """Build and run the pipeline; return ``{"results": [...], "metrics": JobMetrics}``."""
    env, stream = build_pipeline()
    sink = stream.node.function.target  # the OutputSink object the seed block created
    assert isinstance(sink, OutputSink)
    env.submit()  # blocks until every record reached the sink
    metrics = env.metrics()
    print_summary(sink.results, metrics)
    return {"results": sink.results, "metrics": metrics}


if __name__ == "__main__":
    main()
