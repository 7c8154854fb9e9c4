"""Document-level upserts and deletes in VDBService and MemoryService.

A document's chunks are replaced as a whole (never a mix of versions, never a moment with
none), older versions are refused (tombstones included), replays are idempotent, bad input
leaves the old chunks, and all of it survives saving and reopening.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sage.middleware.services.memory import MemoryService
from sage.middleware.services.vdb import VDBService
from sage.middleware.services.vector_index import VectorIndex

DIM = 8


def vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def versions_found(vdb: VDBService, doc_id: str, query: Any = None) -> list[int]:
    """The ``v`` metadata of every chunk of ``doc_id`` a filtered search returns."""
    query = np.ones(DIM, np.float32) if query is None else query
    hits = vdb.search(query, top_k=50, filter={"doc_id": doc_id})
    return [h["metadata"]["v"] for h in hits]  # type: ignore[index]


def vdb_options(index: str) -> dict[str, Any]:
    return {"nlist": 4, "train_size": 20} if index == "ivf" else {}


@pytest.fixture
def frequent_switches() -> Iterator[None]:
    """Threads switch every 10 us, not 5 ms, so readers land inside a writer's update (a
    replacement split in two lock sections fails the concurrency tests then; it would not
    with the default interval)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


# -- VDBService ---------------------------------------------------------------------------------


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivf"])
def test_upsert_replaces_every_chunk_and_fewer_chunks_drop_the_extras(index: str) -> None:
    vdb = VDBService(dim=DIM, index=index, **vdb_options(index))
    vdb.add(vectors(30, 99), ids=[f"other{i}" for i in range(30)])
    old = vectors(3, 1)
    assert vdb.upsert_document("a.txt", old, [{"v": 1}] * 3) == ["a.txt#0", "a.txt#1", "a.txt#2"]
    assert vdb.count() == 33
    new = vectors(2, 2)
    assert vdb.upsert_document("a.txt", new, {"v": 2}) == ["a.txt#0", "a.txt#1"]
    assert vdb.count() == 32
    assert vdb.document("a.txt") == {
        "doc_id": "a.txt",
        "version": None,
        "chunks": ["a.txt#0", "a.txt#1"],
    }
    with pytest.raises(KeyError):
        vdb.get("a.txt#2")
    assert vdb.get("a.txt#1")["metadata"] == {"v": 2, "doc_id": "a.txt", "chunk": 1}
    # no old chunk is ever returned, whatever the query: not by the filter, not unfiltered
    for query in old:
        assert versions_found(vdb, "a.txt", query) == [2, 2]
        hits = vdb.search(query, top_k=32)
        ours = [h["metadata"]["v"] for h in hits if str(h["id"]).startswith("a.txt")]  # type: ignore[index]
        assert len(hits) == 32 and ours == [2, 2]
    best = vdb.search(new[1], top_k=1)[0]
    assert best["id"] == "a.txt#1" and best["score"] == pytest.approx(1.0, abs=1e-5)  # type: ignore[index]


def test_no_rows_leaves_an_empty_document_and_delete_removes_it() -> None:
    vdb = VDBService(dim=DIM)
    vdb.upsert_document("a", vectors(3, 1), version=1)
    vdb.upsert_document("b", vectors(2, 2), version=1)
    assert vdb.upsert_document("a", [], version=2) == []
    assert vdb.document("a") == {"doc_id": "a", "version": 2, "chunks": []}
    assert vdb.count() == 2 and vdb.documents() == {"a": 2, "b": 1}
    assert vdb.delete_document("b") == 2
    assert vdb.count() == 0 and vdb.search(np.ones(DIM), filter={"doc_id": "b"}) == []
    assert vdb.document("b") is None and vdb.documents() == {"a": 2}
    assert vdb.delete_document("b") == 0  # a replay deletes again: not an error
    assert vdb.delete_document("never-seen") == 0


