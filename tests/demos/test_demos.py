"""The demos behind ``make demo``: they run and their results are right."""

from __future__ import annotations

from collections import Counter

import pytest
from rich.console import Console

from sage.demos.rag import QUESTIONS, chunk_topics, run_rag_demo
from sage.demos.wordcount import SplitPassages, load_topics, run_wordcount_demo, tokens
from sage.inference.client.unified import UnifiedInferenceClient


def test_wordcount_demo_counts_like_a_counter() -> None:
    console = Console(record=True, width=120)
    counts = run_wordcount_demo(console, parallelism=3, top=5)
    expected = Counter(
        w
        for _, text in load_topics()
        for p in SplitPassages().execute(("", text))
        for w in tokens(p)
    )
    assert counts == dict(expected)
    assert "identical to a plain-Python Counter" in console.export_text()


def test_chunks_drop_heading_underlines_and_keep_every_word() -> None:
    text = 'The "assert" statement\n**********************\n\nAssert statements are   handy.\n'
    (chunk,) = chunk_topics([("assert", text)], target_chars=1000)
    assert chunk == {
        "topic": "assert",
        "text": 'The "assert" statement Assert statements are handy.',
    }
    many = chunk_topics([("t", "\n\n".join(["word " * 30] * 10))], target_chars=300)
    # 149-character paragraphs: three reach 300 characters, so 3 + 3 + 3 + 1
    assert [len(c["text"].split()) for c in many] == [90, 90, 90, 30]


@pytest.mark.slow
def test_rag_demo_answers_with_sources_and_remembers() -> None:
    questions = [q for q in QUESTIONS if q[1] in ("with", "lambda", "import")]
    console = Console(record=True, width=120)
    try:
        answers = run_rag_demo(
            console,
            questions=questions,
            max_tokens=24,
            topic_names=["with", "lambda", "import", "try", "yield", "assert"],
        )
    finally:
        UnifiedInferenceClient.shutdown_embedded()
    assert sorted(a.question for a in answers) == sorted(q for q, _ in questions)
    for answer in answers:
        assert answer.text and answer.memory_id
        assert answer.expected_topic == answer.sources[0][0]  # the right topic ranks first
    shown = console.export_text()
    assert "retrieval found the expected topic for 3/3 questions" in shown
    assert "3 exchanges stored in memory" in shown


@pytest.mark.slow
def test_live_demo_answers_from_the_current_files_as_they_change() -> None:
    from sage.demos.live import run_live_demo

    console = Console(record=True, width=120)
    try:
        first, edited, deleted = run_live_demo(console, script=True, max_tokens=16)
    finally:
        UnifiedInferenceClient.shutdown_embedded()
    assert first.sources[0][0] == "aurora/warranty.md" and "two-year" in first.sources[0][2]
    assert edited.sources[0][0] == "aurora/warranty.md" and "five-year" in edited.sources[0][2]
    assert "aurora/warranty.md" not in [path for path, _, _ in deleted.sources]
    assert all(answer.text for answer in (first, edited, deleted))
    shown = console.export_text()
    assert "index updated aurora/warranty.md" in shown
    assert "index removed aurora/warranty.md" in shown
    assert "freshness p50" in shown
