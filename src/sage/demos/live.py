"""``sage demo live``: a RAG job over a folder that keeps changing, offline.

One job, two streams that share the services:

1. **index**: a :class:`~sage.kernel.connectors.FolderSource` follows the folder; each added,
   changed or deleted file is chunked, embedded (all-MiniLM-L6-v2) and upserted into (or
   deleted from) the vector DB, keyed by file: the index always holds the current files;
2. **answer**: questions (from the terminal, or POSTed to the job's HTTP ingest source)
   are embedded, the closest chunks retrieved and SmolLM2-135M-Instruct answers from them,
   citing the files.

Without a terminal (``make``, CI) or with ``--script``, the demo drives itself: it asks about
the warranty, edits the warranty file, asks again (the answer now cites the new text),
deletes the file and asks once more; the terminal shows each change reaching the index and
how long it took.
"""

from __future__ import annotations

import os
import queue
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from sage.common.core.functions.map_function import MapFunction
from sage.common.core.functions.sink_function import SinkFunction
from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.connectors import ConnectorSource, HttpIngestSource
from sage.middleware.live_index import Freshness, follow_folder
from sage.middleware.services.llm import LLMService
from sage.middleware.services.vdb import VDBService

__all__ = ["SEED", "LiveAnswer", "run_live_demo"]

SEED: dict[str, str] = {
    "aurora/overview.md": (
        "The Aurora is a compact espresso machine for home kitchens. It heats up in 30 "
        "seconds, has a 1.2 litre water tank and a steam wand for milk."
    ),
    "aurora/warranty.md": (
        "Warranty: the Aurora espresso machine is covered by a two-year warranty from the "
        "date of purchase. Keep your receipt."
    ),
    "aurora/cleaning.md": (
        "Cleaning: descale the Aurora every two months with citric acid, and rinse the "
        "steam wand after each use."
    ),
}
QUESTION = "How long is the warranty of the Aurora espresso machine?"
NEW_WARRANTY = (
    "Warranty: from 2027 the Aurora espresso machine is covered by a five-year warranty "
    "from the date of purchase. Keep your receipt."
)
SYSTEM = "Answer the question in one sentence using only the excerpts given."


@dataclass
class LiveAnswer:
    """One question's answer and the files it came from."""

    question: str
    sources: list[tuple[str, float, str]] = field(default_factory=list)  # path, score, text
    text: str = ""
    seconds: float = 0.0


