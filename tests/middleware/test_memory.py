"""MemoryService: records, similarity, sessions, KV, graph, persistence, concurrent writers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sage.common.core.functions.map_function import MapFunction
from sage.kernel.api.local_environment import LocalEnvironment
from sage.middleware.services.memory import MemoryService


def unit(*values: float) -> list[float]:
    v = np.asarray(values, dtype=np.float32)
    return (v / np.linalg.norm(v)).tolist()


@pytest.fixture
def memory() -> MemoryService:
    m = MemoryService(dim=3)
    m.store_memory("I drink green tea", vector=unit(1, 0, 0), session_id="alice")
    m.store_memory("I live in Lyon", vector=unit(0, 1, 0), session_id="alice", memory_type="fact")
    m.store_memory("I prefer coffee", vector=unit(0.9, 0.1, 0), session_id="bob")
    m.store_memory("Bob's birthday is in May", session_id="bob", memory_type="fact")
    return m


def test_retrieve_by_similarity_session_and_type(memory: MemoryService) -> None:
    best = memory.retrieve_memories(vector=unit(1, 0.05, 0), top_k=2)
    assert [m["content"] for m in best] == ["I drink green tea", "I prefer coffee"]
    assert best[0]["score"] > best[1]["score"]
    alice = memory.retrieve_memories(vector=unit(1, 0.05, 0), session_id="alice", top_k=5)
    assert [m["content"] for m in alice] == ["I drink green tea", "I live in Lyon"]
    facts = memory.retrieve_memories(vector=unit(0, 1, 0), memory_type="fact", top_k=5)
    assert [m["content"] for m in facts] == ["I live in Lyon"]  # the May fact has no vector
    assert memory.retrieve_memories(vector=unit(1, 0, 0), session_id="nobody") == []


def test_retrieve_by_keyword_and_recency(memory: MemoryService) -> None:
    assert [m["content"] for m in memory.retrieve_memories(query="I ")][:2] == [
        "I prefer coffee",
        "I live in Lyon",
    ]
    assert [m["content"] for m in memory.retrieve_memories(query="may", session_id="bob")] == [
        "Bob's birthday is in May"
    ]
    newest = memory.retrieve_memories(top_k=1)
    assert newest[0]["content"] == "Bob's birthday is in May" and newest[0]["score"] is None
    assert memory.retrieve_memories(query="100%") == []  # LIKE wildcards are literal


def test_sessions_and_deletion(memory: MemoryService) -> None:
    assert {s["session_id"]: s["memories"] for s in memory.list_sessions()} == {
        "alice": 2,
        "bob": 2,
    }
    assert memory.delete_session("bob") == 2
    assert memory.count() == 2 and memory.count(session_id="bob") == 0
    assert [m["content"] for m in memory.retrieve_memories(vector=unit(0.9, 0.1, 0))] == [
        "I drink green tea",
        "I live in Lyon",
    ]


def test_graph_links_and_kv(memory: MemoryService) -> None:
    tea = memory.retrieve_memories(query="tea")[0]["id"]
    lyon = memory.retrieve_memories(query="Lyon")[0]["id"]
    coffee = memory.retrieve_memories(query="coffee")[0]["id"]
    memory.link(tea, lyon, "same_person", 0.9)
    memory.link(tea, coffee, "contrasts", 0.5)
    out = memory.neighbors(tea)
    assert [(n["memory"]["content"], n["relation"]) for n in out] == [
        ("I live in Lyon", "same_person"),
        ("I prefer coffee", "contrasts"),
    ]
    assert [n["memory"]["id"] for n in memory.neighbors(tea, relation="contrasts")] == [coffee]
    assert [n["memory"]["id"] for n in memory.neighbors(lyon, direction="in")] == [tea]
    with pytest.raises(KeyError, match="no memory with id 'ghost'"):
        memory.link(tea, "ghost")
    memory.delete_memory(coffee)
    assert [n["memory"]["id"] for n in memory.neighbors(tea, direction="both")] == [lyon]
    memory.put("profile:alice", {"city": "Lyon", "drinks": ["tea"]})
    assert memory.get("profile:alice") == {"city": "Lyon", "drinks": ["tea"]}
    assert memory.get("missing", default=0) == 0
    assert memory.delete_key("profile:alice") and memory.get("profile:alice") is None


def test_embedder_fills_in_vectors_and_queries() -> None:
    def embed(text: str) -> list[float]:  # a deterministic toy: counts of three letters
        return [text.count("a") + 0.1, text.count("e") + 0.1, text.count("o") + 0.1]

    memory = MemoryService(embedder=embed)
    memory.store_memory("banana bread")
    memory.store_memory("cheese tree")
    assert memory.retrieve_memories(query="aaa", top_k=1)[0]["content"] == "banana bread"


def test_bad_input_is_rejected_and_nothing_is_stored(memory: MemoryService) -> None:
    with pytest.raises(ValueError, match="dimension 2"):
        memory.store_memory("x", vector=[1.0, 0.0])
    with pytest.raises(TypeError, match="metadata must be JSON"):
        memory.store_memory("x", vector=unit(1, 0, 0), metadata={"f": object()})
    with pytest.raises(TypeError, match="content must be a string"):
        memory.store_memory(42)  # type: ignore[arg-type]
    assert memory.count() == 4


_WRITER = """
import sys
from sage.middleware.services.memory import MemoryService
memory = MemoryService(path=sys.argv[1])
ids = [memory.store_memory(f"note {i}", vector=[1.0, i / 10, 0.5], session_id=f"s{i % 3}",
                           metadata={"i": i}) for i in range(30)]
