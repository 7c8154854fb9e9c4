"""Property tests: bad input to ``VDBService`` gets a clear error and leaves the store unchanged.

One small store per index kind (flat, HNSW, IVF trained) is built once and shared by every
example; after each refused call its count and the answers to a fixed set of queries (ids,
scores and metadata) must be exactly what they were when it was built. Vectors are raw
8-d arrays, so no embedding model is needed. Examples are derandomised and bounded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sage.common.errors import ConfigError
from sage.middleware.services.vdb import VDBService
from sage.middleware.services.vector_index import VectorIndex

BOUNDED = settings(max_examples=60, deadline=None, derandomize=True)
FEW = settings(max_examples=20, deadline=None, derandomize=True)

DIM, N = 8, 60
KINDS = ["flat", "hnsw", "ivf"]
OPTIONS: dict[str, dict[str, Any]] = {"ivf": {"nlist": 4, "nprobe": 4, "train_size": 40}}
RNG = np.random.default_rng(7)
DATA = RNG.normal(size=(N, DIM)).astype(np.float32)
QUERIES = RNG.normal(size=(5, DIM)).astype(np.float32)
IDS = [f"doc{i}" for i in range(N)]


@cache
def store(kind: str) -> tuple[VDBService, Any]:
    """The shared store of ``kind`` and its state right after it was built."""
    vdb = VDBService(dim=DIM, index=kind, **OPTIONS.get(kind, {}))
    vdb.add(DATA, metadata=[{"row": i, "even": i % 2 == 0} for i in range(N)], ids=IDS)
    if kind == "ivf":
        assert vdb.vectors._index.is_trained
    return vdb, state(vdb)


def state(vdb: VDBService) -> Any:
    """Everything a caller can observe: count, fixed queries' hits, lookups by id."""
    return (
        vdb.count(),
        vdb.search(QUERIES, top_k=7),
        vdb.search(QUERIES[0], top_k=N, filter={"even": True}),
        [vdb.get(i) for i in IDS[:3]],
    )


def refused(
    kind: str, call: Callable[[VDBService], Any], errors: Any, *names: str
) -> BaseException:
    """``call`` on the ``kind`` store raises one of ``errors`` whose message names every
    string in ``names``, and the store is exactly as it was built."""
    vdb, built = store(kind)
    try:
        with pytest.raises(errors) as info:
            call(vdb)
    finally:
        changed = state(vdb) != built
        if changed:
            store.cache_clear()  # a fresh store for the next examples: one failure, not many
    message = str(info.value)
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"
    assert not changed, "a refused call changed the store"
    return info.value


kinds = st.sampled_from(KINDS)
finite = st.floats(min_value=-10, max_value=10, allow_nan=False, width=32)


