"""The live index end to end: a folder changed 10,000 times in bursts while a task of the job
is killed twice, and the index it keeps comes out equal to a fresh index of the folder's
final files: the same chunk ids, texts and vectors, nothing missing, nothing stale.

The embedder is the real all-MiniLM-L6-v2 (the engine's ONNX encoder, in process)."""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from sage.inference.client.unified import UnifiedInferenceClient
from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.connectors import FolderSource
from sage.middleware.live_index import (
    ChunkDocument,
    DocumentUpdate,
    EmbedDocuments,
    Freshness,
    IndexDocuments,
    chunk_text,
)
from sage.middleware.services.llm import LLMService
from sage.middleware.services.vdb import VDBService

WORDS = [
    "river",
    "stone",
    "cloud",
    "lantern",
    "harbor",
    "meadow",
    "copper",
    "violet",
    "engine",
    "orbit",
    "signal",
    "garden",
    "winter",
    "ember",
    "quartz",
    "falcon",
    "canyon",
    "marble",
    "willow",
    "thunder",
]
CHARS = 80  # chunk size: short documents of 1 to 4 chunks (the test pays for every token)
WAIT_S = 120.0


@pytest.fixture
def client() -> Iterator[UnifiedInferenceClient]:
    client = UnifiedInferenceClient.create(embedded=True)
    yield client
    UnifiedInferenceClient.shutdown_embedded()


def text_for(rng: random.Random) -> str:
    paragraphs = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 16))) + "."
        for _ in range(rng.randrange(1, 4))
    ]
    return "\n\n".join(paragraphs)


def digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


kills_due = threading.Semaphore(0)  # released by the writer: the next embed call fails
kills_done = threading.Event()


class KilledTwice(EmbedDocuments):
    """The embedding task, killed (an exception ends its thread) when the writer says so."""

    def execute(self, batch: Sequence[DocumentUpdate]) -> list[DocumentUpdate]:
        if kills_due.acquire(blocking=False):
            raise RuntimeError("injected: the embedding task is killed")
        return super().execute(batch)


def index_matches(vdb: VDBService, expected: dict[str, str]) -> bool:
    present = vdb.documents()
    if present.keys() != expected.keys():
        return False
    for path, want in expected.items():
        chunks = (vdb.document(path) or {}).get("chunks") or []
        if not chunks or vdb.get(chunks[0])["metadata"]["digest"] != want:
            return False
    return True


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_live_index_equals_a_fresh_index_after_10000_events_and_two_kills(
    tmp_path: Path, client: UnifiedInferenceClient
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    rng = random.Random(20)
    names = [f"d{i:03d}.txt" for i in range(300)]
    for name in names[:150]:
        (folder / name).write_text(text_for(rng), encoding="utf-8")

    vdb = VDBService(dim=384)
    freshness = Freshness()
    env = LocalEnvironment(
        "live_index",
        config={
            "fault_tolerance": {
                "strategy": "checkpoint",
                "checkpoint_dir": str(tmp_path / "ckpt"),
                "checkpoint_interval": 0.2,
                "restart_strategy": "fixed",
                "max_restarts": 2,
                "delay_s": 0.05,
            }
        },
    )
    env.register_service("llm_service", LLMService, client)
    env.register_service("vdb_service", lambda: vdb)
    (  # follow_folder's pipeline, with an embedding task that gets killed
        env.from_source(FolderSource, folder)
        .map(ChunkDocument, CHARS)
        .batch(64, timeout_s=0.005)
        .map(KilledTwice)
        .sink(IndexDocuments, freshness=freshness)
    )
    job = env.submit(autostop=False)
    try:
        # 10,000 changes in 50 bursts of 200; each burst waits until the index has taken
        # something since the last, so changes and indexing interleave.
        events = 0
        for burst in range(50):
            for _ in range(200):
                path = folder / rng.choice(names)
                if not path.exists():
                    path.write_text(text_for(rng), encoding="utf-8")
                elif rng.random() < 0.75:
                    path.write_text(text_for(rng), encoding="utf-8")  # edited in place
                else:
                    path.unlink()
                events += 1
            if burst in (15, 32):
                kills_due.release()
            applied = freshness.applied
            assert freshness.wait_for(
                lambda: freshness.applied > applied,  # noqa: B023
                WAIT_S,
            ), "the index stopped taking changes"
        assert events == 10_000
        expected = {p.name: digest(p) for p in folder.iterdir()}
        assert freshness.wait_for(lambda: index_matches(vdb, expected), WAIT_S), (
            "the index never caught up with the folder"
        )
    finally:
        env.stop(WAIT_S)
    assert job.restarts == 2 and job.checkpoints_completed >= 2
    assert env.dead_letters == []

    fresh = VDBService(dim=384)
    for path in sorted(folder.iterdir()):
        chunks = chunk_text(path.read_text(encoding="utf-8"), CHARS)
        fresh.upsert_document(
            path.name,
            client.embed(chunks),
            [{"path": path.name, "text": c} for c in chunks],
        )
    assert vdb.count() == fresh.count()
    assert {d: vdb.document(d)["chunks"] for d in vdb.documents()} == {
        d: fresh.document(d)["chunks"] for d in fresh.documents()
    }
    for doc_id in fresh.documents():
        for chunk_id in fresh.document(doc_id)["chunks"]:
            assert vdb.get(chunk_id)["metadata"]["text"] == fresh.get(chunk_id)["metadata"]["text"]
    # the same vectors: each fresh chunk's vector finds that chunk in the live index at
    # cosine 1 (to float rounding: the encoder batched them differently)
    for doc_id in fresh.documents():
        ids = fresh.document(doc_id)["chunks"]
        texts = [fresh.get(i)["metadata"]["text"] for i in ids]
        for chunk_id, vector in zip(ids, client.embed(texts), strict=True):
            hit = vdb.search(np.asarray(vector), top_k=1, filter={"doc_id": doc_id})[0]
            assert hit["id"] == chunk_id and hit["score"] > 1 - 1e-5
