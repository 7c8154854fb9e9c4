"""``MemoryService``: long-term memory for LLM applications over KV, vector and graph stores.

Memories are records (content, session, type, metadata, time) in SQLite; their vectors are
kept beside them in the same database and indexed by FAISS for similarity search; links
between memories form a graph; a key-value table holds anything else. SQLite is the source of
truth: the vector index is rebuilt from it when the service starts, so a process that stops
(even by crashing) and starts again sees exactly the memories it stored.

Example:
    >>> memory = MemoryService()            # in memory; MemoryService(path="mem/") persists
    >>> first = memory.store_memory("I like tea", vector=[1.0, 0.0], session_id="s1")
    >>> _ = memory.store_memory("I live in Paris", vector=[0.0, 1.0], session_id="s1")
    >>> [m["content"] for m in memory.retrieve_memories(vector=[0.9, 0.1], top_k=1)]
    ['I like tea']
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from sage.kernel.services.base_service import BaseService
from sage.middleware.services.documents import (
    SQLiteDocumentTable,
    check_doc_id,
    check_version,
    chunk_id,
    chunk_metadata,
    chunk_texts,
    chunk_vectors,
    describe,
)
from sage.middleware.services.vector_index import VectorIndex

__all__ = ["MemoryService"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS memories (
    id TEXT UNIQUE NOT NULL,
    session_id TEXT NOT NULL,
    memory_type TEXT NOT NULL,
    content TEXT NOT NULL,
    metadata TEXT,
    created_at REAL NOT NULL,
    vector BLOB
);
CREATE INDEX IF NOT EXISTS memories_by_session ON memories (session_id, memory_type, created_at);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL);
CREATE TABLE IF NOT EXISTS links (
    src TEXT NOT NULL, dst TEXT NOT NULL, relation TEXT NOT NULL, weight REAL NOT NULL,
    created_at REAL NOT NULL, PRIMARY KEY (src, dst, relation)
);
CREATE INDEX IF NOT EXISTS links_by_dst ON links (dst, relation);
"""

Embedder = Callable[[str], Any]
_COLUMNS = "rowid, id, session_id, memory_type, content, metadata, created_at"
_M_COLUMNS = ", ".join("m." + column for column in _COLUMNS.split(", "))
_INSERT = f"INSERT INTO memories ({_COLUMNS}, vector) VALUES ({', '.join('?' * 8)})"


