"""``VDBService``: a vector database on FAISS, callable from any operator.

Example:
    >>> import numpy as np
    >>> vdb = VDBService(dim=4, index="flat", metric="cosine")
    >>> vdb.add(np.eye(4), metadata=[{"doc": n} for n in "abcd"], ids=["a", "b", "c", "d"])
    ['a', 'b', 'c', 'd']
    >>> [hit["id"] for hit in vdb.search([1.0, 0.1, 0.0, 0.0], top_k=2)]
    ['a', 'b']

Documents split into chunks are replaced or deleted as a whole with ``upsert_document`` and
``delete_document`` (ids ``f"{doc_id}#{i}"``; see :mod:`sage.middleware.services.documents`):
    >>> vdb.upsert_document("notes.txt", np.eye(4)[:2], version=1)
    ['notes.txt#0', 'notes.txt#1']
    >>> vdb.upsert_document("notes.txt", np.eye(4)[2:3], version=2)
    ['notes.txt#0']
    >>> [hit["id"] for hit in vdb.search(np.eye(4)[0], filter={"doc_id": "notes.txt"})]
    ['notes.txt#0']
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections.abc import Callable, Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any

from sage.common.errors import ConfigError
from sage.kernel.services.base_service import BaseService
from sage.middleware.services.documents import (
    DocumentTable,
    check_doc_id,
    check_version,
    chunk_id,
    chunk_metadata,
    chunk_vectors,
    describe,
)
from sage.middleware.services.inputs import (
    as_int,
    check_json,
    id_list,
    id_sequence,
    metadata_list,
    one_id,
)
from sage.middleware.services.vector_index import VectorIndex, import_faiss

__all__ = ["VDBService"]

logger = logging.getLogger(__name__)

Hit = dict[str, Any]
Filter = Mapping[str, Any] | Callable[[Mapping[str, Any]], bool]
_STATE, _INDEX, _PENDING = "state.json", "index.faiss", "pending.faiss"
_OPTIONS = ("hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe", "train_size")


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
        self._documents = DocumentTable()
        self._by_doc: dict[str, set[int]] = {}  # metadata["doc_id"] (a str) -> internal ids
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
        metas = metadata_list(metadata, n)
        wanted = id_list(ids, n)
        if self.path is not None:
            check_json(metas, self.path)
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
            self._add_vectors(array, internal)
            self._register(internal, external, metas)
        return list(external)

    def _add_vectors(self, array: Any, internal: list[int]) -> None:
        """Add prepared vectors under new internal ids (under the write lock)."""
        self.vectors.add(array, self.vectors.np.asarray(internal, dtype="int64"))
        self._next = internal[-1] + 1

    def _register(self, internal: list[int], external: list[Hashable], metas: list[Any]) -> None:
        """Record the ids and metadata of vectors just added (under the write lock)."""
        for i, ext, meta in zip(internal, external, metas, strict=True):
            self._external[i] = ext
            self._internal[ext] = i
            if ext != i:
                self._custom_ids += 1
            if meta is not None:
                self._metadata[i] = meta
                if isinstance(meta.get("doc_id"), str):
                    self._by_doc.setdefault(meta["doc_id"], set()).add(i)

    def _forget(self, internal: list[int]) -> None:
        """Remove vectors by internal id with their ids and metadata (under the write lock)."""
        if not internal:
            return
        self.vectors.remove(internal)
        for i in internal:
            ext = self._external.pop(i, i)
            self._internal.pop(ext, None)
            if ext != i:
                self._custom_ids -= 1
            meta = self._metadata.pop(i, None)
            if meta is not None and isinstance(meta.get("doc_id"), str):
                same_doc = self._by_doc.get(meta["doc_id"], set())
                same_doc.discard(i)
                if not same_doc:
                    self._by_doc.pop(meta["doc_id"], None)

    def _fresh_ids(self, internal: list[int]) -> list[Hashable]:
        out: list[Hashable] = []
        for i in internal:
            candidate: Hashable = i
            while candidate in self._internal:  # a caller-chosen int id took it
                candidate = f"auto-{i}"
            out.append(candidate)
        return out

    def delete(self, ids: Iterable[Hashable] | Hashable) -> int:
        """Delete vectors by id; return how many.

        Raises:
            KeyError: an id is not in the index (nothing is deleted then).
            TypeError: ``ids`` is not an id (int or str) or a list of them.
        """
        wanted = id_sequence(ids)
        with self.vectors.lock.write():
            unknown = [i for i in wanted if i not in self._internal]
            if unknown:
                raise KeyError(f"unknown ids {unknown[:5]!r}; nothing was deleted")
            internal = [self._internal[i] for i in dict.fromkeys(wanted)]
            self._forget(internal)
            self._documents.forget_chunks(wanted)
        return len(internal)

    # -- documents --------------------------------------------------------------------------

    def upsert_document(
        self,
        doc_id: str,
        vectors: Any,
        metadata: Mapping[str, Any] | Iterable[Mapping[str, Any] | None] | None = None,
        *,
        version: int | None = None,
    ) -> list[str]:
        """Replace every chunk of document ``doc_id`` with ``vectors`` (one row per chunk).

        The chunks get ids ``f"{doc_id}#{i}"`` and metadata with ``"doc_id"`` and ``"chunk"``
        (``i``) added, so ``search(..., filter={"doc_id": doc_id})`` finds them. The old
        chunks go and the new arrive under one write lock: a concurrent search sees all the
        old chunks or all the new ones, never a mix, both or neither. Every argument is
        checked first, so a bad call leaves the old chunks in place. Applying the same call
        twice gives the same index.

        Args:
            doc_id: The document (e.g. the file's path).
            vectors: A 2-D array, one row per chunk; no rows (``[]``) leaves the document
                present with no chunks.
            metadata: One mapping per chunk, one mapping for all, or ``None``.
            version: The document's version (e.g. a modification counter or clock); a call
                older than the version recorded for it, a delete's included, is ignored.

        Returns:
            The chunk ids, or ``[]`` when the call was ignored as stale.

        Raises:
            ValueError: wrong dimension, NaN values, metadata count, metadata that would not
                survive saving as JSON (with a ``path``), or a chunk id already used by a
                vector stored with :meth:`add` (delete it, or use another ``doc_id``).
            TypeError: ``doc_id`` is not a str, ``version`` not an int, or bad vectors or
                metadata types.
        """
        doc_id, version = check_doc_id(doc_id), check_version(version)
        array = chunk_vectors(self.vectors, vectors, doc_id)
        n = 0 if array is None else int(array.shape[0])
        metas = chunk_metadata(doc_id, metadata, n)
        if self.path is not None:
            check_json(metas, self.path)
        ids = [chunk_id(doc_id, i) for i in range(n)]
        with self.vectors.lock.write():
            if not self._documents.applies(doc_id, version):
                logger.debug("upsert of %r at stale version %s ignored", doc_id, version)
                return []
            current = self._documents.get(doc_id)
            old = set(current.chunks) if current is not None else set()
            taken = [i for i in ids if i in self._internal and i not in old]
            if taken:
                raise ValueError(
                    f"chunk ids {taken[:5]!r} of document {doc_id!r} are taken by vectors "
                    "stored with add(); delete() them first, or use another doc_id"
                )
            internal = list(range(self._next, self._next + n))
            if n:  # the new vectors first: if FAISS fails, the old chunks are still there
                self._add_vectors(array, internal)
            self._forget([self._internal[i] for i in old if i in self._internal])
            self._register(internal, list(ids), metas)
            self._documents.put(doc_id, version, ids)
        return ids

    def delete_document(self, doc_id: str, *, version: int | None = None) -> int:
        """Remove every chunk of ``doc_id``; return how many (0 for an unknown document).

        Deleting twice is not an error: a job replaying its source after a restart deletes
        again. With a ``version``, a call older than the recorded version is ignored (0),
        and the document leaves a tombstone (its id and version: one small entry per deleted
        document, kept and saved for good) so that a late, older upsert cannot bring it back.
        Without one, the document is forgotten entirely.

        Raises:
            TypeError: ``doc_id`` is not a str or ``version`` not an int.
        """
        doc_id, version = check_doc_id(doc_id), check_version(version)
        with self.vectors.lock.write():
            if not self._documents.applies(doc_id, version):
                logger.debug("delete of %r at stale version %s ignored", doc_id, version)
                return 0
            old = [self._internal[i] for i in self._documents.delete(doc_id, version)]
            self._forget(old)
        return len(old)

    def document(self, doc_id: str) -> dict[str, Any] | None:
        """``{"doc_id", "version", "chunks": [ids]}``, or ``None`` if absent or deleted."""
        with self.vectors.lock.read():
            found = self._documents.get(check_doc_id(doc_id))
            return None if found is None else describe(doc_id, found.version, found.chunks)

    def documents(self) -> dict[str, int | None]:
        """doc id -> version of every document present (deleted ones are left out)."""
        with self.vectors.lock.read():
            return self._documents.present()

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
        k = as_int(top_k)  # NumPy integers too; a huge one is clamped by the index
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
        doc = filter.get("doc_id") if isinstance(filter, Mapping) and len(filter) == 1 else None
        if isinstance(doc, str):  # one document: a lookup, not a scan of every metadata dict
            found = self._by_doc.get(doc, set())  # str values only: lookup and == agree
            return np.fromiter(found, dtype=np.int64, count=len(found))
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
        id = one_id(id, "id")
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
                "documents": self._documents.to_json(),
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
            self._documents = DocumentTable.from_json(state.get("documents", []))
            self._by_doc = {}
            for i, meta in self._metadata.items():
                if isinstance(meta, Mapping) and isinstance(meta.get("doc_id"), str):
                    self._by_doc.setdefault(meta["doc_id"], set()).add(i)

    def cleanup(self) -> None:
        """Save to ``path`` (when one was given) at the end of the job."""
        if self.path is not None:
            self.save(self.path)
