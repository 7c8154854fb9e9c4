"""Word count over the Python language reference that ships with CPython.

``pydoc_data.topics`` holds the text of the reference manual's topics (the source of
``help("if")``): real prose and code nobody here wrote. The pipeline splits each topic into
passages, tokenises them in parallel, keys by word and counts with per-key state in parallel
instances; a sink keeps the latest count per word. The result is checked against a plain
``collections.Counter`` over the same tokens.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table

from sage.common.core.functions.flatmap_function import FlatMapFunction
from sage.common.core.functions.map_function import MapFunction
from sage.common.core.functions.sink_function import SinkFunction
from sage.kernel.api.local_environment import LocalEnvironment

__all__ = [
    "CountWords",
    "LatestCounts",
    "SplitPassages",
    "Tokenize",
    "build_wordcount",
    "load_topics",
    "run_wordcount_demo",
]

_WORD = re.compile(r"[A-Za-z][A-Za-z_]{2,}")
STOPWORDS = frozenset(
    [
        "the",
        "and",
        "for",
        "that",
        "this",
        "with",
        "are",
        "not",
        "can",
        "its",
        "from",
        "which",
        "all",
        "any",
        "but",
        "has",
        "have",
        "was",
        "were",
        "will",
        "when",
        "then",
        "than",
        "into",
        "also",
        "such",
        "may",
        "must",
        "only",
        "other",
        "these",
        "those",
        "there",
        "their",
        "they",
        "them",
        "use",
        "used",
        "see",
        "each",
        "more",
        "most",
        "one",
        "two",
        "where",
        "what",
        "how",
        "been",
        "being",
        "does",
        "did",
        "should",
        "would",
        "could",
        "same",
        "some",
    ]
)


def load_topics() -> list[tuple[str, str]]:
    """``(topic, text)`` pairs of CPython's bundled language reference."""
    from pydoc_data.topics import topics

    return sorted(topics.items())


class SplitPassages(FlatMapFunction):
    """A topic's text -> its passages (blocks separated by blank lines)."""

    def execute(self, item: tuple[str, str]) -> list[str]:
        _, text = item
        return [p for p in (block.strip() for block in text.split("\n\n")) if p]


def tokens(passage: str) -> list[str]:
    """Lower-cased words of three letters or more, minus common stop words."""
    return [w for w in (m.lower() for m in _WORD.findall(passage)) if w not in STOPWORDS]


class Tokenize(FlatMapFunction):
    """A passage -> its words."""

    def execute(self, passage: str) -> list[str]:
        return tokens(passage)


class CountWords(MapFunction):
    """Keyed by word: emits ``(word, running count)`` using per-key state."""

    def execute(self, word: str) -> tuple[str, int]:
        count = self.state.get(0) + 1
        self.state.set(count)
        return word, count


class LatestCounts(SinkFunction):
    """Keeps the highest running count seen per word (its final count at end of stream)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.counts: dict[str, int] = {}

    def execute(self, item: tuple[str, int]) -> None:
        word, count = item
        if count > self.counts.get(word, 0):
            self.counts[word] = count


def build_wordcount(
    env: LocalEnvironment,
    topics: Iterable[tuple[str, str]],
    sink: LatestCounts,
    parallelism: int = 4,
) -> None:
    """Add the word-count pipeline over ``topics`` to ``env``, ending in ``sink``."""
    (
        env.from_collection(list(topics), name="python-reference")
        .flatmap(SplitPassages, parallelism=2)
        .flatmap(Tokenize, parallelism=2)
        .keyby(lambda word: word, name="word")
        .map(CountWords, parallelism=parallelism)
        .sink(sink, name="latest-counts")
    )


def run_wordcount_demo(console: Console, *, parallelism: int = 4, top: int = 15) -> dict[str, int]:
    """Run the demo, print the plan, the top words and the metrics; return the counts."""
    from sage.cli.render import operator_table, task_table

    topics = load_topics()
    env = LocalEnvironment("wordcount")
    sink = LatestCounts()
    build_wordcount(env, topics, sink, parallelism=parallelism)
    console.rule("[bold]SAGE demo: word count over the Python language reference")
    console.print(f"{len(topics)} topics from pydoc_data.topics (CPython's bundled docs)\n")
    console.print(env.plan().explain(), highlight=False)
    job = env.submit()
    metrics = job.metrics()

    expected = Counter(
        w for _, text in topics for p in SplitPassages().execute(("", text)) for w in tokens(p)
    )
    words = Table(title=f"Top {top} words")
    words.add_column("rank", justify="right")
    words.add_column("word")
    words.add_column("count", justify="right")
    ranked = sorted(sink.counts.items(), key=lambda kv: (-kv[1], kv[0]))
    for rank, (word, count) in enumerate(ranked[:top], start=1):
        words.add_row(str(rank), word, f"{count:,}")
    console.print()
    console.print(words)
    console.print(operator_table(metrics))
    console.print(task_table(metrics))
    total = sum(sink.counts.values())
    verdict = (
        "[green]identical to a plain-Python Counter[/green]"
        if sink.counts == dict(expected)
        else "[red]DIFFERENT from a plain-Python Counter[/red]"
    )
    console.print(
        f"{total:,} words, {len(sink.counts):,} distinct, in {metrics.elapsed_s:.2f} s; "
        f"counts {verdict}"
    )
    return sink.counts
