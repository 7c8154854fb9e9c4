"""A RAG index that follows its documents: the operators between a
:class:`~sage.kernel.connectors.FolderSource` and the vector DB.

Each :class:`~sage.kernel.connectors.FileEvent` becomes a :class:`DocumentUpdate` (the file
split into chunks, or a deletion), batches of updates are embedded in one call, and each
update replaces the document's chunks in :class:`~sage.middleware.services.vdb.VDBService`
(``upsert_document``, ``delete_document``) and, when asked, in
:class:`~sage.middleware.services.memory.MemoryService`. Updates carry the source's version,
so the stores refuse an older update that arrives after a newer one (a replay after a
restart): the index always converges to the folder's current files, and no search ever
returns a chunk of a version older than one already visible.

::

    env.register_service("llm_service", LLMService)          # the embedder
    env.register_service("vdb_service", VDBService, dim=384)
    follow_folder(env, "docs/")                              # from_source ... sink
    env.submit(autostop=False)
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sage.common.core.functions.map_function import MapFunction
from sage.common.core.functions.sink_function import SinkFunction
from sage.kernel.connectors import DELETED, FileEvent, FolderSource

__all__ = [
    "ChunkDocument",
    "DocumentUpdate",
    "EmbedDocuments",
    "Freshness",
    "IndexDocuments",
    "chunk_text",
    "follow_folder",
]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def chunk_text(text: str, target_chars: int = 800) -> list[str]:
    """``text`` in chunks of about ``target_chars`` characters, cut between paragraphs,
    else between sentences, else between words; whitespace collapsed. Deterministic: the
    same text always gives the same chunks (so chunk ids are stable)."""
    pieces: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        block = " ".join(block.split())
        if not block:
            continue
        if len(block) <= target_chars:
            pieces.append(block)
            continue
        for sentence in _SENTENCE_END.split(block):
            while len(sentence) > target_chars:
                cut = sentence.rfind(" ", 0, target_chars)
                cut = cut if cut > 0 else target_chars
                pieces.append(sentence[:cut])
                sentence = sentence[cut:].lstrip()
            if sentence:
                pieces.append(sentence)
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + 1 + len(piece) > target_chars:
            chunks.append(current)
            current = piece
        else:
            current = f"{current} {piece}" if current else piece
    if current:
        chunks.append(current)
    return chunks


@dataclass(frozen=True, slots=True)
class DocumentUpdate:
    """A document's new chunks (none when it was deleted), on its way to the index.

    Attributes:
        doc_id: The document (a file's path relative to the folder).
        version: The source's version of this change (higher is newer).
        chunks: The chunks' texts, in order.
        deleted: The document is gone.
        observed_at: ``time.time()`` when the source read the file: freshness counts from
            here.
        digest: The file content's digest (``None`` when deleted).
        vectors: One vector per chunk, once embedded.
    """

    doc_id: str
    version: int
    chunks: tuple[str, ...]
    deleted: bool
    observed_at: float
    digest: str | None = None
    vectors: Any = None


class ChunkDocument(MapFunction):
    """:class:`FileEvent` → :class:`DocumentUpdate` (the file's text in chunks).

    Args:
        target_chars: About how long a chunk is.
    """

    def __init__(self, target_chars: int = 800, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target_chars = target_chars

    def execute(self, event: FileEvent) -> DocumentUpdate:
        deleted = event.kind == DELETED
        chunks = () if deleted else tuple(chunk_text(event.text or "", self.target_chars))
        return DocumentUpdate(
            event.path, event.version, chunks, deleted, event.observed_at, event.digest
        )


class EmbedDocuments(MapFunction):
    """A batch of updates → the same updates with their chunks' vectors, in one embedding
    call.

    Only text not embedded before is sent to the embedder: the vectors of the chunks each
    document had are kept (up to ``cache_chunks`` of them, least recently used first out),
    so an edit re-embeds the chunks it changed, not the whole document. Updates of the same
    document in one batch: only the newest is kept (the store would refuse the others).

    Args:
        service: The embedding service's name (anything with ``embed(texts) -> vectors``,
            such as :class:`~sage.middleware.services.llm.LLMService`).
        cache_chunks: Chunk vectors kept for reuse (0: embed everything every time).
    """

    def __init__(self, service: str = "llm_service", cache_chunks: int = 20_000, **kwargs: Any):
        super().__init__(**kwargs)
        self.service = service
        self.cache_chunks = cache_chunks
        self._cache: OrderedDict[str, Any] = OrderedDict()  # chunk text -> its vector

    def execute(self, batch: Sequence[DocumentUpdate]) -> list[DocumentUpdate]:
        newest: dict[str, DocumentUpdate] = {}
        for update in batch:
            kept = newest.get(update.doc_id)
            if kept is None or update.version >= kept.version:
                newest[update.doc_id] = update
        updates = list(newest.values())
        cache = self._cache
        missing = list(dict.fromkeys(t for u in updates for t in u.chunks if t not in cache))
        if missing:
            for text, vector in zip(
                missing, self.call_service[self.service].embed(missing), strict=True
            ):
                cache[text] = vector
        out = []
        for update in updates:
            vectors = []
            for text in update.chunks:
                cache.move_to_end(text)
                vectors.append(cache[text])
            out.append(replace(update, vectors=vectors))
        while len(cache) > self.cache_chunks:
            cache.popitem(last=False)
        return out


class Freshness:
    """How long changes took from the source reading a file to being searchable: the
    latest ``keep`` figures, thread-safe (the demo's terminal and tests read it)."""

    def __init__(self, keep: int = 10_000) -> None:
        self._lock = threading.Lock()
        self._seconds: deque[float] = deque(maxlen=keep)
        self.applied = 0
        self.stale = 0  # refused by the store: an older version than it holds
        self.deleted = 0
        self.last: tuple[str, bool, float] | None = None  # (doc_id, deleted, seconds)
        self._changed = threading.Condition(self._lock)

    def add(self, doc_id: str, seconds: float, applied: bool, deleted: bool) -> None:
        """Count one update the index took (``applied``) or refused as stale."""
        with self._lock:
            if applied:
                self.last = (doc_id, deleted, seconds)
            self._seconds.append(seconds)
            self.applied += applied
            self.stale += not applied
            self.deleted += deleted and applied
            self._changed.notify_all()

    def wait_for(self, condition: Callable[[], bool], timeout: float | None = None) -> bool:
        """Block until ``condition()`` holds, testing it now and after each update the
        index takes; ``False`` if ``timeout`` seconds passed first."""
        with self._changed:
            return self._changed.wait_for(condition, timeout)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of the kept figures in seconds (``None``: none yet)."""
        with self._lock:
            ordered = sorted(self._seconds)
        if not ordered:
            return None
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class IndexDocuments(SinkFunction):
    """Applies each batch of embedded updates to the vector DB (and the memory service):
    a changed document's chunks replace its old ones at once; a deleted one's vanish.

    Args:
        vdb: The :class:`VDBService`'s name.
        memory: A :class:`MemoryService`'s name to keep in step too (``None``: none).
        freshness: Where to count how fresh the index is (in-process jobs).
    """

    def __init__(
        self,
        vdb: str = "vdb_service",
        memory: str | None = None,
        freshness: Freshness | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.vdb = vdb
        self.memory = memory
        self.freshness = freshness

    def execute(self, updates: Sequence[DocumentUpdate]) -> None:
        vdb = self.call_service[self.vdb]
        memory = self.call_service[self.memory] if self.memory is not None else None
        for u in updates:
            if u.deleted:
                applied = vdb.delete_document(u.doc_id, version=u.version) > 0
                if memory is not None:
                    memory.delete_document(u.doc_id, version=u.version)
            else:
                metadata = [
                    {"path": u.doc_id, "text": text, "version": u.version, "digest": u.digest}
                    for text in u.chunks
                ]
                ids = vdb.upsert_document(u.doc_id, u.vectors, metadata, version=u.version)
                applied = bool(ids) or not u.chunks
                if memory is not None:
                    memory.upsert_document(u.doc_id, list(u.chunks), u.vectors, version=u.version)
            if self.freshness is not None:
                self.freshness.add(u.doc_id, time.time() - u.observed_at, applied, u.deleted)


def follow_folder(
    env: Any,
    folder: Any,
    *,
    patterns: Sequence[str] = ("*",),
    embedder: str = "llm_service",
    vdb: str = "vdb_service",
    memory: str | None = None,
    freshness: Freshness | None = None,
    target_chars: int = 800,
    batch: int = 64,
    polling: bool | None = None,
) -> Any:
    """Add the live-index pipeline to ``env``: ``FolderSource`` → chunk → batch → embed →
    index. Returns the sink's stream. Register the ``embedder`` and ``vdb`` services (and
    ``memory``) on ``env`` first."""
    return (
        env.from_source(
            FolderSource, folder, patterns=list(patterns), polling=polling, name="files"
        )
        .map(ChunkDocument, target_chars, name="chunk")
        .batch(batch, timeout_s=0.005, name="batch")
        .map(EmbedDocuments, embedder, name="embed")
        .sink(IndexDocuments, vdb, memory, freshness, name="index")
    )