def rows(n: st.SearchStrategy[int], dim: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    """Finite float arrays of shape (n, dim)."""
    return st.tuples(n, dim).flatmap(
        lambda shape: st.lists(
            finite, min_size=shape[0] * shape[1], max_size=shape[0] * shape[1]
        ).map(lambda v: np.asarray(v, dtype=np.float64).reshape(shape))
    )


def _poison(args: tuple[Any, int, int, float]) -> Any:
    """Good rows with one value made NaN or infinite: nothing of the batch may be stored."""
    array, row, col, value = args
    array = array.copy()
    array[row % len(array), col % DIM] = value
    return array


# Vectors (or queries) no store can take, with a word the error must contain.
bad_vectors = st.one_of(
    # a wrong dimension, one vector or a batch
    rows(st.integers(1, 3), st.integers(1, 16).filter(lambda d: d != DIM)).map(
        lambda a: (a, "dimension")
    ),
    rows(st.just(1), st.integers(1, 16).filter(lambda d: d != DIM)).map(
        lambda a: (a[0], "dimension")
    ),
    # NaN or an infinity somewhere in an otherwise good batch
    st.tuples(
        rows(st.integers(1, 4), st.just(DIM)),
        st.integers(0, 3),
        st.integers(0, DIM - 1),
        st.sampled_from([math.nan, math.inf, -math.inf, 1e39]),
    ).map(lambda args: (_poison(args), "NaN or infinite")),
    # not real numbers
    st.lists(st.text(max_size=3), min_size=DIM, max_size=DIM).map(lambda v: (v, "must be numbers")),
    st.lists(st.booleans(), min_size=DIM, max_size=DIM).map(lambda v: (v, "must be numbers")),
    rows(st.just(1), st.just(DIM)).map(lambda a: (a.astype(np.complex64), "must be numbers")),
    st.sampled_from(
        [
            ([object()] * DIM, "numbers"),
            ([{"x": 1}] * DIM, "numbers"),
            ([[1.0] * DIM, [1.0] * 3], "numbers"),  # ragged
            ([1.0] * (DIM - 1) + [None], "numbers"),
        ]
    ),
    # not one vector or a batch of them
    st.sampled_from(
        [
            ([], "1-D"),
            (None, "1-D"),
            (3.0, "1-D"),
            (np.ones((1, 1, DIM)), "1-D"),
            (np.ones((2, 0)), "1-D"),
        ]
    ),
    # all zeros: no cosine direction (the stores use the cosine metric)
    st.integers(1, 3).map(lambda n: (np.zeros((n, DIM)), "all zeros")),
)
# One id of the wrong type (inside a list of ids, or for get): not an int or str.
not_an_id = st.one_of(
    st.floats(),
    st.booleans(),  # True == 1 would address id 1
    st.none(),
    st.tuples(st.integers()),
    st.binary(min_size=1, max_size=3),
    st.builds(object),
    st.lists(st.integers(), max_size=1),
)
# A whole ``ids`` argument that is neither one id nor an ordered collection of ids.
not_ids = st.one_of(
    st.floats(),
    st.booleans(),
    st.binary(min_size=1, max_size=3),  # would iterate as small integers
    st.builds(object),
    st.sets(st.integers(10_000, 20_000), min_size=1, max_size=3),  # no order to pair by
    st.dictionaries(st.integers(10_000, 20_000), st.integers(), min_size=1, max_size=2),
)
new_id = st.integers(10_000, 20_000)


def bad_ids_for(n: int) -> st.SearchStrategy[tuple[Any, str]]:
    """``ids`` arguments for an ``add`` of ``n`` vectors that must be refused, with what the
    error says."""
    cases = [
        not_ids.map(lambda v: (v, "ids must be")),
        st.tuples(st.lists(new_id, min_size=n - 1, max_size=n - 1, unique=True), not_an_id).map(
            lambda p: ([*p[0], p[1]], "ids must be int or str")
        ),
        st.lists(st.sampled_from(IDS), min_size=1, max_size=n, unique=True).map(
            lambda present: (
                [f"new-{j}" for j in range(n - len(present))] + present,
                "already in the index",
            )
        ),
        st.integers(0, 4)
        .filter(lambda m: m != n)
        .map(lambda m: ([f"c{j}" for j in range(m)], f"{m} ids given for {n} vectors")),
    ]
    if n >= 2:
        cases.append(new_id.map(lambda i: ([i] * n, "unique")))
    return st.one_of(cases)


@BOUNDED
@given(kind=kinds, bad=bad_vectors)
def test_bad_vectors_are_refused_and_nothing_is_added(kind: str, bad: tuple[Any, str]) -> None:
    vectors, says = bad
    refused(kind, lambda vdb: vdb.add(vectors), (TypeError, ValueError), "vectors", says)


@BOUNDED
@given(kind=kinds, bad=bad_vectors, top_k=st.integers(1, 5))
def test_bad_queries_are_refused(kind: str, bad: tuple[Any, str], top_k: int) -> None:
    query, says = bad
    refused(
        kind, lambda vdb: vdb.search(query, top_k=top_k), (TypeError, ValueError), "query", says
    )


@BOUNDED
@given(
    kind=kinds,
    case=st.integers(1, 3).flatmap(lambda n: st.tuples(st.just(n), bad_ids_for(n))),
)
def test_bad_ids_are_refused_and_nothing_is_added(
    kind: str, case: tuple[int, tuple[Any, str]]
) -> None:
    n, (value, says) = case
    vectors = DATA[:n] + 1.0  # good vectors
    refused(kind, lambda vdb: vdb.add(vectors, ids=value), (TypeError, ValueError), "ids", says)


@BOUNDED
@given(
    kind=kinds,
    n=st.integers(1, 3),
    metadata=st.one_of(
        st.integers().map(lambda m: (m, "metadata must be")),
        st.text(max_size=3).map(lambda m: (m, "metadata must be")),
        st.lists(st.dictionaries(st.text(max_size=2), st.integers(), max_size=1), min_size=4),
        st.lists(st.one_of(st.integers(), st.text(max_size=2)), min_size=1, max_size=3).map(
            lambda m: (m, "metadata")
        ),
    ),
)
def test_bad_metadata_is_refused_and_nothing_is_added(kind: str, n: int, metadata: Any) -> None:
    value, says = metadata if isinstance(metadata, tuple) else (metadata, "entries for")
    vectors = DATA[:n] + 1.0
    refused(
        kind,
        lambda vdb: vdb.add(vectors, metadata=value, ids=[f"m{i}" for i in range(n)]),
        (TypeError, ValueError),
        "metadata",
        says,
    )


@FEW
@given(
    meta=st.one_of(
        st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=2),  # int keys
        st.builds(lambda v: {"span": tuple(v)}, st.lists(st.integers(), max_size=2)),
        st.builds(lambda: {"obj": object()}),
        st.builds(lambda v: {"x": np.float32(v)}, finite),
        st.builds(lambda: {"nested": [{1: "a"}]}),
    )
)
def test_metadata_a_saving_store_could_not_write_back_is_refused(
    tmp_path_factory: pytest.TempPathFactory, meta: dict[Any, Any]
) -> None:
    # a store with a path saves at cleanup: metadata that cannot round-trip through JSON
    # would fail the whole save then, or come back changed
    vdb = VDBService(dim=DIM, path=tmp_path_factory.mktemp("vdb") / "index")
    vdb.add(DATA[:3], ids=["a", "b", "c"], metadata=[{"ok": 1}, None, {"ok": [1, "x"]}])
    before = state_small(vdb)
    with pytest.raises(ValueError, match=r"metadata\[0\] cannot be saved to .* JSON values"):
        vdb.add(DATA[3], ids="d", metadata=meta)
    assert state_small(vdb) == before
    vdb.cleanup()
    reloaded = VDBService(path=vdb.path)
    assert state_small(reloaded) == before