def test_stale_versions_are_ignored_and_a_tombstone_blocks_older_upserts() -> None:
    vdb = VDBService(dim=DIM)
    assert vdb.upsert_document("a", vectors(2, 5), {"v": 5}, version=5)
    assert vdb.upsert_document("a", vectors(3, 3), {"v": 3}, version=3) == []  # reordered
    assert versions_found(vdb, "a") == [5, 5] and vdb.document("a")["version"] == 5  # type: ignore[index]
    assert vdb.delete_document("a", version=4) == 0  # older than the document: ignored
    assert vdb.count() == 2
    assert vdb.delete_document("a", version=7) == 2
    assert vdb.upsert_document("a", vectors(1, 6), {"v": 6}, version=6) == []  # no resurrection
    assert vdb.document("a") is None and vdb.count() == 0
    assert vdb.delete_document("a", version=7) == 0  # the same delete replayed
    assert vdb.upsert_document("a", vectors(1, 8), {"v": 8}, version=8) == ["a#0"]
    assert versions_found(vdb, "a") == [8]
    # a tombstone for a document never seen: its late upsert stays out too
    assert vdb.delete_document("z", version=10) == 0
    assert vdb.upsert_document("z", vectors(1, 9), version=9) == []
    # version=None always applies, and leaves no version to compare with
    assert vdb.upsert_document("a", vectors(1, 1), {"v": 0}) == ["a#0"]
    assert vdb.upsert_document("a", vectors(1, 2), {"v": 1}, version=1) == ["a#0"]


def test_replaying_the_same_upsert_gives_the_same_index() -> None:
    vdb = VDBService(dim=DIM)
    vdb.upsert_document("b", vectors(4, 4), version=1)
    data, metas = vectors(3, 7), [{"v": 2, "k": i} for i in range(3)]
    first = vdb.upsert_document("a", data, metas, version=2)
    queries = vectors(5, 11)
    before = vdb.search(queries, top_k=7)
    assert vdb.upsert_document("a", data, metas, version=2) == first
    assert vdb.search(queries, top_k=7) == before
    assert vdb.count() == 7 and vdb.documents() == {"a": 2, "b": 1}


def test_a_bad_upsert_leaves_the_old_chunks(tmp_path: Path) -> None:
    vdb = VDBService(dim=DIM, path=tmp_path / "index")
    vdb.upsert_document("a", vectors(2, 1), {"v": 1}, version=1)
    vdb.add(vectors(1, 2), ids=["b#0"])  # a plain id that looks like a chunk of "b"
    nan = vectors(2, 3)
    nan[1, 2] = np.nan
    bad_calls = [
        (lambda: vdb.upsert_document("a", np.ones((2, 5)), version=2), ValueError, "dimension 5"),
        (lambda: vdb.upsert_document("a", nan, version=2), ValueError, "row 1 contains NaN"),
        (lambda: vdb.upsert_document("a", vectors(2, 4), [{}], version=2), ValueError, "1 entries"),
        (
            lambda: vdb.upsert_document("a", vectors(1, 4), {"f": (1, 2)}, version=2),
            ValueError,
            "cannot be saved",
        ),
        (lambda: vdb.upsert_document("a", None, version=2), TypeError, "one row per chunk"),
        (lambda: vdb.upsert_document(7, vectors(1, 4)), TypeError, "doc_id must be a str"),  # type: ignore[arg-type]
        (lambda: vdb.upsert_document("", vectors(1, 4)), ValueError, "doc_id is empty"),
        (lambda: vdb.upsert_document("a", vectors(1, 4), version="2"), TypeError, "version must"),  # type: ignore[arg-type]
        (lambda: vdb.upsert_document("a", vectors(1, 4), version=True), TypeError, "version must"),
        (lambda: vdb.upsert_document("b", vectors(1, 4)), ValueError, "taken by vectors stored"),
        (lambda: vdb.add(vectors(1, 4), ids=["a#0"]), ValueError, "already in the index"),
    ]
    for call, error, message in bad_calls:
        with pytest.raises(error, match=message):
            call()
    assert vdb.document("a") == {"doc_id": "a", "version": 1, "chunks": ["a#0", "a#1"]}
    assert versions_found(vdb, "a") == [1, 1] and vdb.count() == 3
    assert vdb.upsert_document("a", vectors(1, 5), {"v": 1}, version=np.int64(1)) == ["a#0"]


