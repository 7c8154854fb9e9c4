"""Service-driven retrieval: the seed's ``RAGStep`` block (seed 000, 编排示例), runnable.

The block registers a vector DB and a long-term memory service and defines ``RAGStep``,
which searches the VDB for each record's ``query_vector`` and stores the record in memory.
This program runs it, unchanged, over passages of the Python language reference that ships
with CPython (``pydoc_data.topics``):

1. ``Index`` adds each passage's vector to the VDB (so later passages find earlier ones);
2. ``RAGStep`` (the seed's code) searches the VDB and stores the passage as a memory;
3. ``Report`` keeps the best hits, and at the end asks the memory service what it holds.

Vectors come from SAGE's feature-hashing embedder (``EmbeddingFactory.create("hash")``: no
model, instant); ``sage demo`` runs the same services with a real embedding model.
"""

from __future__ import annotations

from typing import Any

# --- the seed block, verbatim (seed 000: 编排示例（服务驱动的 GPU 使用）) ------------------------
# fmt: off
# isort: off
from sage.core.api.local_environment import LocalEnvironment
from sage.core.api.function.base_function import BaseFunction
from sage.middleware.services.memory import MemoryService
from sage.middleware.services.vdb import VDBService

env = LocalEnvironment("gpu_flow_demo")
env.register_service("memory_service", lambda: MemoryService())
env.register_service("vdb_service", lambda: VDBService())

class RAGStep(BaseFunction):
    def execute(self, data):
        # 向量检索（VDB 后端可指向 SAGE-DB GPU）
        results = self.call_service["vdb_service"].search(
            query=data["query_vector"], top_k=10
        )
        # 长期记忆交互（Memory 内部编排 KV/VDB/Graph）
        self.call_service["memory_service"].store_memory(
            content=data["content"], vector=data["query_vector"],
            session_id=data.get("sid","default"), memory_type="conversation"
        )
        return {"hits": results}
# isort: on
# fmt: on
# --- end of the seed block ---------------------------------------------------------------

from sage.common.components.sage_embedding import EmbeddingFactory  # noqa: E402
from sage.common.core.functions.map_function import MapFunction  # noqa: E402
from sage.common.core.functions.sink_function import SinkFunction  # noqa: E402

_EMBEDDER = EmbeddingFactory.create("hash", dim=256)


def embed(text: str) -> list[float]:
    """The feature-hashing vector of ``text`` (see ``EmbeddingFactory.create("hash")``)."""
    return list(_EMBEDDER.embed(text))


def passages(limit: int = 400) -> list[dict[str, Any]]:
    """Records ``{"content", "query_vector", "sid", "topic"}`` from CPython's bundled docs."""
    from pydoc_data.topics import topics

    records = []
    for topic, text in sorted(topics.items()):
        for block in text.split("\n\n"):
            block = " ".join(block.split())
            if len(block) >= 200:
                records.append(
                    {"content": block, "query_vector": embed(block), "sid": topic, "topic": topic}
                )
    return records[:limit]


class Index(MapFunction):
    """Adds the passage to the vector DB, then passes it on."""

    def execute(self, data: dict[str, Any]) -> dict[str, Any]:
        self.call_service["vdb_service"].add(
            data["query_vector"], metadata={"topic": data["topic"], "text": data["content"][:80]}
        )
        return data


class Report(SinkFunction):
    """Counts hits; at the end reads back what the memory service stored."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.results: list[dict[str, Any]] = []
        self.memories = 0
        self.sessions: list[dict[str, Any]] = []

    def execute(self, data: dict[str, Any]) -> None:
        self.results.append(data)

    def close(self) -> None:  # services are still up while functions close
        memory = self.call_service["memory_service"]
        self.memories = memory.count()
        self.sessions = memory.list_sessions()


def main(limit: int = 400) -> dict[str, Any]:
    """Run the pipeline over ``limit`` passages; return results, memory counts and metrics."""
    report = Report()
    env.from_collection(passages(limit)).map(Index).map(RAGStep, parallelism=4).sink(report)
    env.submit()
    metrics = env.metrics()
    hits = [r["hits"] for r in report.results]
    print(
        f"{len(hits)} passages indexed and searched; every search found "
        f"{min(len(h) for h in hits)}-{max(len(h) for h in hits)} hits (top_k=10)"
    )
    print(f"memory service holds {report.memories} memories in {len(report.sessions)} sessions")
    # the nearest hit that is not the same text (the same paragraph can sit in two topics)
    neighbours = [h for r in report.results for h in r["hits"] if h["score"] < 0.999]
    closest = max(neighbours, key=lambda h: h["score"])
    print(
        f"closest distinct passages: score {closest['score']:.3f}, "
        f"topic {closest['metadata']['topic']!r}: {closest['metadata']['text']!r}"
    )
    for service in metrics.services:
        print(
            f"service {service.service}: {service.calls} calls, p50 {service.p50_ms:.3f} ms, "
            f"p95 {service.p95_ms:.3f} ms, {service.errors} errors"
        )
    return {
        "results": report.results,
        "memories": report.memories,
        "sessions": report.sessions,
        "metrics": metrics,
    }


if __name__ == "__main__":
    main()
