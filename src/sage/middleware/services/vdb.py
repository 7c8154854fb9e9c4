"""``VDBService``: a vector database on FAISS, callable from any operator.

Example:
    >>> import numpy as np
    >>> vdb = VDBService(dim=4, index="flat", metric="cosine")
    >>> vdb.add(np.eye(4), metadata=[{"doc": n} for n in "abcd"], ids=["a", "b", "c", "d"])
    ['a', 'b', 'c', 'd']
    >>> [hit["id"] for hit in vdb.search([1.0, 0.1, 0.0, 0.0], top_k=2)]
    ['a', 'b']
"""

from __future__ import annotations

import difflib
import json
import operator
import os
from collections.abc import Callable, Hashable, Iterable, Mapping, Set
from pathlib import Path
from typing import Any

from sage.common.errors import ConfigError
from sage.kernel.services.base_service import BaseService
from sage.middleware.services.vector_index import VectorIndex, import_faiss

__all__ = ["VDBService"]

Hit = dict[str, Any]
Filter = Mapping[str, Any] | Callable[[Mapping[str, Any]], bool]
_STATE, _INDEX, _PENDING = "state.json", "index.faiss", "pending.faiss"
_OPTIONS = ("hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe", "train_size")


def _as_int(value: Any) -> int | None:
    """``value`` as an ``int`` if it is an integer (NumPy's too) but not a ``bool``."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        return None
    try:
        return operator.index(value)
    except TypeError:  # an array of several integers
        return None


def _json_problem(value: Any, path: tuple[int, ...] = ()) -> str | None:
    """Why ``value`` would not come back equal from JSON, or ``None``.

    Non-string keys would come back as strings, tuples as lists, other objects not at all.
    ``path`` holds the ids of the containers being walked, so a cycle is reported, not
    followed forever.
    """
    if value is None or isinstance(value, str | int | float):
        return None
    if id(value) in path:
        return "it contains itself"
    if isinstance(value, list):
        for item in value:
            problem = _json_problem(item, (*path, id(value)))
            if problem is not None:
                return problem
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"key {key!r:.40} is not a str"
            problem = _json_problem(item, (*path, id(value)))
            if problem is not None:
                return problem
        return None
    hint = " (use a list)" if isinstance(value, tuple) else ""
    return f"{type(value).__name__} {value!r:.40} is not a JSON value{hint}"


def _one_id(value: Any, what: str = "ids") -> int | str:
    """``value`` as an id (``int`` or ``str``), else a ``TypeError`` naming ``what``.

    NumPy integers become ``int`` (they come from ``np.arange`` and would not survive
    :meth:`VDBService.save`); ``bool`` is refused, as ``True == 1`` would address id 1.
    """
    if isinstance(value, str):
        return value
    as_int = _as_int(value)
    if as_int is not None:
        return as_int
    raise TypeError(f"{what} must be int or str, got {type(value).__name__} {value!r:.60}")


def _id_sequence(ids: Any, what: str = "ids") -> list[int | str]:
    """One id or an ordered collection of ids, as a list; ``TypeError`` naming ``what``.

    Sets and mappings are refused: their order, which pairs each id with a vector, is not
    the caller's. ``bytes`` would iterate as small integers.
    """
    if isinstance(ids, str) or _as_int(ids) is not None:
        return [_one_id(ids, what)]
    if isinstance(ids, bytes | bytearray | Set | Mapping) or not isinstance(ids, Iterable):
        raise TypeError(
            f"{what} must be an int or str id, or a list of them, got {type(ids).__name__} "
            f"{ids!r:.60}"
        )
    return [_one_id(i, what) for i in ids]


class VDBService(BaseService):
    """Vectors with ids and metadata; exact or approximate nearest-neighbour search.

    Safe to call from many operators at once: searches run concurrently (FAISS releases the
    interpreter lock), writes are exclusive. Invalid input (wrong dimension, NaN, unknown or
    duplicate ids) raises before the index is touched, so it is left unchanged.

    Args:
        dim: Vector dimension (``None``: from the first vectors added).
        index: ``"flat"`` (exact), ``"hnsw"`` (graph) or ``"ivf"`` (clusters, trained once
            ``train_size`` vectors have arrived; exact until then).
        metric: ``"cosine"``, ``"l2"`` or ``"ip"``.
        device: ``"auto"``: a CUDA build of FAISS on GPU when one is present, else CPU.
        path: A directory to load from at start (if it exists) and save to at cleanup.
        **index_options: ``hnsw_m``, ``ef_construction``, ``ef_search``, ``nlist``,
            ``nprobe``, ``train_size`` (see :class:`VectorIndex`).
    """

    max_concurrency = 8

    def __init__(
        self,
        dim: int | None = None,
        index: str = "flat",
        metric: str = "cosine",
        device: str = "auto",
        path: str | os.PathLike[str] | None = None,
        **index_options: Any,
    ) -> None:
        super().__init__()
        for key in index_options:
            close = difflib.get_close_matches(key, _OPTIONS, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"use {', '.join(_OPTIONS)}"
            if key not in _OPTIONS:
                raise ConfigError(f"VDBService option {key!r} is unknown; {hint}")
        if path is not None and not isinstance(path, str | os.PathLike):
            raise ConfigError(
                f"path={path!r} is invalid; use a directory path (str or pathlib.Path) or None"
            )
        self.vectors = VectorIndex(dim, index, metric, device, **index_options)
        self.path = Path(path) if path is not None else None
        self._external: dict[int, Hashable] = {}
        self._internal: dict[Hashable, int] = {}
        self._metadata: dict[int, Any] = {}
        self._next = 0
        self._custom_ids = 0  # ids that differ from the internal integer
        if self.path is not None and (self.path / _STATE).exists():
            self.load(self.path)

    # -- writes ---------------------------------------------------------------------------

    def add(
        self,
        vectors: Any,
        metadata: Mapping[str, Any] | Iterable[Mapping[str, Any] | None] | None = None,
        ids: Iterable[Hashable] | Hashable | None = None,
    ) -> list[Hashable]:
        """Add one vector (1-D) or a batch (2-D); return their ids.

        Args:
            vectors: The vectors.
            metadata: One mapping per vector (or one mapping for a single vector).
            ids: One ``int`` or ``str`` id per vector (default: new integers).

        Every argument is checked before anything is stored, and a failure inside FAISS
        removes what it had added, so a failed call leaves the index unchanged.

        Raises:
            ValueError: wrong dimension, NaN values, ids duplicated or already present, or
                (with a ``path``) metadata that would not survive saving as JSON.
            TypeError: vectors are not real numbers; ids or metadata of the wrong type.
        """
        array = self.vectors.prepare(vectors)
        n = int(array.shape[0])
        metas = self._metadata_list(metadata, n)
        wanted = self._id_list(ids, n)
        if self.path is not None:
            self._check_json(metas)
        if n == 0:  # nothing to store; in particular, an unset dim stays unset
            return []
        with self.vectors.lock.write():
            if wanted is not None:
                present = [i for i in wanted if i in self._internal]
                if present:
                    raise ValueError(
                        f"ids already in the index: {present[:5]!r}; delete them first, or "
                        "leave ids=None for new ones"
                    )
            internal = list(range(self._next, self._next + n))
            external = wanted if wanted is not None else self._fresh_ids(internal)
            self.vectors.add(array, self.vectors.np.asarray(internal, dtype="int64"))
            self._next += n
            for i, ext, meta in zip(internal, external, metas, strict=True):
                self._external[i] = ext
                self._internal[ext] = i
                if ext != i:
                    self._custom_ids += 1
                if meta is not None:
                    self._metadata[i] = meta
        return list(external)

    def _fresh_ids(self, internal: list[int]) -> list[Hashable]:
        out: list[Hashable] = []
        for i in internal:
            candidate: Hashable = i
            while candidate in self._internal:  # a caller-chosen int id took it
                candidate = f"auto-{i}"
            out.append(candidate)
        return out

    def _check_json(self, metas: list[Any]) -> None:
        """Refuse metadata that :meth:`save` (run at cleanup) could not write back as it is.

        Found here, the caller can fix the record; found at cleanup, the whole index would
        fail to save. Non-string keys and tuples would load back changed, so they count.
        """
        for i, meta in enumerate(metas):
            problem = _json_problem(meta)
            if problem is not None:
                raise ValueError(
                    f"metadata[{i}] cannot be saved to {self.path} as it is: {problem}; use "
                    "JSON values (str keys; str, numbers, bool, None, lists, dicts)"
                )

    @staticmethod
    def _metadata_list(metadata: Any, n: int) -> list[Any]:
        if metadata is None:
            return [None] * n
        if isinstance(metadata, Mapping):
            if n != 1:
                raise ValueError(
                    f"metadata is one mapping but {n} vectors were given; pass a list of {n}"
                )
            return [dict(metadata)]
        if isinstance(metadata, str | bytes) or not isinstance(metadata, Iterable):
            raise TypeError(
                f"metadata must be a mapping (one vector) or a list of mappings (one per "
                f"vector), got {type(metadata).__name__} {metadata!r:.60}"
            )
        metas = list(metadata)
        if len(metas) != n:
            raise ValueError(f"metadata has {len(metas)} entries for {n} vectors")
        for i, meta in enumerate(metas):
            if meta is not None and not isinstance(meta, Mapping):
                raise TypeError(f"metadata[{i}] must be a mapping (dict) or None, got {meta!r:.60}")
        return [dict(m) if m is not None else None for m in metas]

    @staticmethod
    def _id_list(ids: Any, n: int) -> list[Hashable] | None:
        if ids is None:
            return None
        wanted: list[Hashable] = list(_id_sequence(ids))
        if len(wanted) != n:
            raise ValueError(f"{len(wanted)} ids given for {n} vectors; pass one id per vector")
        if len(set(wanted)) != n:
            raise ValueError("ids must be unique within one add()")
        return wanted

    def delete(self, ids: Iterable[Hashable] | Hashable) -> int:
        """Delete vectors by id; return how many.

        Raises:
            KeyError: an id is not in the index (nothing is deleted then).
            TypeError: ``ids`` is not an id (int or str) or a list of them.
        """
        wanted = _id_sequence(ids)
        with self.vectors.lock.write():
            unknown = [i for i in wanted if i not in self._internal]
            if unknown:
                raise KeyError(f"unknown ids {unknown[:5]!r}; nothing was deleted")
            internal = [self._internal.pop(i) for i in dict.fromkeys(wanted)]
            self.vectors.remove(internal)
            for i in internal:
                if self._external.pop(i, i) != i:
                    self._custom_ids -= 1
                self._metadata.pop(i, None)
        return len(internal)

    # -- reads ------------------------------------------------------------------------------

    def count(self) -> int:
        """Vectors in the index."""
        with self.vectors.lock.read():
            return len(self.vectors)

    def search(
        self, query: Any, top_k: int = 10, filter: Filter | None = None
    ) -> list[Hit] | list[list[Hit]]:
        """Nearest neighbours of one query (1-D: one hit list) or a batch (2-D: one per row).

        Each hit is ``{"id", "score", "metadata"}``, best first. ``score`` is the cosine
        similarity (``cosine``), the inner product (``ip``), or the squared L2 distance
        (``l2``: smaller is closer).

        Args:
            query: A vector, or a 2-D array of vectors (the batch path: one call, one
                FAISS search for all rows).
            top_k: Hits per query.
            filter: Only vectors whose metadata has these key/values (a mapping), or for
                which this predicate on the metadata is true.

        Raises:
            ValueError: wrong dimension, NaN values, ``top_k`` not an integer >= 1, or the
                filter predicate raised (chained as the cause).
            TypeError: ``filter`` is neither a mapping nor callable.
        """
        np = self.vectors.np
        queries = self.vectors.prepare(query, "query")  # first: it names a bad query
        single = np.ndim(query) == 1
        k = _as_int(top_k)  # NumPy integers too; a huge one is clamped by the index
        if k is None or k < 1:
            raise ValueError(f"top_k={top_k!r:.60} is invalid; use an integer >= 1")
        with self.vectors.lock.read():
            allowed = None if filter is None else self._matching(filter)
            if allowed is not None and not len(allowed):
                empty: list[list[Hit]] = [[] for _ in range(len(queries))]
                return empty[0] if single else empty
            scores, ids = self.vectors.search(queries, k, allowed)
            hits = self._hits(ids.tolist(), scores.tolist())
        return hits[0] if single else hits

    def _hits(self, ids: list[list[int]], scores: list[list[float]]) -> list[list[Hit]]:
        """Hit dicts per row; skips the lookups that cannot change anything (hot path)."""
        external, metadata = self._external, self._metadata
        if self._plain_ids and not metadata:  # auto ids, no metadata: nothing to look up
            return [
                [
                    {"id": i, "score": s, "metadata": None}
                    for i, s in zip(r, q, strict=True)
                    if i >= 0
                ]
                for r, q in zip(ids, scores, strict=True)
            ]
        return [
            [
                {"id": external[i], "score": s, "metadata": metadata.get(i)}
                for i, s in zip(r, q, strict=True)
                if i >= 0
            ]
            for r, q in zip(ids, scores, strict=True)
        ]

    @property
    def _plain_ids(self) -> bool:
        """Every id is the integer the index assigned itself (external == internal)."""
        return self._custom_ids == 0

    def _matching(self, filter: Filter) -> Any:
        np = self.vectors.np
        if callable(filter):
            test = filter
        elif isinstance(filter, Mapping):
            wanted = dict(filter)

            def test(meta: Mapping[str, Any]) -> bool:
                return all(meta.get(k) == v for k, v in wanted.items())

        else:
            raise TypeError(
                f"filter={filter!r:.60} is invalid; use a mapping of metadata key/values or "
                "a predicate taking the metadata dict"
            )
        allowed: list[int] = []
        for i, meta in self._metadata.items():
            if meta is None:
                continue
            try:
                keep = test(meta)
            except Exception as exc:  # name the filter, not a bare KeyError from user code
                raise ValueError(
                    f"filter raised {type(exc).__name__}: {exc} on the metadata {meta!r:.80} "
                    f"of id {self._external.get(i, i)!r}; a predicate gets every stored "
                    "metadata dict and must return True or False (e.g. use m.get(key))"
                ) from exc
            if keep:
                allowed.append(i)
        return np.asarray(allowed, dtype=np.int64)

    def get(self, id: Hashable) -> dict[str, Any]:
        """``{"id", "metadata"}`` of a stored vector.

        Raises:
            KeyError: unknown id.
            TypeError: ``id`` is not an int or str.
        """
        id = _one_id(id, "id")
        with self.vectors.lock.read():
            if id not in self._internal:
                raise KeyError(f"unknown id {id!r}")
            return {"id": id, "metadata": self._metadata.get(self._internal[id])}

    # -- persistence ------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index, ids and metadata to directory ``path`` (created if needed).

        Raises:
            TypeError: some metadata is not JSON-serialisable.
        """
        faiss = import_faiss()
        target = Path(path)
        target.mkdir(parents=True, exist_ok=True)
        with self.vectors.lock.read():
            v = self.vectors
            state = {
                "format": 1,
                "dim": v.dim,
                "index": v.kind.value,
                "metric": v.metric.value,
                "options": v.options,
                "next": self._next,
                "ids": [[i, ext] for i, ext in self._external.items()],
                "metadata": [[i, meta] for i, meta in self._metadata.items()],
                "tombstones": sorted(v._tombstones),
            }
            try:
                text = json.dumps(state)
            except TypeError as exc:
                raise TypeError(
                    f"metadata must be JSON-serialisable to save the index: {exc}"
                ) from None
            for name, index in ((_INDEX, v.cpu_index()), (_PENDING, v.pending_index())):
                if index is not None:
                    faiss.write_index(index, str(target / (name + ".tmp")))
                    os.replace(target / (name + ".tmp"), target / name)
                elif (target / name).exists():
                    (target / name).unlink()
            (target / (_STATE + ".tmp")).write_text(text, encoding="utf-8")
            os.replace(target / (_STATE + ".tmp"), target / _STATE)

    def load(self, path: str | os.PathLike[str]) -> None:
        """Replace this index's contents with what :meth:`save` wrote to ``path``.

        Raises:
            FileNotFoundError: nothing was saved there.
        """
        faiss = import_faiss()
        source = Path(path)
        if not (source / _STATE).exists():
            raise FileNotFoundError(f"no saved vector index in {source} (missing {_STATE})")
        state = json.loads((source / _STATE).read_text(encoding="utf-8"))
        fresh = VectorIndex(
            state["dim"],
            state["index"],
            state["metric"],
            "cpu" if not self.vectors.gpu else "auto",
            **state["options"],
        )
        index = faiss.read_index(str(source / _INDEX)) if (source / _INDEX).exists() else None
        pending = faiss.read_index(str(source / _PENDING)) if (source / _PENDING).exists() else None
        if index is not None:
            fresh.restore(
                index,
                pending if pending is not None else fresh.pending_index(),
                set(state["tombstones"]),
            )
        with self.vectors.lock.write():
            self.vectors = fresh
            self._external = {int(i): ext for i, ext in state["ids"]}
            self._internal = {ext: i for i, ext in self._external.items()}
            self._metadata = {int(i): meta for i, meta in state["metadata"]}
            self._next = int(state["next"])
            self._custom_ids = sum(1 for i, ext in self._external.items() if ext != i)

    def cleanup(self) -> None:
        """Save to ``path`` (when one was given) at the end of the job."""
        if self.path is not None:
            self.save(self.path)
