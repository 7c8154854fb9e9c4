"""``VectorIndex``: a FAISS index with int64 ids, deletes, lazy training and a RW lock.

The vector DB and the memory service both keep their vectors here. FAISS itself is not safe
for adds concurrent with searches, so searches share a readers-writer lock and writes take
it exclusively (FAISS searches release the GIL, so concurrent searches use several cores).

* ``flat``: exact search. Deletes are tombstones excluded at search time, and the dead rows
  are compacted away (one ``remove_ids``) once a sixteenth of the index, and over 64 rows, is
  dead. FAISS's ``remove_ids`` shifts the whole array, O(n * dim) per call: done per delete,
  it made replacing a document's chunks in a 5,000 x 384 index 7x slower (about 4,300 vs
  30,000 replacements/s on 2 CPU cores).
  The price is a slower search while tombstones exist (their selector; ~20% at most here).
* ``hnsw``: graph search (``hnsw_m`` links per node, ``ef_search`` candidates). HNSW cannot
  remove vectors, so deletes are tombstones too, and the graph is rebuilt when a fifth of it
  is dead.
* ``ivf``: inverted lists (``nlist`` clusters, ``nprobe`` searched). It needs training: vectors
  added before ``train_size`` have arrived sit in an exact buffer that searches also read; the
  index trains on them once there are enough.

Metric ``cosine`` normalises vectors and searches by inner product; ``ip`` and ``l2`` are
FAISS's own. Filters and deletes use FAISS ID selectors, so results are exact, not
over-fetched and trimmed. On HNSW, a filter allowing few vectors (up to 1024, such as one
document's chunks) is searched exactly over those vectors instead: a graph search seldom
reaches all of a handful of allowed nodes among thousands.

A search of a few queries runs on one OpenMP thread: FAISS would start a parallel region
for it anyway, whose start-up and spin-waits cost more than the search (0.78 vs 0.46 ms for
one query over 20k x 128 here). Batches use every core. The setting is per calling thread in
OpenMP, so concurrent searches do not disturb each other.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any

from sage.common.concurrency import RWLock
from sage.common.errors import ConfigError

__all__ = ["IndexKind", "Metric", "VectorIndex", "import_faiss", "import_numpy"]

_SMALL_BATCH = 20  # queries below which a search runs on the calling thread alone
_EXACT_FILTER = 1024  # HNSW: filters allowing at most this many ids are searched exactly


class IndexKind(StrEnum):
    """Index structures."""

    FLAT = "flat"
    HNSW = "hnsw"
    IVF = "ivf"


class Metric(StrEnum):
    """Similarity measures."""

    COSINE = "cosine"
    L2 = "l2"
    IP = "ip"


def import_faiss() -> Any:
    """Import FAISS, or explain how to install it."""
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - the services extra installs it
        raise ImportError(
            "the vector services need FAISS: pip install 'sage-flow[services]' "
            "(faiss-cpu; a CUDA build of FAISS is used instead when installed)"
        ) from exc
    return faiss


def import_numpy() -> Any:
    """Import NumPy, or explain how to install it."""
    try:
        import numpy
    except ImportError as exc:  # pragma: no cover - the services extra installs it
        raise ImportError(
            "the vector services need NumPy: pip install 'sage-flow[services]'"
        ) from exc
    return numpy


def _option(name: str, value: Any) -> int:
    """An index option as an int >= 1; FAISS hangs or crashes on zero or negative sizes."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r} is invalid; use an integer >= 1")
    return value


def _choice(kind: type[StrEnum], value: Any, what: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in kind)
        raise ConfigError(f"{what}={value!r} is invalid; use one of {choices}") from None


