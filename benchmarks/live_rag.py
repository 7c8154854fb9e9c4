"""Live RAG freshness: SAGE's live index vs Pathway's live document store, on one folder
workload, in one run.

Both follow a folder of ~200-token documents and embed them with the same weights, the
bundled all-MiniLM-L6-v2 (SAGE: its engine's ONNX encoder, in this process; Pathway:
its ``SentenceTransformerEmbedder``, in its own process, see ``_pathway_live.py``), one chunk
per document. A writer rewrites documents at a steady rate (each version carries a unique
marker, written to a temporary file and renamed into the folder) and a prober asks each
system, round after round, for the current text of every document with a version not yet
seen: one retrieval per round, restricted to those documents by a metadata filter, with a
query embedded each time. Freshness is the time from a file's write to the first round whose
answer holds that version (or a newer one of the same file).

Figures: freshness p50/p99 at a sustained 20 and 50 changed documents/s, then a ramp of
rates until p99 freshness passes 2 s: the highest rate it did not pass is the sustainable
ingest rate. Targets (issue 20): SAGE p99 <= 1 s at 50 documents/s on 2 cores, and a higher
sustainable rate than Pathway.

    python benchmarks/live_rag.py [--quick] [--write-readme]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import busy_cpu_s, report_checked

DOCS = 200
WORDS = 128  # about 200 MiniLM tokens (all-MiniLM-L6-v2's tokenizer: 198 on average)
PARAGRAPHS = 4  # edit mode: a document's paragraphs, a chunk each
PARAGRAPH_CHARS = 360  # SAGE's chunk size in edit mode: one paragraph (~32 words) per chunk
SUSTAINED = (20, 50)
RAMP = (10, 20, 30, 40, 50, 60, 75, 90, 100, 125, 150, 200, 300)
PASS_P99_S = 2.0
WORKLOADS = ("rewrite", "edit")
THREADS = int(os.environ.get("PATHWAY_TORCH_THREADS", "2"))  # Pathway's torch threads
SETTLE_S = 30.0  # longest a version may take before it counts as never seen
PROBE_EVERY_S = 0.05  # least period between probe rounds (Pathway answers in 50 ms batches)


class Store(Protocol):
    """What the harness needs of a live document store."""

    name: str

    def start(self, folder: Path, paragraphs: bool) -> None: ...
    def wait_indexed(self, docs: int, timeout: float) -> float: ...
    def current_texts(self, paths: list[str]) -> dict[str, list[str]]: ...
    def stop(self) -> None: ...


# -- the systems ----------------------------------------------------------------------------


class SageStore:
    """SAGE: ``follow_folder`` (FolderSource → chunk → batch → embed → upsert) in a local job
    in this process, its embedding engine in ``dtype``."""

    def __init__(self, dtype: str = "float32") -> None:
        self.dtype = dtype
        self.name = f"SAGE live index, {dtype}"

    def start(self, folder: Path, paragraphs: bool) -> None:
        from sage.inference.client.unified import UnifiedInferenceClient
        from sage.kernel.api.local_environment import LocalEnvironment
        from sage.middleware.live_index import Freshness, follow_folder
        from sage.middleware.services.llm import LLMService
        from sage.middleware.services.vdb import VDBService

        self.client = UnifiedInferenceClient.create(embedded=True, embedding_dtype=self.dtype)
        self.client.embed(["warm up"])
        llm = LLMService(self.client)
        self.vdb = VDBService(dim=384)
        self.freshness = Freshness()
        self.started = time.monotonic()
        self.env = LocalEnvironment("live_rag_bench")
        self.env.register_service("llm_service", lambda: llm)
        self.env.register_service("vdb_service", lambda: self.vdb)
        chars = PARAGRAPH_CHARS if paragraphs else 100_000  # a chunk per paragraph, or per file
        follow_folder(self.env, folder, freshness=self.freshness, target_chars=chars)
        self.env.submit(autostop=False)

    def wait_indexed(self, docs: int, timeout: float) -> float:
        if not self.freshness.wait_for(lambda: len(self.vdb.documents()) >= docs, timeout):
            raise TimeoutError(f"SAGE indexed {len(self.vdb.documents())} of {docs} documents")
        return time.monotonic() - self.started

    def current_texts(self, paths: list[str]) -> dict[str, list[str]]:
        wanted = set(paths)
        vector = self.client.embed(["probe"])[0]
        hits = self.vdb.search(
            vector, top_k=len(paths) * (PARAGRAPHS + 2), filter=lambda m: m["path"] in wanted
        )
        texts: dict[str, list[str]] = {}
        for h in hits:
            texts.setdefault(h["metadata"]["path"], []).append(h["metadata"]["text"])
        return texts

    def stop(self) -> None:
        from sage.inference.client.unified import UnifiedInferenceClient

        self.env.stop(60)
        UnifiedInferenceClient.shutdown_embedded()


class PathwayStore:
    """Pathway 0.33's ``DocumentStore`` served by ``DocumentStoreServer`` (``_pathway_live``)."""

    def __init__(self, dtype: str = "float32") -> None:
        from _pathway_live import PathwayLiveStore, version

        self.dtype = dtype
        self.name = f"Pathway {version()} DocumentStore, {dtype}"
        self._cls = PathwayLiveStore

    def start(self, folder: Path, paragraphs: bool) -> None:
        from sage.common.config.ports import SagePorts

        options = {"split": "paragraphs", "cache": "on"} if paragraphs else {}
        self.store = self._cls(
            folder, SagePorts.any_free_port(), dtype=self.dtype, threads=THREADS, **options
        )
        self.store.start()

    def wait_indexed(self, docs: int, timeout: float) -> float:
        return self.store.wait_ready(timeout, expect_docs=docs)

    def current_texts(self, paths: list[str]) -> dict[str, list[str]]:
        texts: dict[str, list[str]] = {}
        for hit in self.store.retrieve("probe", len(paths) * (PARAGRAPHS + 2), paths=paths):
            texts.setdefault(Path(hit["path"]).name, []).append(hit["text"])
        return texts

    def stop(self) -> None:
        self.store.close()


