"""VDBService: search quality, deletes, persistence, concurrency and bad input."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sage.common.core.functions.map_function import MapFunction
from sage.common.errors import ConfigError
from sage.kernel.api.local_environment import LocalEnvironment
from sage.middleware.services.vdb import VDBService


def clustered(n: int, dim: int, clusters: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres (like text embeddings).

    The centres depend only on ``dim`` and ``clusters``, so queries drawn with another
    ``seed`` come from the same distribution as the data.
    """
    centres = np.random.default_rng(dim * 1000 + clusters).normal(size=(clusters, dim))
    rng = np.random.default_rng(seed)
    points = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, dim))
    points = points.astype(np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def ids_of(hits: list[list[dict[str, Any]]]) -> list[list[Any]]:
    return [[h["id"] for h in row] for row in hits]


@pytest.mark.slow
def test_hnsw_recall_at_10_against_exact_flat_on_100k_clustered_384d_vectors() -> None:
    data = clustered(100_000, 384, 200)
    queries = clustered(500, 384, 200, seed=1)
    flat, hnsw = VDBService(index="flat"), VDBService(index="hnsw")
    flat.add(data)
    hnsw.add(data)
    exact = ids_of(flat.search(queries, top_k=10))  # type: ignore[arg-type]
    approx = ids_of(hnsw.search(queries, top_k=10))  # type: ignore[arg-type]
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.95, f"recall@10 = {recall:.3f}"


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_flat_search_matches_numpy_brute_force(metric: str) -> None:
    rng = np.random.default_rng(3)
    data = rng.normal(size=(500, 16)).astype(np.float32)
    queries = rng.normal(size=(20, 16)).astype(np.float32)
    vdb = VDBService(index="flat", metric=metric)
    vdb.add(data)
    if metric == "cosine":
        d = data / np.linalg.norm(data, axis=1, keepdims=True)
        q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        expected = np.argsort(-(q @ d.T), axis=1)[:, :5]
    elif metric == "ip":
        expected = np.argsort(-(queries @ data.T), axis=1)[:, :5]
    else:
        distances = ((queries[:, None, :] - data[None, :, :]) ** 2).sum(-1)
        expected = np.argsort(distances, axis=1)[:, :5]
    assert ids_of(vdb.search(queries, top_k=5)) == expected.tolist()  # type: ignore[arg-type]


def test_one_query_gives_one_hit_list_and_a_batch_one_list_per_row() -> None:
    vdb = VDBService(dim=4)
    vdb.add(np.eye(4), metadata=[{"n": i} for i in range(4)], ids=["a", "b", "c", "d"])
    single = vdb.search([1, 0.2, 0, 0], top_k=2)
    assert [h["id"] for h in single] == ["a", "b"]
    assert single[0]["metadata"] == {"n": 0} and single[0]["score"] == pytest.approx(0.98, 0.01)
    batch = vdb.search(np.eye(4)[:3], top_k=1)
    assert ids_of(batch) == [["a"], ["b"], ["c"]]  # type: ignore[arg-type]
    assert vdb.search([1, 0, 0, 0], top_k=10, filter={"n": 3})[0]["id"] == "d"
    above_one = vdb.search([1, 0, 0, 0], top_k=10, filter=lambda m: m["n"] > 1)
    assert {h["id"] for h in above_one} == {"c", "d"}  # type: ignore[index]
    assert vdb.search([1, 0, 0, 0], filter={"n": 99}) == []


@pytest.mark.parametrize("index", ["flat", "hnsw", "ivf"])
def test_delete_and_save_load_round_trip(index: str, tmp_path: Path) -> None:
    data = clustered(3000, 32, 20)
    options = {"nlist": 16, "train_size": 1000} if index == "ivf" else {}
    vdb = VDBService(index=index, **options)
    ids = vdb.add(
        data, metadata=[{"row": i} for i in range(3000)], ids=[f"doc{i}" for i in range(3000)]
    )
    assert ids[:2] == ["doc0", "doc1"] and vdb.count() == 3000
    assert vdb.delete(["doc0", "doc1", "doc2"]) == 3
    assert vdb.count() == 2997
    hits = vdb.search(data[0], top_k=5)
    assert "doc0" not in [h["id"] for h in hits]  # type: ignore[index]
    before = vdb.search(data[:50], top_k=5)
    vdb.save(tmp_path / "index")
    restored = VDBService()
    restored.load(tmp_path / "index")
    assert restored.count() == 2997
    assert restored.search(data[:50], top_k=5) == before
    assert restored.get("doc7") == {"id": "doc7", "metadata": {"row": 7}}
    # a service given a path loads it at start and saves it at cleanup
    again = VDBService(path=tmp_path / "index")
    again.add(data[:1], ids=["new"])
    again.cleanup()
    assert VDBService(path=tmp_path / "index").count() == 2998


def test_ivf_is_exact_until_trained_then_trains_on_what_arrived() -> None:
    data = clustered(1200, 16, 8)
    vdb = VDBService(index="ivf", nlist=8, train_size=1000)
    vdb.add(data[:500])
    assert not vdb.vectors._index.is_trained
    assert vdb.search(data[3], top_k=1)[0]["id"] == 3  # type: ignore[index]
    vdb.add(data[500:])
    assert vdb.vectors._index.is_trained and vdb.count() == 1200
    assert vdb.search(data[900], top_k=1)[0]["id"] == 900  # type: ignore[index]


def test_bad_input_is_rejected_and_leaves_the_index_unchanged() -> None:
    vdb = VDBService(dim=8)
    good = clustered(100, 8, 4)
    vdb.add(good, ids=list(range(100)))
    before = vdb.search(good[:10], top_k=3)
    bad_calls = [
        (lambda: vdb.add(np.ones((2, 7))), ValueError, "dimension 7, but this index holds 8-d"),
        (lambda: vdb.add([[np.nan] * 8]), ValueError, "NaN or infinite"),
        (lambda: vdb.add([[np.inf] + [0.0] * 7]), ValueError, "NaN or infinite"),
        (lambda: vdb.add(np.zeros(8)), ValueError, "all zeros"),
        (lambda: vdb.add([["a"] * 8]), TypeError, "must be numbers"),
        (lambda: vdb.add(np.ones((2, 8)), ids=[1, 2]), ValueError, "already in the index"),
        (lambda: vdb.add(np.ones((2, 8)), ids=[500, 500]), ValueError, "unique"),
        (lambda: vdb.add(np.ones((2, 8)), metadata=[{}]), ValueError, "1 entries for 2 vectors"),
        (lambda: vdb.delete([3, 999]), KeyError, "unknown ids"),
        (lambda: vdb.search(np.ones(5)), ValueError, "dimension 5"),
        (lambda: vdb.search(np.ones(8), top_k=0), ValueError, "top_k=0"),
        (lambda: vdb.add(np.ones((2, 2, 8))), ValueError, "1-D\\) or a batch"),
    ]
    for call, error, message in bad_calls:
        with pytest.raises(error, match=message):
            call()
    assert vdb.count() == 100
    assert vdb.search(good[:10], top_k=3) == before


def test_unknown_options_are_clear() -> None:
    with pytest.raises(ConfigError, match="index='annoy' is invalid; use one of 'flat', 'hnsw'"):
        VDBService(index="annoy")
    with pytest.raises(ConfigError, match="metric='dot' is invalid"):
        VDBService(metric="dot")
    with pytest.raises(ConfigError, match="device='cuda' needs a CUDA build of FAISS"):
        VDBService(device="cuda")


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_concurrent_add_and_search_from_8_threads(index: str) -> None:
    vdb = VDBService(dim=32, index=index)
    data = clustered(8000, 32, 16)
    vdb.add(data[:1000], ids=list(range(1000)))
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def writer(part: int) -> None:
        try:
            start.wait()
            for lo in range(1000 + part * 1750, 1000 + (part + 1) * 1750, 250):
                vdb.add(data[lo : lo + 250], ids=list(range(lo, lo + 250)))
        except BaseException as exc:
            errors.append(exc)

    def reader(part: int) -> None:
        try:
            start.wait()
            for i in range(60):
                hits = vdb.search(data[(part * 60 + i) % 1000], top_k=5)
                assert len(hits) == 5 and all(isinstance(h["id"], int) for h in hits)  # type: ignore[index]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in range(4)]
    threads += [threading.Thread(target=reader, args=(p,)) for p in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert vdb.count() == 8000
    found = vdb.search(data[::97], top_k=1)
    if index == "flat":  # exact: every vector finds itself
        assert ids_of(found) == [[i] for i in range(0, 8000, 97)]  # type: ignore[arg-type]


class Retrieve(MapFunction):
    def execute(self, row: int) -> tuple[int, Any]:
        return row, self.call_service["vdb_service"].search(QUERIES[row], top_k=3)


QUERIES = clustered(200, 16, 4, seed=5)


def test_vdb_as_a_service_called_from_a_parallel_operator() -> None:
    data = clustered(1000, 16, 4, seed=4)

    def build() -> VDBService:
        vdb = VDBService(dim=16)
        vdb.add(data)
        return vdb

    env = LocalEnvironment("vdb_service")
    env.register_service("vdb_service", build)
    out: list[tuple[int, Any]] = []
    env.from_collection(range(200)).map(Retrieve, parallelism=4).sink(out.append)
    env.submit()
    expected = VDBService(dim=16)
    expected.add(data)
    assert sorted(out, key=lambda r: r[0]) == [
        (i, expected.search(QUERIES[i], top_k=3)) for i in range(200)
    ]
    assert env.metrics().service("vdb_service").calls == 200