def test_plain_deletes_of_chunks_keep_the_document_table_right() -> None:
    vdb = VDBService(dim=DIM)
    vdb.upsert_document("a", vectors(3, 1))
    assert vdb.delete(["a#1"]) == 1
    assert vdb.document("a")["chunks"] == ["a#0", "a#2"]  # type: ignore[index]
    assert vdb.upsert_document("a", vectors(2, 2)) == ["a#0", "a#1"]
    assert vdb.count() == 2
    # a raw add with doc_id metadata is found by the doc_id filter, like any metadata
    vdb.add(vectors(1, 3), metadata={"doc_id": "a", "v": "raw"}, ids=["extra"])
    by_lookup = {h["id"] for h in vdb.search(np.ones(DIM), top_k=10, filter={"doc_id": "a"})}  # type: ignore[index]
    by_scan = {
        h["id"]  # type: ignore[index]
        for h in vdb.search(np.ones(DIM), top_k=10, filter=lambda m: m.get("doc_id") == "a")
    }
    assert by_lookup == by_scan == {"a#0", "a#1", "extra"}
    vdb.delete("extra")
    assert {h["id"] for h in vdb.search(np.ones(DIM), top_k=10, filter={"doc_id": "a"})} == {  # type: ignore[index]
        "a#0",
        "a#1",
    }


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_save_and_load_keep_documents_and_tombstones(index: str, tmp_path: Path) -> None:
    vdb = VDBService(dim=DIM, index=index)
    for d in range(20):
        vdb.upsert_document(f"doc{d}", vectors(1 + d % 3, d), {"v": d}, version=d + 1)
    for d in range(0, 20, 4):
        vdb.delete_document(f"doc{d}", version=100)
    vdb.upsert_document("doc1", vectors(2, 50), {"v": 50}, version=60)  # a replacement
    queries = vectors(10, 77)
    before = vdb.search(queries, top_k=5)
    vdb.save(tmp_path / "index")
    restored = VDBService()
    restored.load(tmp_path / "index")
    assert restored.documents() == vdb.documents() and restored.count() == vdb.count()
    assert restored.document("doc1") == vdb.document("doc1")
    assert restored.search(queries, top_k=5) == before
    assert restored.upsert_document("doc0", vectors(1, 1), version=99) == []  # tombstone kept
    assert restored.upsert_document("doc1", vectors(1, 1), version=59) == []  # version kept
    assert restored.upsert_document("doc1", vectors(1, 1), {"v": 61}, version=61) == ["doc1#0"]
    assert versions_found(restored, "doc1") == [61]
    # path=: loaded at start, saved at cleanup
    live = VDBService(path=tmp_path / "index")
    live.delete_document("doc2", version=200)
    live.cleanup()
    again = VDBService(path=tmp_path / "index")
    assert "doc2" not in again.documents()
    assert again.upsert_document("doc2", vectors(1, 1), version=150) == []


def test_state_saved_before_documents_existed_loads_with_none(tmp_path: Path) -> None:
    vdb = VDBService(dim=DIM)
    vdb.add(vectors(3, 1), ids=["x", "y", "z"])
    vdb.save(tmp_path / "old")
    state_file = tmp_path / "old" / "state.json"
    state = json.loads(state_file.read_text())
    del state["documents"]  # what a save from before this change looks like
    state_file.write_text(json.dumps(state))
    loaded = VDBService(path=tmp_path / "old")
    assert loaded.count() == 3 and loaded.documents() == {}
    assert loaded.upsert_document("x", vectors(1, 2)) == ["x#0"]