memory.link(ids[0], ids[1], "next")
memory.put("cursor", 30)
memory.cleanup()
print(ids[7])
"""


def test_memories_survive_a_restart_of_the_process(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_WRITER), str(tmp_path / "mem")],
        capture_output=True,
        text=True,
        check=True,
    )
    seventh = result.stdout.strip()
    memory = MemoryService(path=tmp_path / "mem")  # a new process would do exactly this
    assert memory.count() == 30 and memory.get("cursor") == 30
    hit = memory.retrieve_memories(vector=[1.0, 0.7, 0.5], top_k=1)[0]
    assert hit["id"] == seventh and hit["metadata"] == {"i": 7} and hit["session_id"] == "s1"
    assert {s["session_id"] for s in memory.list_sessions()} == {"s0", "s1", "s2"}
    first = memory.retrieve_memories(query="note 0", top_k=1)[0]["id"]
    assert memory.neighbors(first)[0]["memory"]["content"] == "note 1"
    memory.cleanup()


class Remember(MapFunction):
    def execute(self, i: int) -> str:
        vector = [1.0, (i % 97) / 97, (i % 89) / 89, 0.5]
        return self.call_service["memory_service"].store_memory(
            f"event {i}", vector=vector, session_id=f"user{i % 8}", metadata={"i": i}
        )


@pytest.mark.slow
def test_8_parallel_writers_storing_10k_memories_lose_none(tmp_path: Path) -> None:
    env = LocalEnvironment("writers")
    env.register_service("memory_service", lambda: MemoryService(path=tmp_path / "mem"))
    ids: list[str] = []
    env.from_collection(range(10_000)).map(Remember, parallelism=8).sink(ids.append)
    env.submit()
    assert len(set(ids)) == 10_000
    reopened = MemoryService(path=tmp_path / "mem")
    assert reopened.count() == 10_000 and len(reopened.vectors) == 10_000
    per_user = {s["session_id"]: s["memories"] for s in reopened.list_sessions()}
    assert per_user == {f"user{u}": 1250 for u in range(8)}
    stored = {m["metadata"]["i"] for m in reopened.retrieve_memories(top_k=10_000)}
    assert stored == set(range(10_000))
    reopened.cleanup()


def test_seed_style_registration_works_without_arguments() -> None:
    results: list[Any] = []

    class Store(MapFunction):
        def execute(self, text: str) -> Any:
            memory = self.call_service["memory_service"]
            memory.store_memory(content=text, vector=[1.0, 0.0], session_id="default")
            return memory.count()

    env = LocalEnvironment("seed_style")
    env.register_service("memory_service", lambda: MemoryService())
    env.from_collection(["a", "b"]).map(Store).sink(results.append)
    env.submit()
    assert sorted(results) == [1, 2]