def state_small(vdb: VDBService) -> Any:
    return vdb.count(), vdb.search(DATA[:3], top_k=3)


@BOUNDED
@given(
    kind=kinds,
    top_k=st.one_of(
        st.integers(max_value=0),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.none(),
        st.text(max_size=3),
        st.just(np.float64(3.0)),
    ),
)
def test_a_bad_top_k_is_refused(kind: str, top_k: Any) -> None:
    refused(kind, lambda vdb: vdb.search(QUERIES[0], top_k=top_k), ValueError, "top_k=")


@FEW
@given(kind=kinds, top_k=st.one_of(st.integers(N, 2**63), st.just(np.int64(10**12))))
def test_a_huge_top_k_returns_every_vector_and_allocates_nothing(kind: str, top_k: Any) -> None:
    # before: FAISS was asked for nq * top_k results (terabytes for 10**12) and the process died
    vdb, built = store(kind)
    hits = vdb.search(QUERIES[:2], top_k=top_k)
    assert hits == vdb.search(QUERIES[:2], top_k=N)
    if kind == "flat":  # exact: every stored vector is a hit
        assert all(len(row) == N for row in hits)
    assert state(vdb) == built


@BOUNDED
@given(
    kind=kinds,
    bad=st.one_of(
        st.one_of(st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=2)).map(
            lambda f: (f, TypeError, "filter=")
        ),
        st.sampled_from(
            [
                (lambda m: m["missing"], ValueError, "filter raised KeyError"),
                (lambda: True, ValueError, "filter raised TypeError"),
                (lambda m: 1 / 0, ValueError, "filter raised ZeroDivisionError"),
            ]
        ),
    ),
)
def test_a_bad_filter_is_refused(kind: str, bad: tuple[Any, type[Exception], str]) -> None:
    value, error, says = bad
    refused(kind, lambda vdb: vdb.search(QUERIES[0], top_k=3, filter=value), error, says)


@BOUNDED
@given(
    kind=kinds,
    ids=st.one_of(
        st.text(max_size=5).filter(lambda s: s not in IDS).map(lambda i: [i]),
        st.integers().map(lambda i: [i]),
        st.tuples(st.lists(st.sampled_from(IDS), max_size=3), st.integers(N, 10**6)).map(
            lambda p: [*p[0], f"gone-{p[1]}"]
        ),
    ),
)
def test_deleting_an_unknown_id_deletes_nothing(kind: str, ids: list[Any]) -> None:
    error = refused(kind, lambda vdb: vdb.delete(ids), KeyError, "unknown ids")
    assert "nothing was deleted" in str(error)