def race(
    versions: dict[int, int], write: Callable[[int, int], None], read: Callable[[int], list[int]]
) -> set[int]:
    """One thread writes each version in turn (``write(version, chunks)``) while readers keep
    reading (``read(seed)``: the versions of the chunks found) and check that every read
    shows one whole version; returns the versions the readers saw."""
    first_done, writer_done = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    seen: set[int] = set()

    def writer() -> None:
        try:
            for v, n in versions.items():
                write(v, n)
                first_done.set()
        except BaseException as exc:
            errors.append(exc)
        finally:
            first_done.set()
            writer_done.set()

    def reader(seed: int) -> None:
        try:
            first_done.wait()
            while not writer_done.is_set():
                found = read(seed)
                assert found, "the document vanished while being replaced"
                assert len(set(found)) == 1, f"chunks of several versions at once: {found}"
                assert len(found) == versions[found[0]], f"part of version {found[0]}: {found}"
                seen.add(found[0])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)]
    threads += [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert seen  # the readers did look while the writer worked
    return seen


@pytest.mark.usefixtures("frequent_switches")
def test_searches_see_one_whole_version_while_a_document_is_replaced() -> None:
    vdb = VDBService(dim=DIM)
    vdb.add(vectors(200, 1000), metadata=[{"doc_id": f"bg{i}"} for i in range(200)])
    sizes = {v: 1 + v % 4 for v in range(1, 301)}  # each version has 1 to 4 chunks
    race(
        sizes,
        lambda v, n: vdb.upsert_document("d", vectors(n, v), {"v": v}, version=v),
        lambda seed: versions_found(vdb, "d", vectors(1, seed)[0]),
    )
    assert versions_found(vdb, "d") == [300] * sizes[300] and vdb.count() == 200 + sizes[300]


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_many_replacements_keep_counts_and_exact_search_right(index: str) -> None:
    """Removal is lazy (tombstones, compacted now and then): nothing shows through."""
    vdb = VDBService(dim=DIM, index=index)
    rng = np.random.default_rng(0)
    final: dict[str, np.ndarray] = {}
    for step in range(3000):
        doc = f"doc{rng.integers(0, 60)}"
        final[doc] = vectors(int(rng.integers(0, 4)), step)
        vdb.upsert_document(doc, final[doc])
        if step % 7 == 0:
            gone = f"doc{rng.integers(0, 60)}"
            vdb.delete_document(gone)
            final.pop(gone, None)
    assert vdb.count() == sum(len(v) for v in final.values()) == len(vdb.vectors)
    assert len(vdb.vectors._tombstones) <= vdb.vectors._dead_limit
    fresh = VDBService(dim=DIM, index="flat")
    for doc, data in final.items():
        fresh.upsert_document(doc, data)
    queries = vectors(20, 12345)
    if index == "flat":
        assert vdb.search(queries, top_k=10) == fresh.search(queries, top_k=10)
    for doc, data in final.items():
        assert len(vdb.search(np.ones(DIM), top_k=10, filter={"doc_id": doc})) == len(data)


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_an_id_removed_and_added_again_is_the_new_vector(index: str) -> None:
    """SQLite reuses the largest rowid once deleted: the index must not hide the new one."""
    vi = VectorIndex(DIM, index, "cosine", "cpu")
    data = vi.prepare(vectors(3, 1))
    with vi.lock.write():
        vi.add(data, np.arange(3, dtype=np.int64))
        vi.remove([2])
        assert len(vi) == 2
        replacement = vi.prepare(vectors(1, 2))
        vi.add(replacement, np.asarray([2], dtype=np.int64))
    with vi.lock.read():
        assert len(vi) == 3
        scores, ids = vi.search(replacement, 3)
        _, old = vi.search(data[2:3], 3)
    assert ids[0][0] == 2 and scores[0][0] == pytest.approx(1.0, abs=1e-5)
    assert sorted(old[0].tolist()) == [0, 1, 2]


# -- MemoryService ------------------------------------------------------------------------------


def contents(memory: MemoryService, query: Any, session: str = "documents") -> list[str]:
    hits = memory.retrieve_memories(vector=query, session_id=session, top_k=50)
    return sorted(h["content"] for h in hits)


def test_memory_upsert_replaces_chunks_and_delete_removes_them() -> None:
    memory = MemoryService(dim=DIM)
    memory.store_memory("unrelated", vector=vectors(1, 0)[0], session_id="documents")
    ids = memory.upsert_document("a", ["a0", "a1", "a2"], vectors(3, 1), metadata={"v": 1})
    assert ids == ["a#0", "a#1", "a#2"] and memory.count() == 4
    assert memory.get_memory("a#1")["metadata"] == {"v": 1, "doc_id": "a", "chunk": 1}
    memory.link("a#0", "a#1", "next")
    assert memory.upsert_document("a", ["b0", "b1"], vectors(2, 2)) == ["a#0", "a#1"]
    assert memory.count() == 3 and memory.neighbors("a#0") == []  # old chunks' links went
    with pytest.raises(KeyError):
        memory.get_memory("a#2")
    for query in vectors(3, 1):
        assert contents(memory, query) == ["b0", "b1", "unrelated"]
    assert memory.document("a") == {"doc_id": "a", "version": None, "chunks": ["a#0", "a#1"]}
    assert memory.delete_document("a") == 2 and memory.delete_document("a") == 0
    assert memory.count() == 1 and memory.document("a") is None and memory.documents() == {}
    assert contents(memory, vectors(1, 2)[0]) == ["unrelated"]


def test_memory_versions_tombstones_and_replays() -> None:
    memory = MemoryService(dim=DIM)
    assert memory.upsert_document("a", ["v5"], vectors(1, 5), version=5) == ["a#0"]
    assert memory.upsert_document("a", ["v3"], vectors(1, 3), version=3) == []
    assert memory.get_memory("a#0")["content"] == "v5"
    assert memory.upsert_document("a", ["v5"], vectors(1, 5), version=5) == ["a#0"]  # replay
    assert memory.count() == 1 and memory.documents() == {"a": 5}
    assert memory.delete_document("a", version=4) == 0 and memory.count() == 1
    assert memory.delete_document("a", version=7) == 1
    assert memory.upsert_document("a", ["v6"], vectors(1, 6), version=6) == []
    assert memory.count() == 0 and memory.document("a") is None
    assert memory.upsert_document("a", ["v8"], vectors(1, 8), version=8) == ["a#0"]
    assert contents(memory, vectors(1, 8)[0]) == ["v8"]


def test_memory_bad_upserts_leave_the_old_chunks() -> None:
    memory = MemoryService(dim=DIM)
    memory.upsert_document("a", ["x", "y"], vectors(2, 1), version=1)
    nan = vectors(2, 2)
    nan[0, 0] = np.nan
    bad_calls = [
        (lambda: memory.upsert_document("a", ["p", "q"], np.ones((2, 3))), ValueError, "dimension"),
        (lambda: memory.upsert_document("a", ["p", "q"], nan), ValueError, "NaN"),
        (
            lambda: memory.upsert_document("a", ["p", "q"], vectors(1, 2)),
            ValueError,
            "1 vectors for 2",
        ),
        (lambda: memory.upsert_document("a", "pq", vectors(1, 2)), TypeError, "list of str"),
        (lambda: memory.upsert_document("a", [b"p"], vectors(1, 2)), TypeError, "list of str"),  # type: ignore[list-item]
        (
            lambda: memory.upsert_document("a", ["p"], vectors(1, 2), metadata={"f": object()}),
            TypeError,
            "JSON",
        ),
        (lambda: memory.upsert_document("a", ["p"], version=1.5), TypeError, "version must"),  # type: ignore[arg-type]
    ]
    for call, error, message in bad_calls:
        with pytest.raises(error, match=message):
            call()
    assert memory.document("a") == {"doc_id": "a", "version": 1, "chunks": ["a#0", "a#1"]}
    assert contents(memory, vectors(1, 1)[0]) == ["x", "y"] and len(memory.vectors) == 2


def test_memory_documents_survive_reopening_and_old_databases_open(tmp_path: Path) -> None:
    memory = MemoryService(path=tmp_path / "mem", dim=DIM)
    memory.upsert_document("a", ["a0", "a1"], vectors(2, 1), version=3)
    memory.upsert_document("b", ["b0"], vectors(1, 2), version=1)
    memory.upsert_document("a", ["a0'"], vectors(1, 3), version=4)
    memory.delete_document("b", version=9)
    memory.upsert_document("c", [], version=2)  # present, no chunks
    state = (memory.documents(), memory.document("a"), memory.count())
    memory.cleanup()
    reopened = MemoryService(path=tmp_path / "mem")
    assert (reopened.documents(), reopened.document("a"), reopened.count()) == state
    assert state[0] == {"a": 4, "c": 2}
    assert contents(reopened, vectors(1, 3)[0]) == ["a0'"] and len(reopened.vectors) == 1
    assert reopened.upsert_document("b", ["late"], vectors(1, 4), version=8) == []
    assert reopened.upsert_document("a", ["old"], vectors(1, 4), version=3) == []
    reopened.cleanup()
    # a database from before the documents table: it opens, with no documents
    with sqlite3.connect(tmp_path / "mem" / "memory.sqlite3") as db:
        db.execute("DROP TABLE documents")
    old = MemoryService(path=tmp_path / "mem")
    assert old.documents() == {} and old.count() == 1
    assert old.upsert_document("z", ["z0"], vectors(1, 5)) == ["z#0"]
    old.cleanup()


def test_memory_embeds_chunks_and_reuses_rowids_safely() -> None:
    def embed(text: str) -> list[float]:
        return vectors(1, sum(map(ord, text)))[0].tolist()

    memory = MemoryService(embedder=embed)
    memory.upsert_document("a", ["one", "two"])
    assert memory.retrieve_memories(query="two", top_k=1)[0]["id"] == "a#1"
    assert memory.delete_document("a") == 2
    # the largest rowids were deleted: SQLite gives them out again
    new = memory.store_memory("three")
    hits = memory.retrieve_memories(query="three", top_k=5)
    assert [h["id"] for h in hits] == [new] and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.usefixtures("frequent_switches")
def test_memory_searches_see_one_whole_version_while_a_document_is_replaced() -> None:
    memory = MemoryService(dim=DIM)
    for i in range(50):
        memory.store_memory(f"bg{i}", vector=vectors(1, 500 + i)[0], session_id="d")
    sizes = {v: 1 + v % 4 for v in range(1, 151)}
    race(
        sizes,
        lambda v, n: memory.upsert_document(
            "d", [f"v{v}"] * n, vectors(n, v), session_id="doc", version=v
        ),
        lambda seed: [
            int(text[1:]) for text in contents(memory, vectors(1, seed)[0], session="doc")
        ],
    )
    assert contents(memory, vectors(1, 0)[0], session="doc") == ["v150"] * sizes[150]


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_a_narrow_filter_on_hnsw_is_searched_exactly(metric: str) -> None:
    hnsw, flat = VDBService(index="hnsw", metric=metric), VDBService(index="flat", metric=metric)
    data = vectors(3000, 1)
    for vdb in (hnsw, flat):
        vdb.add(data, metadata=[{"doc_id": f"d{i % 500}"} for i in range(3000)])
        vdb.delete(list(range(0, 3000, 7)))
    queries = vectors(4, 2)
    for doc in ("d1", "d7", "d499"):
        got = hnsw.search(queries, top_k=10, filter={"doc_id": doc})
        want = flat.search(queries, top_k=10, filter={"doc_id": doc})
        assert [[h["id"] for h in row] for row in got] == [[h["id"] for h in row] for row in want]  # type: ignore[index]
        scores = [[h["score"] for h in row] for row in got]  # type: ignore[index]
        assert np.allclose(scores, [[h["score"] for h in row] for row in want], atol=1e-4)  # type: ignore[index]


def test_hnsw_filters_with_ids_missing_from_the_index_still_work() -> None:
    memory = MemoryService(dim=DIM, index="hnsw")
    with_vectors = [
        memory.store_memory(f"m{i}", vector=vectors(1, i)[0], session_id="s") for i in range(5)
    ]
    memory.store_memory("no vector", session_id="s")  # a rowid the index does not hold
    memory.upsert_document("d", ["c0", "c1"], vectors(2, 9), session_id="s")
    hits = memory.retrieve_memories(vector=vectors(1, 3)[0], session_id="s", top_k=10)
    assert hits[0]["id"] == with_vectors[3] and len(hits) == 7
    vi = VectorIndex(DIM, "hnsw", "cosine", "cpu")
    with vi.lock.write():
        vi.add(vi.prepare(vectors(3, 1)), np.arange(3, dtype=np.int64))
    with vi.lock.read():
        _, ids = vi.search(vi.prepare(vectors(1, 1)), 3, np.asarray([1, 2, 99], np.int64))
    assert sorted(ids[0].tolist()) == [-1, 1, 2]