class Questions(ConnectorSource):
    """Questions put on an in-process queue (``None`` ends the stream)."""

    def __init__(self, inbox: queue.Queue[str | None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.inbox = inbox
        self.count = 0
        self.ended = False

    def connect(self, position: Any) -> None:
        self.count = position or 0

    def poll(self, timeout: float) -> list[str]:
        try:
            question = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return []
        if question is None:
            self.ended = True
            return []
        self.count += 1
        return [question]

    def position(self) -> int:
        return self.count

    def finished(self) -> bool:
        return self.ended


class Retrieve(MapFunction):
    """Embeds the question and finds the closest chunks of the current files."""

    def __init__(self, top_k: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.top_k = top_k

    def execute(self, question: Any) -> LiveAnswer:
        if isinstance(question, dict):  # POSTed as {"question": "..."}
            question = question.get("question", "")
        answer = LiveAnswer(str(question))
        vector = self.call_service["llm_service"].embed(answer.question)
        hits = self.call_service["vdb_service"].search(vector, top_k=self.top_k)
        answer.sources = [
            (h["metadata"]["path"], round(h["score"], 3), h["metadata"]["text"]) for h in hits
        ]
        return answer


class Generate(MapFunction):
    """SmolLM2 answers from the retrieved excerpts."""

    def __init__(self, max_tokens: int = 48, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_tokens = max_tokens

    def execute(self, answer: LiveAnswer) -> LiveAnswer:
        excerpts = "\n".join(f"[{path}] {text}" for path, _, text in answer.sources)
        started = time.perf_counter()
        answer.text = self.call_service["llm_service"].chat(
            [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"{excerpts}\n\nQuestion: {answer.question}"},
            ],
            max_tokens=self.max_tokens,
            temperature=0.0,
            stop=["\n\n"],
        )
        answer.text = answer.text.strip()
        answer.seconds = time.perf_counter() - started
        return answer


class Show(SinkFunction):
    """Prints each answer with its sources and hands it to the driver."""

    def __init__(self, console: Console, outbox: queue.Queue[LiveAnswer], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.console, self.outbox = console, outbox

    def execute(self, answer: LiveAnswer) -> None:
        sources = "; ".join(f"{path} ({score:.2f}): {text}" for path, score, text in answer.sources)
        self.console.print(
            f"\n[bold]Q: {answer.question}[/bold]\nA: {answer.text}\n"
            f"[dim]sources: {sources or '-'}  ({answer.seconds:.1f} s)[/dim]",
            highlight=False,
        )
        self.outbox.put(answer)


def _report(console: Console, freshness: Freshness, stop: threading.Event) -> None:
    """Print each change as it reaches the index, with how long it took."""
    seen = 0

    def news() -> bool:
        return freshness.applied + freshness.stale > seen or stop.is_set()

    while not stop.is_set():
        freshness.wait_for(news, 1.0)  # the timeout only bounds how late a stop is seen
        if freshness.applied + freshness.stale == seen:
            continue
        seen = freshness.applied + freshness.stale
        if freshness.last is not None:
            doc, deleted, seconds = freshness.last
            p50, p99 = freshness.quantile(0.5) or 0.0, freshness.quantile(0.99) or 0.0
            console.print(
                f"[cyan]index[/cyan] {'removed' if deleted else 'updated'} {doc} "
                f"{seconds * 1000:.0f} ms after the change was read "
                f"[dim]({freshness.applied} updates applied; freshness p50 {p50 * 1000:.0f} ms, "
                f"p99 {p99 * 1000:.0f} ms)[/dim]",
                highlight=False,
            )


def run_live_demo(
    console: Console,
    *,
    folder: Path | None = None,
    script: bool | None = None,
    http_port: int | None = None,
    max_tokens: int = 48,
    llm: LLMService | None = None,
    timeout_s: float = 120.0,
) -> list[LiveAnswer]:
    """Run the demo; return the answers given.

    Args:
        folder: The folder to follow (default: a new one, seeded with three files).
        script: Drive the demo itself (default: when stdin is not a terminal).
        http_port: Also take questions POSTed to ``http://127.0.0.1:<port>/v1/ingest``.
        llm: The LLM service to use (default: a new one: a local server if one runs,
            else the models in this process).
        timeout_s: Longest the scripted demo waits for any one step.
    """
    script = (not sys.stdin.isatty()) if script is None else script
    console.rule("[bold]SAGE demo: live RAG over a folder that keeps changing")
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="sage-live-"))
        for name, text in SEED.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text, encoding="utf-8")
    llm = llm or LLMService()
    with console.status("loading the models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2)..."):
        llm.setup()
        dim = len(llm.embed("warm up"))
        llm.chat("Hi", max_tokens=1)
    vdb = VDBService(dim=dim)
    freshness = Freshness()
    inbox: queue.Queue[str | None] = queue.Queue()
    outbox: queue.Queue[LiveAnswer] = queue.Queue()
    env = LocalEnvironment("live_rag")
    env.register_service("llm_service", lambda: llm)
    env.register_service("vdb_service", lambda: vdb)
    follow_folder(env, folder, freshness=freshness)
    questions = env.from_source(Questions, inbox, name="questions")
    if http_port is not None:
        posted = env.from_source(HttpIngestSource, http_port, name="posted-questions")
        questions = questions.connect(posted).map(lambda q: q, name="questions-in")
    questions.map(Retrieve, name="retrieve").map(Generate, max_tokens, name="generate").sink(
        Show, console, outbox, name="answers"
    )
    stop = threading.Event()
    reporter = threading.Thread(target=_report, args=(console, freshness, stop), daemon=True)
    env.submit(autostop=False)
    reporter.start()
    console.print(
        f"following [bold]{folder}[/bold]: add, edit or delete files there", highlight=False
    )
    answers: list[LiveAnswer] = []
    try:
        if script:
            answers = _scripted(folder, vdb, freshness, inbox, outbox, console, timeout_s)
        else:
            console.print("ask questions (one per line; Ctrl-D to end)")
            for line in sys.stdin:
                if line.strip():
                    inbox.put(line.strip())
                    answers.append(outbox.get(timeout=timeout_s))
    finally:
        inbox.put(None)
        stop.set()
        env.stop(timeout_s)
        reporter.join(5.0)
    console.print(
        f"{freshness.applied} updates applied; freshness p50 "
        f"{(freshness.quantile(0.5) or 0) * 1000:.0f} ms, p99 "
        f"{(freshness.quantile(0.99) or 0) * 1000:.0f} ms",
        highlight=False,
    )
    return answers


def _scripted(
    folder: Path,
    vdb: VDBService,
    freshness: Freshness,
    inbox: queue.Queue[str | None],
    outbox: queue.Queue[LiveAnswer],
    console: Console,
    timeout_s: float,
) -> list[LiveAnswer]:
    """Ask, change the warranty file, ask again, delete it, ask once more."""
    warranty = folder / "aurora" / "warranty.md"

    def indexed(doc: str, present: bool, marker: str = "") -> None:
        def done() -> bool:
            found = vdb.document(doc)
            if not present:
                return found is None
            chunks = (found or {}).get("chunks") or []
            return bool(chunks) and marker in vdb.get(chunks[0])["metadata"]["text"]

        if not freshness.wait_for(done, timeout_s):
            raise TimeoutError(f"{doc} did not reach the index in {timeout_s:g} s")

    def ask() -> LiveAnswer:
        inbox.put(QUESTION)
        return outbox.get(timeout=timeout_s)

    doc = "aurora/warranty.md"
    indexed(doc, True, "two-year")
    answers = [ask()]
    console.print(f"\n[bold]editing[/bold] {warranty.name}: two-year → five-year", highlight=False)
    tmp = folder.parent / f".{os.getpid()}-warranty.tmp"
    tmp.write_text(NEW_WARRANTY, encoding="utf-8")
    os.replace(tmp, warranty)
    indexed(doc, True, "five-year")
    answers.append(ask())
    console.print(f"\n[bold]deleting[/bold] {warranty.name}", highlight=False)
    warranty.unlink()
    indexed(doc, False)
    answers.append(ask())
    return answers
