"""Documents kept as chunks: the rules for replacing and deleting them by document.

A live index over a folder sees each file as a document split into chunks. When the file
changes its chunks are replaced; when it is deleted they go. :class:`VDBService` and
:class:`MemoryService` both offer ``upsert_document`` / ``delete_document``; this module
holds what they share: chunk ids (``f"{doc_id}#{i}"``), the metadata each chunk gets, the
version rule, and the table of documents: :class:`DocumentTable` in memory (saved with the
vector DB) and :class:`SQLiteDocumentTable`, the same in the memory service's database.

Versions are optional integers from the source (a modification counter, a hybrid logical
clock). A call with a version lower than the one recorded for the document is stale and
ignored, so an update that arrives late or is replayed after a restart cannot overwrite a
newer one. A delete with a version leaves a *tombstone* (doc id -> version), so a late older
upsert cannot bring the document back either.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sage.middleware.services.inputs import as_int, is_empty, metadata_list

if TYPE_CHECKING:
    import sqlite3

    from sage.middleware.services.vector_index import VectorIndex

__all__ = [
    "Document",
    "DocumentTable",
    "SQLiteDocumentTable",
    "applies",
    "check_doc_id",
    "check_version",
    "chunk_id",
    "chunk_metadata",
    "chunk_texts",
    "chunk_vectors",
    "describe",
]


def check_doc_id(doc_id: Any) -> str:
    """``doc_id`` if it is a non-empty ``str``, else a ``TypeError``/``ValueError`` naming it."""
    if not isinstance(doc_id, str):
        raise TypeError(
            f"doc_id must be a str (e.g. the file's path), got {type(doc_id).__name__} "
            f"{doc_id!r:.60}"
        )
    if not doc_id:
        raise ValueError("doc_id is empty; use a non-empty str such as the file's path")
    return doc_id


def check_version(version: Any) -> int | None:
    """``version`` as an ``int`` (NumPy integers too), or ``None``; ``bool`` is refused."""
    as_number = as_int(version)
    if version is None or as_number is not None:
        return as_number
    raise TypeError(
        f"version must be an int (e.g. a modification counter or clock) or None, got "
        f"{type(version).__name__} {version!r:.60}"
    )


def applies(recorded: int | None, version: int | None) -> bool:
    """Whether a call at ``version`` may change a document recorded at ``recorded``.

    Only a versioned call older than a versioned record is refused; an equal version applies
    again (a replay gives the same result), and ``None`` on either side always applies.
    """
    return version is None or recorded is None or version >= recorded


def chunk_id(doc_id: str, index: int) -> str:
    """The id of chunk ``index`` of ``doc_id``; unique across documents (split at the last #)."""
    return f"{doc_id}#{index}"


def chunk_metadata(doc_id: str, metadata: Any, n: int) -> list[dict[str, Any]]:
    """One metadata dict per chunk, each with ``"doc_id"`` and ``"chunk"`` (its index) set.

    Args:
        doc_id: The document.
        metadata: ``None``, one mapping for every chunk, or a list of ``n`` mappings (or
            ``None`` entries).
        n: Number of chunks.

    Raises:
        TypeError: ``metadata`` or an entry of it is not a mapping.
        ValueError: the list does not have one entry per chunk.
    """
    if metadata is None or isinstance(metadata, Mapping):
        metas = [metadata] * n
    else:
        metas = metadata_list(metadata, n, "chunks")
    return [{**(meta or {}), "doc_id": doc_id, "chunk": i} for i, meta in enumerate(metas)]


def chunk_texts(chunks: Any) -> list[str]:
    """``chunks`` as a list of str, else a ``TypeError`` (a lone str is refused, not split)."""
    texts = [] if isinstance(chunks, str) else list(chunks)
    if isinstance(chunks, str) or not all(isinstance(text, str) for text in texts):
        raise TypeError(f"chunks must be a list of str (the chunk texts), got {chunks!r:.60}")
    return texts


def chunk_vectors(index: VectorIndex, vectors: Any, doc_id: str, n: int | None = None) -> Any:
    """A document's chunk vectors prepared by ``index``, or ``None`` for none (``[]``).

    With ``n`` (the number of chunks), anything but one vector per chunk is a ``ValueError``;
    ``vectors=None`` then means the chunks have no vectors (``None`` is returned).
    """
    if vectors is None and n is not None:
        return None
    if vectors is None:
        raise TypeError(
            f"vectors of {doc_id!r} is None; pass a 2-D array with one row per chunk, or [] "
            "for a document with no chunks"
        )
    prepared = None if is_empty(vectors) else index.prepare(vectors, "vectors")
    given = 0 if prepared is None else len(prepared)
    if n is not None and given != n:
        raise ValueError(
            f"{given} vectors for {n} chunks of {doc_id!r}; pass one vector per chunk, or "
            "vectors=None to embed them"
        )
    return prepared


def describe(doc_id: str, version: int | None, chunks: list[str]) -> dict[str, Any]:
    """What ``document(doc_id)`` returns: ``{"doc_id", "version", "chunks"}``."""
    return {"doc_id": doc_id, "version": version, "chunks": list(chunks)}


@dataclass(slots=True)
class Document:
    """One document: its version and chunk ids; ``deleted`` marks a tombstone (no chunks)."""

    version: int | None
    chunks: list[str]
    deleted: bool = False


class DocumentTable:
    """doc id -> :class:`Document`, tombstones included.

    Not thread-safe: the owning service calls it under its index's write lock (reads under
    the read lock), so the table and the index change together.

    Memory: one entry per document present, plus one small entry (id and version) per
    document deleted *with a version*; a delete without a version forgets the document.
    """

    def __init__(self) -> None:
        self._docs: dict[str, Document] = {}

    def applies(self, doc_id: str, version: int | None) -> bool:
        """Whether a call at ``version`` may change ``doc_id`` (see :func:`applies`)."""
        found = self._docs.get(doc_id)
        return found is None or applies(found.version, version)

    def get(self, doc_id: str) -> Document | None:
        """The document, or ``None`` if unknown or deleted."""
        found = self._docs.get(doc_id)
        return None if found is None or found.deleted else found

    def present(self) -> dict[str, int | None]:
        """doc id -> version of the documents present (not deleted)."""
        return {d: doc.version for d, doc in self._docs.items() if not doc.deleted}

    def put(self, doc_id: str, version: int | None, chunks: list[str]) -> list[str]:
        """Record ``doc_id`` at ``version`` with these chunk ids; return the previous ones."""
        found = self.get(doc_id)
        self._docs[doc_id] = Document(version, list(chunks))
        return [] if found is None else found.chunks

    def delete(self, doc_id: str, version: int | None) -> list[str]:
        """Forget ``doc_id``'s chunks; return them. A ``version`` leaves a tombstone."""
        found = self._docs.pop(doc_id, None)
        if version is not None:
            self._docs[doc_id] = Document(version, [], deleted=True)
        return [] if found is None else found.chunks

    def forget_chunks(self, ids: Iterable[Any]) -> None:
        """Drop chunk ids deleted one by one (``VDBService.delete``) from their documents."""
        for chunk in ids:
            if isinstance(chunk, str) and "#" in chunk:
                found = self.get(chunk.rpartition("#")[0])
                if found is not None and chunk in found.chunks:
                    found.chunks.remove(chunk)

    def to_json(self) -> list[list[Any]]:
        """``[doc_id, version, chunk ids, deleted]`` rows, for saving as JSON."""
        return [[d, doc.version, doc.chunks, doc.deleted] for d, doc in self._docs.items()]

    @classmethod
    def from_json(cls, rows: Iterable[list[Any]]) -> DocumentTable:
        """The table :meth:`to_json` wrote (no rows: an empty table, as older saves have)."""
        table = cls()
        for doc_id, version, chunks, deleted in rows:
            table._docs[doc_id] = Document(version, list(chunks), bool(deleted))
        return table


class SQLiteDocumentTable:
    """:class:`DocumentTable` in SQLite, beside records kept there (``MemoryService``).

    One row per document: ``doc_id``, ``version``, ``chunks`` (how many: their ids are
    ``chunk_id(doc_id, i)`` for ``i`` below it) and ``deleted`` (1: a tombstone). The caller
    holds the connection's lock and transaction, so a document's row changes together with
    its chunks. The table is created when missing: databases written before it open as they
    are, with no documents.
    """

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS documents (doc_id TEXT PRIMARY KEY, version INTEGER, "
        "chunks INTEGER NOT NULL, deleted INTEGER NOT NULL)"
    )

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        db.execute(self.SCHEMA)

    def _row(self, doc_id: str) -> Any:
        return self.db.execute(
            "SELECT version, chunks, deleted FROM documents WHERE doc_id = ?", (doc_id,)
        ).fetchone()

    def applies(self, doc_id: str, version: int | None) -> bool:
        """Whether a call at ``version`` may change ``doc_id`` (see :func:`applies`)."""
        row = self._row(doc_id)
        return row is None or applies(row[0], version)

    def get(self, doc_id: str) -> Document | None:
        """The document, or ``None`` if unknown or deleted."""
        row = self._row(doc_id)
        if row is None or row[2]:
            return None
        return Document(row[0], [chunk_id(doc_id, i) for i in range(row[1])])

    def present(self) -> dict[str, int | None]:
        """doc id -> version of the documents present (not deleted)."""
        rows = self.db.execute("SELECT doc_id, version FROM documents WHERE NOT deleted")
        return {row[0]: row[1] for row in rows}

    def put(self, doc_id: str, version: int | None, chunks: list[str]) -> list[str]:
        """Record ``doc_id`` with ``chunks`` (``chunk_id(doc_id, i)`` each); return the old."""
        found = self.get(doc_id)
        self.db.execute(
            "INSERT OR REPLACE INTO documents VALUES (?, ?, ?, 0)", (doc_id, version, len(chunks))
        )
        return [] if found is None else found.chunks

    def delete(self, doc_id: str, version: int | None) -> list[str]:
        """Forget ``doc_id``'s chunks; return them. A ``version`` leaves a tombstone."""
        found = self.get(doc_id)
        if version is None:
            self.db.execute("DELETE FROM documents WHERE doc_id = ?", (doc_id,))
        else:
            self.db.execute(
                "INSERT OR REPLACE INTO documents VALUES (?, ?, 0, 1)", (doc_id, version)
            )
        return [] if found is None else found.chunks