# -- the workload ----------------------------------------------------------------------------


def vocabulary() -> list[str]:
    """Real English words: those of the Python language reference (shipped with CPython)."""
    from pydoc_data.topics import topics

    words = re.findall(r"[a-z]{3,12}", " ".join(topics.values()).lower())
    return sorted(set(words))


@dataclass
class Version:
    marker: str
    written: float
    seen: float | None = None


@dataclass
class Workload:
    """The folder and the versions written to it.

    ``edit`` mode: a document is ``PARAGRAPHS`` paragraphs, and a change rewrites the first
    (which carries the version's marker) and one other; else a change rewrites it whole.
    """

    folder: Path
    words: list[str]
    edit: bool
    rng: random.Random = field(default_factory=lambda: random.Random(20))
    count: int = 0
    docs: dict[int, list[str]] = field(default_factory=dict)
    pending: dict[str, list[Version]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def words_(self, n: int) -> str:
        return " ".join(self.rng.choice(self.words) for _ in range(n))

    def text(self, doc: int, marker: str) -> str:
        per = WORDS // PARAGRAPHS
        if not self.edit:
            return f"{marker} {self.words_(WORDS - 1)}\n"
        paragraphs = self.docs.get(doc) or [self.words_(per) for _ in range(PARAGRAPHS)]
        paragraphs[0] = f"{marker} {self.words_(per - 1)}"
        other = self.rng.randrange(1, PARAGRAPHS)
        paragraphs[other] = self.words_(per)
        self.docs[doc] = paragraphs
        return "\n\n".join(paragraphs) + "\n"

    def write(self, doc: int, track: bool = True) -> Version:
        self.count += 1
        marker = f"v{self.count}x{self.rng.getrandbits(32):08x}"
        name = f"doc-{doc:04d}.txt"
        tmp = self.folder.parent / f".{name}.tmp"
        tmp.write_text(self.text(doc, marker), encoding="utf-8")
        version = Version(marker, time.monotonic())
        os.replace(tmp, self.folder / name)
        if track:
            with self.lock:
                self.pending.setdefault(name, []).append(version)
        return version


class Prober:
    """Rounds of retrievals until every version written is seen (see the module docstring)."""

    def __init__(self, store: Store, workload: Workload) -> None:
        self.store, self.workload = store, workload
        self.done: list[Version] = []
        self.rounds = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                started = time.monotonic()
                self._round()
                self.stop.wait(max(0.0, PROBE_EVERY_S - (time.monotonic() - started)))
        except BaseException as exc:  # reported by the harness
            self.error = exc

    def _round(self) -> None:
        wl = self.workload
        with wl.lock:
            paths = [p for p, versions in wl.pending.items() if versions]
        if not paths:
            return
        texts = self.store.current_texts(paths)
        now = time.monotonic()
        self.rounds += 1
        with wl.lock:
            for path in paths:
                chunks = texts.get(path)
                versions = wl.pending[path]
                if not chunks:
                    continue
                for i, version in enumerate(versions):
                    if any(c.startswith(version.marker + " ") for c in chunks):
                        for older in versions[: i + 1]:  # this one, and the ones it replaced
                            older.seen = now
                            self.done.append(older)
                        del versions[: i + 1]
                        break

    def outstanding(self) -> int:
        with self.workload.lock:
            return sum(len(v) for v in self.workload.pending.values())


@dataclass
class Phase:
    rate: float
    p50: float
    p99: float
    changes: int
    unseen: int
    cpu_s: float
    wall_s: float

    def __str__(self) -> str:
        return (
            f"p50 {self.p50 * 1e3:.0f} ms, p99 {self.p99 * 1e3:.0f} ms, {self.changes} changes, "
            f"{self.unseen} unseen, {self.cpu_s / self.wall_s:.2f} cores busy"
        )

    @property
    def passed(self) -> bool:
        """p99 freshness within 2 s (a change never seen counts as SETTLE_S in it)."""
        return self.p99 <= PASS_P99_S


def run_rate(store: Store, workload: Workload, rate: float, seconds: float) -> Phase:
    """Write ``rate`` changed documents a second for ``seconds``; the freshness figures."""
    prober = Prober(store, workload)
    prober.thread.start()
    n = int(rate * seconds)
    cpu = busy_cpu_s()
    start = time.monotonic()
    for i in range(n):
        due = start + i / rate
        delay = due - time.monotonic()
        if delay > 0:
            prober.stop.wait(delay)  # the open-loop schedule of a load generator
        workload.write(workload.rng.randrange(DOCS))
    deadline = time.monotonic() + SETTLE_S
    while prober.outstanding() and time.monotonic() < deadline and prober.error is None:
        prober.stop.wait(0.05)
    prober.stop.set()
    prober.thread.join()
    if prober.error is not None:
        raise prober.error
    unseen = prober.outstanding()
    with workload.lock:
        workload.pending.clear()
    fresh = sorted(v.seen - v.written for v in prober.done if v.seen is not None)
    fresh += [SETTLE_S] * unseen
    return Phase(
        rate,
        statistics.median(fresh),
        fresh[min(len(fresh) - 1, int(0.99 * len(fresh)))],
        n,
        unseen,
        busy_cpu_s() - cpu,
        time.monotonic() - start,
    )


def measure(
    store: Store, edit: bool, sustain_s: float, ramp_s: float, log: Callable[[str], None]
) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="sage-live-bench-")) / "docs"
    folder.mkdir()
    workload = Workload(folder, vocabulary(), edit)
    for doc in range(DOCS):
        workload.write(doc, track=False)
    started = time.monotonic()
    store.start(folder, paragraphs=edit)
    ready = store.wait_indexed(DOCS, 600)
    log(f"{store.name}: {DOCS} documents indexed {ready:.1f} s after start")
    result: dict[str, Any] = {"initial_s": time.monotonic() - started, "sustained": [], "ramp": []}
    try:
        for rate in SUSTAINED:
            phase = run_rate(store, workload, rate, sustain_s)
            log(f"  {rate}/s: {phase}")
            result["sustained"].append(phase)
        for rate in RAMP:
            phase = run_rate(store, workload, rate, ramp_s)
            log(f"  ramp {rate}/s: {phase}")
            result["ramp"].append(phase)
            if not phase.passed:
                break
    finally:
        store.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases (a smoke run)")
    parser.add_argument("--only", choices=("sage", "pathway"), default=None)
    parser.add_argument("--workload", choices=WORKLOADS, default=None)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    sustain_s, ramp_s = (5.0, 4.0) if args.quick else (20.0, 10.0)
    makers: list[Callable[[], Store]] = []
    if args.only in (None, "sage"):
        makers.append(SageStore)
        makers.append(lambda: SageStore("bfloat16"))
    if args.only in (None, "pathway"):
        makers.append(PathwayStore)
        makers.append(lambda: PathwayStore("bfloat16"))
    results: list[tuple[str, str, dict[str, Any]]] = []
    for workload in [args.workload] if args.workload else WORKLOADS:
        for make in makers:
            store = make()
            print(f"== {workload}: {store.name}", flush=True)
            res = measure(store, workload == "edit", sustain_s, ramp_s, print)
            results.append((workload, store.name, res))

    def ms(seconds: float) -> str:
        return f"{seconds * 1e3:,.0f} ms"

    def sustainable(res: dict[str, Any]) -> tuple[float, str]:
        passed = [p.rate for p in res["ramp"] if p.passed]
        failed = [p.rate for p in res["ramp"] if not p.passed]
        best = max(passed) if passed else 0.0
        note = f"passed 2 s at {failed[0]:.0f}/s" if failed else f"not passed up to {RAMP[-1]}/s"
        return best, note

    lines = [
        f"A folder of {DOCS} documents of {WORDS} words (~200 MiniLM tokens), changed at a "
        "steady rate; freshness = the changed file written → a retrieval returns that version "
        "(p99 over every change of the phase; a change never seen within "
        f"{SETTLE_S:.0f} s counts as {SETTLE_S:.0f} s). Same embedding weights "
        "(all-MiniLM-L6-v2), in float32 and in bfloat16 (this CPU has AVX512-BF16; vectors "
        "within cosine 0.99998 of float32's). **rewrite**: each change is a new text, one "
        "chunk per document (every token embedded again). **edit**: documents of 4 "
        "paragraphs, a chunk each; a change rewrites the first paragraph and one other, and "
        "both systems re-embed only the changed chunks (SAGE: `EmbedDocuments`' chunk cache; "
        "Pathway: a paragraph splitter and its `DiskCache` on the embedder, batch 1). SAGE "
        "runs in the harness's process (ONNX Runtime in float32, PyTorch autocast in "
        "bfloat16); Pathway in its own (1 worker, 2 torch threads, 50 ms autocommit; its "
        "folder scan every 500 ms is fixed in its engine). A prober asks each system for "
        "every pending document in one filtered retrieval per round, a query embedded each "
        f"time. Sustained phases {sustain_s:.0f} s, ramp phases {ramp_s:.0f} s "
        f"({', '.join(str(r) for r in RAMP)}/s until p99 passes 2 s).",
        "",
        "| workload | system | 20 docs/s p50 / p99 | 50 docs/s p50 / p99 | sustainable rate "
        "(p99 ≤ 2 s) | machine busy at 50/s | target |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    errors: list[str] = []
    for workload, name, res in results:
        low, high = res["sustained"]
        best, note = sustainable(res)
        target = "p99 ≤ 1 s at 50/s; rate > Pathway" if name.startswith("SAGE") else ""
        lines.append(
            f"| {workload} | {name} | {ms(low.p50)} / {ms(low.p99)} | {ms(high.p50)} / "
            f"{ms(high.p99)} | {best:.0f}/s ({note}) | {high.cpu_s / high.wall_s:.2f} cores | "
            f"{target} |"
        )
    report_checked("live_rag", "Live RAG freshness", lines, errors, args.write_readme)


if __name__ == "__main__":
    main()
