"""The service examples: the seed's RAGStep block and the async batching advice."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_rag_step_runs_the_seed_block_with_both_services(
    load_example: Callable[[str], ModuleType],
) -> None:
    result = load_example("rag_step").main(limit=120)
    assert len(result["results"]) == 120
    assert all(len(r["hits"]) >= 1 for r in result["results"])
    # every passage was stored as a memory, in sessions named after its topic
    assert result["memories"] == 120
    assert sum(s["memories"] for s in result["sessions"]) == 120
    services = {s.service: s for s in result["metrics"].services}
    assert services["vdb_service"].calls == 240  # one add + one search per passage
    assert services["memory_service"].errors == 0


def test_rag_step_as_a_program() -> None:
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / "rag_step.py")], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert "400 passages indexed and searched" in run.stdout
    assert "memory service holds 400 memories" in run.stdout


def test_async_batches_return_the_same_hits_with_fewer_calls(
    load_example: Callable[[str], ModuleType],
) -> None:
    result = load_example("async_batch_search").main()
    assert len(result["hits"]) == 2000
    assert result["single_calls"] == 2000 and result["batch_calls"] == 32