class MemoryService(BaseService):
    """Store, search, link and forget memories; see the module docstring.

    Args:
        path: Directory for ``memory.sqlite3`` (persistent), or ``None`` for memory only.
        dim: Vector dimension (``None``: from the first vector stored).
        embedder: Turns ``content`` into a vector when none is given: an object with
            ``embed(text)`` or a callable.
        index: As for :class:`~sage.middleware.services.vdb.VDBService`.
        metric: As for :class:`~sage.middleware.services.vdb.VDBService`.
        device: As for :class:`~sage.middleware.services.vdb.VDBService`.
    """

    max_concurrency = 8

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        dim: int | None = None,
        embedder: Any = None,
        index: str = "flat",
        metric: str = "cosine",
        device: str = "auto",
    ) -> None:
        super().__init__()
        self.path = Path(path) if path is not None else None
        self._embed: Embedder | None = embedder.embed if hasattr(embedder, "embed") else embedder
        self.vectors = VectorIndex(dim, index, metric, device)
        self._db_lock = threading.Lock()
        if self.path is not None:
            self.path.mkdir(parents=True, exist_ok=True)
            database = str(self.path / "memory.sqlite3")
        else:
            database = ":memory:"
        self._db = sqlite3.connect(database, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        if self.path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._docs = SQLiteDocumentTable(self._db)
        self._load_vectors()

    def _load_vectors(self) -> None:
        np = self.vectors.np
        with self._db_lock:
            rows = self._db.execute(
                "SELECT rowid, vector FROM memories WHERE vector IS NOT NULL ORDER BY rowid"
            ).fetchall()
        if not rows:
            return
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        matrix = np.vstack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
        with self.vectors.lock.write():
            self.vectors.add(np.ascontiguousarray(matrix), ids)

    def cleanup(self) -> None:
        """Close the database (everything is already committed)."""
        with self._db_lock:
            self._db.close()

    # -- memories -------------------------------------------------------------------------

    def store_memory(
        self,
        content: str,
        vector: Any = None,
        session_id: str = "default",
        memory_type: str = "conversation",
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Keep a memory; return its id.

        The vector is ``vector`` when given, else ``embedder(content)`` when an embedder
        is configured; a memory without either is still kept and found by session, type,
        time or keyword, just not by similarity.

        Raises:
            TypeError: content is not a string, or metadata is not JSON-serialisable.
            ValueError: the vector has the wrong dimension or NaN values.
        """
        if not isinstance(content, str):
            raise TypeError(f"content must be a string, got {type(content).__name__}")
        if vector is None and self._embed is not None:
            vector = self._embed(content)
        prepared = None if vector is None else self.vectors.prepare(vector, "vector")
        if prepared is not None and prepared.shape[0] != 1:
            raise ValueError(f"store_memory takes one vector, got {prepared.shape[0]}")
        meta = self._json(metadata, "metadata")
        memory_id = uuid.uuid4().hex
        blob = prepared[0].tobytes() if prepared is not None else None
        with self._db_lock:
            cursor = self._db.execute(
                "INSERT INTO memories (id, session_id, memory_type, content, metadata, "
                "created_at, vector) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (memory_id, str(session_id), str(memory_type), content, meta, time.time(), blob),
            )
            rowid = cursor.lastrowid
        if prepared is not None:
            with self.vectors.lock.write():
                self.vectors.add(prepared, self.vectors.np.asarray([rowid], dtype="int64"))
        return memory_id

    @staticmethod
    def _json(value: Any, what: str) -> str | None:
        if value is None:
            return None
        try:
            return json.dumps(value)
        except TypeError as exc:
            raise TypeError(f"{what} must be JSON-serialisable: {exc}") from None

    def _where(self, session_id: str | None, memory_type: str | None) -> tuple[str, list[Any]]:
        clauses, params = [], []
        if session_id is not None:
            clauses.append("session_id = ?")
            params.append(str(session_id))
        if memory_type is not None:
            clauses.append("memory_type = ?")
            params.append(str(memory_type))
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    @staticmethod
    def _record(row: sqlite3.Row, score: float | None = None) -> dict[str, Any]:
        return {
            "id": row["id"],
            "content": row["content"],
            "session_id": row["session_id"],
            "memory_type": row["memory_type"],
            "metadata": json.loads(row["metadata"]) if row["metadata"] else None,
            "created_at": row["created_at"],
            "score": score,
        }

    def retrieve_memories(
        self,
        query: str | None = None,
        vector: Any = None,
        session_id: str | None = None,
        top_k: int = 5,
        memory_type: str | None = None,
    ) -> list[dict[str, Any]]:
        """Find memories, best first.

        With ``vector`` (or a ``query`` and an embedder): by similarity, ``score`` set.
        With only a ``query``: memories containing it (case-insensitive), newest first.
        With neither: the newest. ``session_id`` and ``memory_type`` restrict all three.
        """
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k={top_k!r} is invalid; use an integer >= 1")
        if vector is None and query is not None and self._embed is not None:
            vector = self._embed(query)
        where, params = self._where(session_id, memory_type)
        if vector is None:
            if query is not None:
                where += (" AND " if where else " WHERE ") + "content LIKE ? ESCAPE '\\'"
                escaped = query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                params.append(f"%{escaped}%")
            with self._db_lock:
                rows = self._db.execute(
                    f"SELECT {_COLUMNS} FROM memories{where} ORDER BY created_at DESC, rowid DESC "
                    "LIMIT ?",
                    (*params, top_k),
                ).fetchall()
            return [self._record(r) for r in rows]
        queries = self.vectors.prepare(vector, "vector")
        np = self.vectors.np
        allowed = None
        # read-locked throughout: a document being replaced is seen all old or all new
        with self.vectors.lock.read():
            if where:
                with self._db_lock:
                    sql = f"SELECT rowid FROM memories{where} AND vector IS NOT NULL"
                    cursor = self._db.execute(sql, params)
                    allowed = np.fromiter((r[0] for r in cursor), dtype=np.int64)
                if not len(allowed):
                    return []
            scores, ids = self.vectors.search(queries[:1], top_k, allowed)
            found = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
            if not found:
                return []
            with self._db_lock:
                marks = ",".join("?" * len(found))
                by_rowid = {
                    r["rowid"]: r
                    for r in self._db.execute(
                        f"SELECT {_COLUMNS} FROM memories WHERE rowid IN ({marks})",
                        [i for i, _ in found],
                    )
                }
        return [self._record(by_rowid[i], s) for i, s in found if i in by_rowid]

    def get_memory(self, memory_id: str) -> dict[str, Any]:
        """One memory by id.

        Raises:
            KeyError: unknown id.
        """
        with self._db_lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM memories WHERE id = ?", (memory_id,)
            ).fetchone()
        if row is None:
            raise KeyError(f"no memory with id {memory_id!r}")
        return self._record(row)

    def count(self, session_id: str | None = None, memory_type: str | None = None) -> int:
        """Memories stored (in a session, of a type)."""
        where, params = self._where(session_id, memory_type)
        with self._db_lock:
            return int(
                self._db.execute(f"SELECT COUNT(*) FROM memories{where}", params).fetchone()[0]
            )

    def delete_memory(self, memory_id: str) -> None:
        """Forget one memory, its vector and its links.

        Raises:
            KeyError: unknown id.
        """
        if self._delete("id = ?", [memory_id]) == 0:
            raise KeyError(f"no memory with id {memory_id!r}")

    def _delete(self, where: str, params: list[Any]) -> int:
        with self._db_lock:
            rows = self._db.execute(
                f"SELECT rowid, id, vector IS NOT NULL FROM memories WHERE {where}", params
            ).fetchall()
            if not rows:
                return 0
            self._db.execute("BEGIN")
            self._drop([r[1] for r in rows])
            self._db.execute("COMMIT")
        with_vectors = [r[0] for r in rows if r[2]]
        if with_vectors:
            with self.vectors.lock.write():
                self.vectors.remove(with_vectors)
        return len(rows)

    def _drop(self, ids: list[str]) -> None:
        """Delete memories by id, and their links (in the caller's transaction)."""
        marks = ",".join("?" * len(ids))
        self._db.execute(f"DELETE FROM links WHERE src IN ({marks}) OR dst IN ({marks})", ids * 2)
        self._db.execute(f"DELETE FROM memories WHERE id IN ({marks})", ids)

    # -- documents ------------------------------------------------------------------------

    def upsert_document(
        self,
        doc_id: str,
        chunks: Iterable[str],
        vectors: Any = None,
        *,
        session_id: str = "documents",
        memory_type: str = "document",
        metadata: Any = None,
        version: int | None = None,
    ) -> list[str]:
        """Replace every chunk of ``doc_id`` with ``chunks``, one memory each; return their ids.

        Ids are ``f"{doc_id}#{i}"``; metadata (one mapping per chunk, one for all, or None)
        gets ``"doc_id"`` and ``"chunk"``. Vectors: ``vectors`` (one row per chunk), else the
        embedder's, else none, as for :meth:`store_memory`. The old chunks go (links too, as by
        :meth:`delete_memory`) and the new arrive in one SQLite transaction inside one
        write-locked section of the index: a similarity search sees all the old chunks or all
        the new. Versions work as for ``VDBService.upsert_document`` (a call older than the
        recorded version, a delete's included, is ignored: ``[]``) and survive a restart.
        Raises ``TypeError`` for arguments of the wrong type or metadata that is not JSON, and
        ``ValueError`` unless there is one vector per chunk, of the right dimension, finite.
        """
        doc_id, version = check_doc_id(doc_id), check_version(version)
        texts = chunk_texts(chunks)
        if vectors is None and self._embed is not None:
            vectors = [self._embed(text) for text in texts]
        prepared = chunk_vectors(self.vectors, vectors, doc_id, len(texts))
        metas = [self._json(m, "metadata") for m in chunk_metadata(doc_id, metadata, len(texts))]
        blobs = [None] * len(texts) if prepared is None else [v.tobytes() for v in prepared]
        now, session, kind = time.time(), str(session_id), str(memory_type)
        rows = [
            (chunk_id(doc_id, i), session, kind, text, metas[i], now, blobs[i])
            for i, text in enumerate(texts)
        ]
        stale = self._replace(doc_id, version, rows, prepared, deleted=False) is None
        return [] if stale else [row[0] for row in rows]

    def delete_document(self, doc_id: str, *, version: int | None = None) -> int:
        """Forget every chunk of ``doc_id``; return how many (0 if unknown: not an error).

        Versions and tombstones (one small row per document deleted with a version, kept for
        good) work as for ``VDBService.delete_document``.
        """
        doc_id, version = check_doc_id(doc_id), check_version(version)
        return self._replace(doc_id, version, [], None, deleted=True) or 0

    def _replace(
        self, doc_id: str, version: int | None, rows: list[Any], vectors: Any, deleted: bool
    ) -> int | None:
        """Swap ``doc_id``'s chunks for ``rows`` (or delete it); how many went, None if stale."""
        np, db, docs = self.vectors.np, self._db, self._docs
        with self.vectors.lock.write(), self._db_lock:
            db.execute("BEGIN")
            try:
                if not docs.applies(doc_id, version):
                    db.execute("ROLLBACK")
                    return None
                new = [row[0] for row in rows]
                old_ids = (
                    docs.delete(doc_id, version) if deleted else docs.put(doc_id, version, new)
                )
                marks = ",".join("?" * len(old_ids))
                sql = f"SELECT rowid, vector IS NOT NULL FROM memories WHERE id IN ({marks})"
                old = db.execute(sql, old_ids).fetchall()
                # new rowids above the old: SQLite reuses the largest ones once deleted
                top = db.execute("SELECT COALESCE(MAX(rowid), 0) FROM memories").fetchone()[0]
                self._drop(old_ids)
                db.executemany(_INSERT, [(top + 1 + i, *row) for i, row in enumerate(rows)])
                rowids = np.arange(top + 1, top + 1 + len(rows), dtype=np.int64)
                if vectors is not None:
                    self.vectors.add(vectors, rowids)
                try:
                    db.execute("COMMIT")
                except BaseException:
                    if vectors is not None:
                        self.vectors.remove(rowids)
                    raise
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # none is open if COMMIT failed late
                    db.execute("ROLLBACK")
                raise
            dead = [r[0] for r in old if r[1]]
            if dead:
                self.vectors.remove(dead)
        return len(old)

    def document(self, doc_id: str) -> dict[str, Any] | None:
        """``{"doc_id", "version", "chunks": [ids]}``, or ``None`` if absent or deleted."""
        with self._db_lock:
            found = self._docs.get(check_doc_id(doc_id))
            if found is None:
                return None
            sql = f"SELECT id FROM memories WHERE id IN ({','.join('?' * len(found.chunks))})"
            stored = {row[0] for row in self._db.execute(sql, found.chunks)}
        return describe(doc_id, found.version, [i for i in found.chunks if i in stored])

    def documents(self) -> dict[str, int | None]:
        """doc id -> version of every document present (deleted ones are left out)."""
        with self._db_lock:
            return self._docs.present()

    # -- sessions -------------------------------------------------------------------------

    def list_sessions(self) -> list[dict[str, Any]]:
        """``{"session_id", "memories", "last_at"}`` per session, most recent first."""
        with self._db_lock:
            rows = self._db.execute(
                "SELECT session_id, COUNT(*), MAX(created_at) FROM memories GROUP BY session_id "
                "ORDER BY MAX(created_at) DESC"
            ).fetchall()
        return [{"session_id": r[0], "memories": r[1], "last_at": r[2]} for r in rows]

    def delete_session(self, session_id: str) -> int:
        """Forget every memory of a session (vectors and links too); return how many."""
        return self._delete("session_id = ?", [str(session_id)])

    # -- key-value ------------------------------------------------------------------------

    def put(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable ``value`` under ``key`` (replacing any)."""
        text = self._json(value, "value")
        with self._db_lock:
            self._db.execute(
                "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
                "updated_at = excluded.updated_at",
                (str(key), text, time.time()),
            )

    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default``."""
        with self._db_lock:
            row = self._db.execute("SELECT value FROM kv WHERE key = ?", (str(key),)).fetchone()
        return default if row is None else json.loads(row[0])

    def delete_key(self, key: str) -> bool:
        """Remove ``key``; return whether it existed."""
        with self._db_lock:
            return self._db.execute("DELETE FROM kv WHERE key = ?", (str(key),)).rowcount > 0

    # -- graph ----------------------------------------------------------------------------

    def link(
        self, src_id: str, dst_id: str, relation: str = "related", weight: float = 1.0
    ) -> None:
        """Link two memories (replacing the weight of an existing link of that relation).

        Raises:
            KeyError: either memory does not exist.
        """
        with self._db_lock:
            found = {
                r[0]
                for r in self._db.execute(
                    "SELECT id FROM memories WHERE id IN (?, ?)", (src_id, dst_id)
                )
            }
            missing = [m for m in (src_id, dst_id) if m not in found]
            if missing:
                raise KeyError(f"cannot link: no memory with id {missing[0]!r}")
            self._db.execute(
                "INSERT INTO links (src, dst, relation, weight, created_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(src, dst, relation) DO UPDATE SET weight = excluded.weight",
                (src_id, dst_id, str(relation), float(weight), time.time()),
            )

    def neighbors(
        self, memory_id: str, relation: str | None = None, direction: str = "out"
    ) -> list[dict[str, Any]]:
        """Memories linked to ``memory_id``: ``{"memory", "relation", "weight", "direction"}``.

        Args:
            memory_id: The memory.
            relation: Only links of this relation.
            direction: ``"out"`` (links from it), ``"in"`` (links to it) or ``"both"``.
        """
        if direction not in ("out", "in", "both"):
            raise ValueError(f"direction={direction!r} is invalid; use 'out', 'in' or 'both'")
        queries = []
        if direction in ("out", "both"):
            queries.append(("out", "src", "dst"))
        if direction in ("in", "both"):
            queries.append(("in", "dst", "src"))
        results = []
        with self._db_lock:
            for label, here, there in queries:
                sql = (
                    f"SELECT l.relation, l.weight, {_M_COLUMNS} "
                    f"FROM links l JOIN memories m ON m.id = l.{there} WHERE l.{here} = ?"
                )
                params: list[Any] = [memory_id]
                if relation is not None:
                    sql += " AND l.relation = ?"
                    params.append(relation)
                for row in self._db.execute(sql + " ORDER BY l.weight DESC", params):
                    results.append(
                        {
                            "memory": self._record(row),
                            "relation": row["relation"],
                            "weight": row["weight"],
                            "direction": label,
                        }
                    )
        return results