@BOUNDED
@given(
    kind=kinds,
    case=st.one_of(
        st.tuples(st.just("delete"), st.one_of(not_ids, st.none())),
        st.tuples(st.sampled_from(["delete_one_of", "get"]), not_an_id),
    ),
)
def test_an_id_of_the_wrong_type_is_refused(kind: str, case: tuple[str, Any]) -> None:
    op, value = case

    def call(vdb: VDBService) -> Any:
        if op == "get":
            return vdb.get(value)
        return vdb.delete([IDS[0], value] if op == "delete_one_of" else value)

    refused(kind, call, TypeError, "id", "int or str")


SIZES = ["dim", "hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe"]
VALID_CHOICES = {
    "index": {"flat", "hnsw", "ivf"},
    "metric": {"cosine", "l2", "ip"},
    "device": {"auto", "cpu", "cuda"},
}


@FEW
@given(
    bad=st.one_of(
        st.sampled_from(
            ["dim", "hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe"]
        ).flatmap(
            lambda key: st.tuples(
                st.just(key),
                st.one_of(
                    st.integers(max_value=0), st.floats(), st.booleans(), st.text(max_size=2)
                ),
            )
        ),
        st.tuples(st.just("train_size"), st.one_of(st.integers(max_value=3), st.floats())),
        st.sampled_from(["index", "metric", "device"]).flatmap(
            lambda key: st.tuples(
                st.just(key),
                st.one_of(st.text(max_size=4), st.integers(), st.none()).filter(
                    lambda v: v not in VALID_CHOICES[key]
                ),
            )
        ),
        st.tuples(st.just("path"), st.one_of(st.integers(), st.floats(), st.lists(st.text()))),
    )
)
def test_bad_constructor_options_are_refused_naming_the_option(bad: tuple[str, Any]) -> None:
    key, value = bad
    # nlist=4 so that train_size 1..3 (fewer vectors than clusters) is invalid as well
    options = {"index": "ivf", "nlist": 4, key: value} if key == "train_size" else {key: value}
    with pytest.raises(ConfigError, match=rf"^{key}=") as info:
        VDBService(**options)
    assert "invalid" in str(info.value)


@pytest.mark.parametrize(("typo", "meant"), [("nlsit", "nlist"), ("ef_serch", "ef_search")])
def test_an_unknown_option_names_the_right_spelling(typo: str, meant: str) -> None:
    with pytest.raises(ConfigError, match=rf"option '{typo}' is unknown; did you mean '{meant}'"):
        VDBService(**{typo: 8})


def test_a_failure_inside_faiss_while_training_leaves_the_index_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    vdb = VDBService(dim=DIM, index="ivf", nlist=4, train_size=40)
    vdb.add(DATA[:30], ids=IDS[:30])
    before = state_small(vdb)

    def broken_train(self: VectorIndex) -> None:
        raise RuntimeError("training failed inside FAISS")

    monkeypatch.setattr(VectorIndex, "_train", broken_train)
    with pytest.raises(RuntimeError, match="training failed"):
        vdb.add(DATA[30:], ids=IDS[30:])  # reaches train_size: training starts and fails
    # before: the vectors stayed in the buffer without ids, and searches raised KeyError
    assert state_small(vdb) == before and vdb.count() == 30
    monkeypatch.undo()
    assert vdb.add(DATA[30:], ids=IDS[30:]) == IDS[30:]
    assert vdb.count() == N and vdb.vectors._index.is_trained


def test_an_empty_batch_stores_nothing_and_leaves_the_dimension_open() -> None:
    vdb = VDBService()  # dimension from the first vectors
    assert vdb.add(np.zeros((0, 3))) == []
    assert vdb.count() == 0 and vdb.vectors.dim is None
    assert vdb.add(np.ones((2, DIM))) == [0, 1]
    assert vdb.vectors.dim == DIM


def test_numpy_integer_ids_and_top_k_are_accepted_as_ints(tmp_path: Path) -> None:
    vdb = VDBService(dim=DIM, path=tmp_path / "index")
    assert vdb.add(DATA[:4], ids=np.arange(4)) == [0, 1, 2, 3]
    assert all(type(i) is int for i in vdb._internal)
    assert [h["id"] for h in vdb.search(DATA[1], top_k=np.int64(1))] == [1]  # type: ignore[index]
    vdb.cleanup()  # int ids, not numpy ones: JSON can save them
    assert VDBService(path=tmp_path / "index").count() == 4
