"""Batch and async service calls: the seed's advice (seed 000, 性能与工程建议), measured.

The seed recommends issuing retrieval through ``self.call_service_async`` in batches and
using the vector DB's numpy batch path, to cut blocking and raise throughput. This program
runs the same 2,000 queries against the same 20,000-vector index two ways:

* one synchronous call per query (``self.call_service["vdb_service"].search(vector)``);
* ``.batch(64)`` then one asynchronous 2-D search per batch
  (``self.call_service_async["vdb_service"].search(matrix)``), whose future is awaited
  only after the batch's memory writes were also sent off asynchronously.

Both must return identical hits; the program prints both times and the ratio.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from sage.common.core.functions.flatmap_function import FlatMapFunction
from sage.common.core.functions.map_function import MapFunction
from sage.kernel.api.local_environment import LocalEnvironment
from sage.middleware.services.memory import MemoryService
from sage.middleware.services.vdb import VDBService

DIM, DOCS, QUERIES, TOP_K = 128, 20_000, 2_000, 5


def vectors(n: int, seed: int) -> np.ndarray:
    """Clustered unit vectors (stand-ins for text embeddings)."""
    centres = np.random.default_rng(7).normal(size=(64, DIM))
    rng = np.random.default_rng(seed)
    points = centres[rng.integers(0, 64, n)] + 0.4 * rng.normal(size=(n, DIM))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def build_vdb() -> VDBService:
    vdb = VDBService(dim=DIM, index="flat", metric="cosine")
    vdb.add(vectors(DOCS, seed=1), ids=list(range(DOCS)))
    return vdb


class OneByOne(MapFunction):
    """One blocking service call per query."""

    def execute(self, item: tuple[int, np.ndarray]) -> tuple[int, list[Any]]:
        qid, vector = item
        hits = self.call_service["vdb_service"].search(vector, top_k=TOP_K)
        self.call_service["memory_service"].store_memory(f"query {qid}", vector=vector)
        return qid, [h["id"] for h in hits]


class Batched(FlatMapFunction):
    """One async 2-D search per batch; memory writes go out without waiting either."""

    def execute(self, batch: list[tuple[int, np.ndarray]]) -> list[tuple[int, list[Any]]]:
        ids = [qid for qid, _ in batch]
        matrix = np.stack([vector for _, vector in batch])
        search = self.call_service_async["vdb_service"].search(matrix, top_k=TOP_K)
        writes = [
            self.call_service_async["memory_service"].store_memory(f"query {qid}", vector=v)
            for qid, v in batch
        ]
        rows = search.result()  # the writes proceed meanwhile on the service's workers
        for write in writes:
            write.result()
        return [(qid, [h["id"] for h in row]) for qid, row in zip(ids, rows, strict=True)]


def run(batched: bool) -> tuple[float, dict[int, list[Any]], Any]:
    queries = list(enumerate(vectors(QUERIES, seed=2)))
    env = LocalEnvironment("batched" if batched else "one_by_one")
    env.register_service("vdb_service", build_vdb)
    env.register_service("memory_service", lambda: MemoryService(dim=DIM))
    out: list[tuple[int, list[Any]]] = []
    stream = env.from_collection(queries)
    if batched:
        stream.batch(64).flatmap(Batched, parallelism=2).sink(out.append)
    else:
        stream.map(OneByOne, parallelism=2).sink(out.append)
    start = time.perf_counter()
    env.submit()
    return time.perf_counter() - start, dict(out), env.metrics()


def main() -> dict[str, Any]:
    single_s, single, single_metrics = run(batched=False)
    batch_s, batch, batch_metrics = run(batched=True)
    assert batch == single, "the batch path must return the same hits"
    print(f"{QUERIES} queries, top-{TOP_K} over {DOCS} vectors, plus a memory write each")
    print(
        f"one sync call per query : {single_s:.2f} s "
        f"({single_metrics.service('vdb_service').calls} VDB calls)"
    )
    print(
        f"async 2-D batches of 64 : {batch_s:.2f} s "
        f"({batch_metrics.service('vdb_service').calls} VDB calls)"
    )
    print(f"speed-up: {single_s / batch_s:.1f}x, identical hits for all {len(batch)} queries")
    return {
        "single_s": single_s,
        "batch_s": batch_s,
        "hits": batch,
        "single_calls": single_metrics.service("vdb_service").calls,
        "batch_calls": batch_metrics.service("vdb_service").calls,
    }


if __name__ == "__main__":
    main()