class VectorIndex:
    """Vectors by int64 id, searchable; see the module docstring.

    Args:
        dim: Vector dimension (``None``: taken from the first vectors added).
        index: ``"flat"``, ``"hnsw"`` or ``"ivf"``.
        metric: ``"cosine"``, ``"l2"`` or ``"ip"``.
        device: ``"auto"`` (a CUDA FAISS build's GPUs when there are any), ``"cpu"`` or
            ``"cuda"``.
        hnsw_m: HNSW links per node.
        ef_construction: HNSW build-time candidate list.
        ef_search: HNSW search-time candidate list (recall vs speed).
        nlist: IVF clusters.
        nprobe: IVF clusters searched per query.
        train_size: Vectors IVF waits for before training (default ``39 * nlist``); at
            least ``nlist``, as k-means cannot make more clusters than it has points.

    Raises:
        ConfigError: an option is invalid or the device is unavailable.
    """

    def __init__(
        self,
        dim: int | None = None,
        index: str = "flat",
        metric: str = "cosine",
        device: str = "auto",
        *,
        hnsw_m: int = 32,
        ef_construction: int = 64,
        ef_search: int = 64,
        nlist: int = 100,
        nprobe: int = 8,
        train_size: int | None = None,
    ) -> None:
        self.faiss = import_faiss()
        self.np = import_numpy()
        self.kind: IndexKind = _choice(IndexKind, index, "index")
        self.metric: Metric = _choice(Metric, metric, "metric")
        if device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device={device!r} is invalid; use 'auto', 'cpu' or 'cuda'")
        gpus = self.faiss.get_num_gpus() if hasattr(self.faiss, "get_num_gpus") else 0
        if device == "cuda" and not gpus:
            raise ConfigError(
                "device='cuda' needs a CUDA build of FAISS and a GPU (faiss.get_num_gpus() is 0); "
                "use device='auto' to fall back to the CPU"
            )
        self.gpu = gpus > 0 and device != "cpu" and self.kind is not IndexKind.HNSW
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ConfigError(f"dim={dim!r} is invalid; use a positive integer or None")
        self.dim = dim
        self.options = {
            "hnsw_m": _option("hnsw_m", hnsw_m),
            "ef_construction": _option("ef_construction", ef_construction),
            "ef_search": _option("ef_search", ef_search),
            "nlist": _option("nlist", nlist),
            "nprobe": _option("nprobe", nprobe),
            "train_size": 39 * nlist if train_size is None else _option("train_size", train_size),
        }
        if self.options["train_size"] < nlist:
            raise ConfigError(
                f"train_size={train_size!r} is invalid for nlist={nlist}: IVF needs at least "
                f"one training vector per cluster; use train_size >= {nlist} (default "
                f"{39 * nlist}) or a smaller nlist"
            )
        self.lock = RWLock()
        self._threads = max(1, int(self.faiss.omp_get_max_threads()))
        self._index: Any = None  # the main FAISS index (trained, for IVF)
        self._pending: Any = None  # IVF only: exact buffer until training
        self._tombstones: set[int] = set()  # removed ids still in the main index (flat, HNSW)
        self._dead: tuple[Any, Any] | None = None  # cached selectors: tombstones, and not them
        if dim is not None:
            self._create(dim)

    # -- construction ---------------------------------------------------------------------

    @property
    def _lazy(self) -> bool:
        """Removal leaves tombstones (HNSW cannot remove; a CPU flat index need not yet)."""
        return self.kind is IndexKind.HNSW or (self.kind is IndexKind.FLAT and not self.gpu)

    @property
    def _dead_limit(self) -> int:
        """Tombstones past which the index is compacted (an HNSW rebuild costs far more)."""
        if self.kind is IndexKind.HNSW:
            return max(1000, int(self._index.ntotal) // 5)
        return max(64, int(self._index.ntotal) // 16)

    @property
    def _faiss_metric(self) -> int:
        if self.metric is Metric.L2:
            return int(self.faiss.METRIC_L2)
        return int(self.faiss.METRIC_INNER_PRODUCT)

    def _flat(self, dim: int) -> Any:
        faiss = self.faiss
        base = faiss.IndexFlatL2(dim) if self.metric is Metric.L2 else faiss.IndexFlatIP(dim)
        return faiss.IndexIDMap2(base)

    def _create(self, dim: int) -> None:
        faiss, opts = self.faiss, self.options
        self.dim = dim
        if self.kind is IndexKind.FLAT:
            index = self._flat(dim)
        elif self.kind is IndexKind.HNSW:
            hnsw = faiss.IndexHNSWFlat(dim, opts["hnsw_m"], self._faiss_metric)
            hnsw.hnsw.efConstruction = opts["ef_construction"]
            hnsw.hnsw.efSearch = opts["ef_search"]
            index = faiss.IndexIDMap2(hnsw)
        else:
            quantizer = (
                faiss.IndexFlatL2(dim) if self.metric is Metric.L2 else faiss.IndexFlatIP(dim)
            )
            index = faiss.IndexIVFFlat(quantizer, dim, opts["nlist"], self._faiss_metric)
            index.nprobe = opts["nprobe"]
            self._quantizer = quantizer  # FAISS does not own it: keep it alive
            self._pending = self._flat(dim)
        if self.gpu:
            index = faiss.index_cpu_to_all_gpus(index)
        self._index = index

    # -- input ----------------------------------------------------------------------------

    def prepare(self, vectors: Any, what: str = "vectors") -> Any:
        """``vectors`` as a C-contiguous float32 (n, dim) array, normalised for cosine.

        Never modifies the index. A 1-D input is one vector.

        Raises:
            TypeError: not numeric.
            ValueError: wrong shape or dimension, or NaN/infinite values.
        """
        np = self.np
        try:
            given = np.asarray(vectors)
        except (TypeError, ValueError) as exc:  # ragged nesting, unconvertible objects
            raise TypeError(
                f"{what} must be numbers (a list or numpy array of floats): {exc}"
            ) from None
        # NumPy would quietly parse strings ("1.5"), map booleans to 0/1 and drop imaginary
        # parts; none of those is a vector anyone meant to store.
        if given.dtype.kind in "USbcmMV":
            hint = "; embed text first" if given.dtype.kind in "US" else ""
            raise TypeError(
                f"{what} must be numbers (a list or numpy array of real floats), got an "
                f"array of {given.dtype} (first values {given.ravel()[:4].tolist()!r:.60}){hint}"
            )
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # reported just below
                array = np.array(given, dtype=np.float32, copy=True)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{what} must be numbers (a list or numpy array of floats): {exc}"
            ) from None
        if array.ndim == 1:
            array = array.reshape(1, -1)
        if array.ndim != 2 or array.shape[1] == 0:
            raise ValueError(
                f"{what} must be one vector (1-D) or a batch (2-D array), got shape {array.shape}"
            )
        if self.dim is not None and array.shape[1] != self.dim:
            raise ValueError(
                f"{what} have dimension {array.shape[1]}, but this index holds {self.dim}-d "
                "vectors; embed with the same model the index was built with"
            )
        # NaN and infinities show in min/max: two passes, no boolean array of the whole input
        if array.size and not (np.isfinite(array.min()) and np.isfinite(array.max())):
            bad = int((~np.isfinite(array)).any(axis=1).nonzero()[0][0])
            raise ValueError(
                f"{what}: row {bad} contains NaN or infinite values (or values beyond the "
                "float32 range of +-3.4e38); pass finite numbers"
            )
        if self.metric is Metric.COSINE and array.size:
            squared = np.einsum("ij,ij->i", array, array)
            if not squared.all():
                bad = int((squared == 0).nonzero()[0][0])
                raise ValueError(f"{what}: row {bad} is all zeros, which has no cosine direction")
            array /= np.sqrt(squared)[:, None]
        return np.ascontiguousarray(array)

    # -- writes (callers hold lock.write()) --------------------------------------------------

    def add(self, vectors: Any, ids: Any) -> None:
        """Add prepared ``vectors`` under int64 ``ids`` (new ids)."""
        if self._index is None:
            self._create(int(vectors.shape[1]))
        if self._tombstones and not self._tombstones.isdisjoint(self.np.asarray(ids).tolist()):
            self._compact()  # a removed id comes back (SQLite reuses rowids): drop the dead row
        if self.kind is IndexKind.IVF and not self._index.is_trained:
            self._pending.add_with_ids(vectors, ids)
            if self._pending.ntotal >= self.options["train_size"]:
                try:
                    self._train()
                except Exception:
                    # leave the index as it was: without these vectors, still untrained
                    self._pending.remove_ids(self.faiss.IDSelectorBatch(ids))
                    raise
            return
        self._index.add_with_ids(vectors, ids)

    def _contents(self, index: Any) -> tuple[Any, Any]:
        """(ids, vectors) of an ``IndexIDMap2``, in insertion order."""
        ids = self.faiss.vector_to_array(index.id_map).astype(self.np.int64)
        vectors = index.index.reconstruct_n(0, int(index.ntotal)).astype(self.np.float32)
        return ids, vectors

    def _train(self) -> None:
        ids, vectors = self._contents(self._pending)
        self._index.train(vectors)
        try:
            self._index.add_with_ids(vectors, ids)
        except Exception:
            self._index.reset()  # the buffer still holds every vector: searches stay exact
            raise
        self._pending = self._flat(int(self.dim or vectors.shape[1]))

    def remove(self, ids: Any) -> None:
        """Remove ``ids`` (all known to be present)."""
        np = self.np
        ids = np.asarray(ids, dtype=np.int64)
        if self._lazy:
            self._tombstones.update(ids.tolist())
            self._dead = None
            if len(self._tombstones) > self._dead_limit:
                self._compact()
            return
        selector = self.faiss.IDSelectorBatch(ids)
        self._index.remove_ids(selector)
        if self._pending is not None:
            self._pending.remove_ids(selector)

    def _compact(self) -> None:
        """Drop the tombstoned rows for good (flat: one ``remove_ids``; HNSW: a rebuild)."""
        if self.kind is IndexKind.HNSW:
            self._rebuild_hnsw()
        else:
            dead = self.np.fromiter(self._tombstones, dtype=self.np.int64)
            self._index.remove_ids(self.faiss.IDSelectorBatch(dead))
            self._tombstones = set()
        self._dead = None

    def _rebuild_hnsw(self) -> None:
        np = self.np
        ids, vectors = self._contents(self._index)
        keep = ~np.isin(ids, np.fromiter(self._tombstones, dtype=np.int64))
        self._tombstones = set()
        self._create(int(self.dim or vectors.shape[1]))
        if keep.any():
            self._index.add_with_ids(np.ascontiguousarray(vectors[keep]), ids[keep])

    # -- reads (callers hold lock.read()) -----------------------------------------------------

    def __len__(self) -> int:
        total = 0 if self._index is None else int(self._index.ntotal)
        if self._pending is not None:
            total += int(self._pending.ntotal)
        return total - len(self._tombstones)

    def search(self, queries: Any, k: int, allowed: Any = None) -> tuple[Any, Any]:
        """The ``k`` best (scores, ids) per prepared query; id -1 pads missing hits.

        ``k`` beyond the number of vectors is lowered to it (the result then has that many
        columns): no query can have more hits, and FAISS would allocate ``nq * k`` results,
        so a huge ``top_k`` would exhaust memory.

        Args:
            queries: Prepared (nq, dim) float32 array.
            k: Hits per query.
            allowed: int64 array of the only ids that may be returned (a filter), or None.
        """
        np = self.np
        nq = queries.shape[0]
        k = min(k, max(len(self), 0))
        if self._index is None or k <= 0:
            return np.zeros((nq, max(k, 0)), np.float32), np.full((nq, max(k, 0)), -1, np.int64)
        if self.kind is IndexKind.HNSW and allowed is not None and len(allowed) <= _EXACT_FILTER:
            exact = self._search_among(queries, k, allowed)
            if exact is not None:
                return exact
        # Few queries run on this thread alone (see the module docstring); the caller's own
        # OpenMP setting is restored afterwards, so other FAISS use on it is unaffected.
        faiss = self.faiss
        callers_threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1 if nq < _SMALL_BATCH else self._threads)
        parts = []
        try:
            for index in (self._index, self._pending):
                if index is None or index.ntotal == 0:
                    continue
                # the selectors stay referenced here until FAISS is done with them
                params, _selectors = self._params(index, allowed)
                scores, ids = index.search(queries, min(k, int(index.ntotal)), params=params)
                parts.append((scores, ids))
        finally:
            faiss.omp_set_num_threads(callers_threads)
        if not parts:
            return np.zeros((nq, k), np.float32), np.full((nq, k), -1, np.int64)
        if len(parts) == 1 and parts[0][1].shape[1] == k:
            return parts[0]  # already best first (FAISS sorts), nothing to merge
        scores = np.hstack([p[0] for p in parts])
        ids = np.hstack([p[1] for p in parts])
        # best first: largest similarity, or smallest L2 distance; -1 (missing) last
        key = np.where(ids < 0, math.inf, scores if self.metric is Metric.L2 else -scores)
        order = np.argsort(key, axis=1, kind="stable")[:, :k]
        scores = np.take_along_axis(scores, order, axis=1)
        ids = np.take_along_axis(ids, order, axis=1)
        if ids.shape[1] < k:  # fewer vectors than k
            pad = k - ids.shape[1]
            scores = np.hstack([scores, np.zeros((nq, pad), np.float32)])
            ids = np.hstack([ids, np.full((nq, pad), -1, np.int64)])
        return scores, ids

    def _search_among(self, queries: Any, k: int, allowed: Any) -> tuple[Any, Any] | None:
        """Exact search over the ``allowed`` ids only, as :meth:`search` returns it; None if
        one of them is not in the index (the graph search copes with those)."""
        np = self.np
        ids = np.unique(np.asarray(allowed, dtype=np.int64))
        if self._tombstones:
            ids = ids[np.asarray([i not in self._tombstones for i in ids.tolist()], dtype=bool)]
        try:
            vectors = self._index.reconstruct_batch(ids) if len(ids) else np.zeros((0, self.dim))
        except RuntimeError:  # FAISS: "key ... not found"
            return None
        scores = queries @ vectors.T
        if self.metric is Metric.L2:  # squared distances, as FAISS reports them
            squared = np.einsum("ij,ij->i", vectors, vectors)
            scores = np.einsum("ij,ij->i", queries, queries)[:, None] - 2 * scores + squared
        key = scores if self.metric is Metric.L2 else -scores
        order = np.argsort(key, axis=1, kind="stable")[:, :k]
        found = np.take_along_axis(scores, order, axis=1).astype(np.float32)
        pad = k - order.shape[1]
        return (
            np.hstack([found, np.zeros((len(queries), pad), np.float32)]),
            np.hstack([ids[order], np.full((len(queries), pad), -1, np.int64)]),
        )

    def _params(self, index: Any, allowed: Any) -> tuple[Any, list[Any]]:
        """Search parameters for ``index``, and the selector objects they point to."""
        faiss = self.faiss
        selectors: list[Any] = []
        selector = None
        if allowed is not None:
            selector = faiss.IDSelectorBatch(allowed)
            selectors.append(selector)
        if self._tombstones and index is self._index:
            dead = self._dead  # built once per set of tombstones (readers may race: harmless)
            if dead is None:
                batch = faiss.IDSelectorBatch(self.np.fromiter(self._tombstones, self.np.int64))
                dead = self._dead = (batch, faiss.IDSelectorNot(batch))
            not_dead = dead[1]
            selectors += dead
            selector = not_dead if selector is None else faiss.IDSelectorAnd(selector, not_dead)
            selectors.append(selector)
        if selector is None:
            return None, selectors  # efSearch / nprobe are set on the index itself
        if index is self._index and self.kind is IndexKind.HNSW:
            params = faiss.SearchParametersHNSW()
            params.efSearch = self.options["ef_search"]
        elif index is self._index and self.kind is IndexKind.IVF:
            params = faiss.SearchParametersIVF()
            params.nprobe = self.options["nprobe"]
        else:
            params = faiss.SearchParameters()
        params.sel = selector
        return params, selectors

    # -- persistence (callers hold a lock) -----------------------------------------------------

    def cpu_index(self) -> Any:
        """The main index as a CPU FAISS index (for ``faiss.write_index``)."""
        if self._index is None:
            return None
        return self.faiss.index_gpu_to_cpu(self._index) if self.gpu else self._index

    def pending_index(self) -> Any:
        """IVF's untrained buffer, or None."""
        return self._pending

    def restore(self, index: Any, pending: Any, tombstones: set[int]) -> None:
        """Replace the contents with read-back FAISS indexes."""
        self.dim = int(index.d) if index is not None else self.dim
        if index is not None and self.gpu:
            index = self.faiss.index_cpu_to_all_gpus(index)
        self._index = index
        self._pending = pending
        self._tombstones = set(tombstones)
        self._dead = None
