"""Batching LLM requests in an operator: the seed's 《批量请求优化》 block (seed 003), runnable.

The seed's ``BatchLLMOperator`` buffers records and, when ``batch_size`` arrived (or
``timeout`` passed at the next record), sends the batch's prompts one after another with
``client.generate(prompt, max_tokens=256)``. The block uses ``time`` and a module-level
``client`` without defining them; both are defined here above it, ``client`` by
:func:`main` (``UnifiedInferenceClient.create_auto()``: a local server if one runs, otherwise
SmolLM2 in this process).

Two things the program shows, by running it:

* **The last partial batch is lost.** ``execute`` only flushes when a record arrives, and a
  ``MapFunction`` has no end-of-stream hook, so records still in the buffer when the stream
  ends are never answered. With 6 prompts and ``batch_size=4``, 4 are answered.
* **The kernel's ``.batch()`` does it right.** ``stream.batch(size, timeout_s)`` emits a
  list when it is full, when ``timeout_s`` passed since its oldest record (with no new record
  needed), and at end of stream. The map after it sends the batch's prompts *concurrently*
  (``agenerate`` under ``asyncio.gather``), and the engine's dynamic batching runs them in
  one forward pass per token instead of one request after another.

Run it with ``python examples/batch_llm_operator.py``.
"""

from __future__ import annotations

# ruff: noqa: E402, B905, I001  (the seed block is kept as written)

import asyncio
import time
from typing import Any

from sage.common.components.sage_llm import UnifiedInferenceClient
from sage.kernel.api.local_environment import LocalEnvironment

client: Any = None  # what the seed block's _process_batch calls; set by main()

# --- the seed block, verbatim (seed 003: 批量请求优化) ----------------------------------------
# fmt: off
# isort: off
from sage.common.core.functions.map_function import MapFunction


class BatchLLMOperator(MapFunction):
    """批量 LLM 请求算子"""

    def __init__(self, batch_size=8, timeout=5.0, **kwargs):
        super().__init__(**kwargs)
        self.batch_size = batch_size
        self.timeout = timeout
        self.buffer = []
        self.last_flush = time.time()

    def execute(self, data):
        self.buffer.append(data)

        # 触发批处理条件：达到批量大小或超时
        should_flush = (
            len(self.buffer) >= self.batch_size or
            time.time() - self.last_flush > self.timeout
        )

        if should_flush:
            results = self._process_batch(self.buffer)
            self.buffer = []
            self.last_flush = time.time()
            return results

        return None  # 等待更多数据

    def _process_batch(self, batch):
        """批量处理 - 减少 API 调用次数"""
        prompts = [item["prompt"] for item in batch]

        # 使用批量 API（如果支持）
        responses = []
        for prompt in prompts:
            resp = client.generate(prompt, max_tokens=256)
            responses.append(resp)

        return [
            {"prompt": p, "response": r}
            for p, r in zip(prompts, responses)
        ]
# isort: on
# fmt: on
# --- end of the seed block ---------------------------------------------------------------------

QUESTIONS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "What is 3 + 4?",
    "Which planet is closest to the Sun?",
    "What language is spoken in Brazil?",
    "How many legs does a spider have?",
]


def chat_prompt(question: str) -> str:
    """``question`` in SmolLM2's chat format, so a completion answers it."""
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


class GenerateBatch(MapFunction):
    """Answer a list of records with concurrent requests (the engine batches them)."""

    def execute(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        async def answer_all() -> list[str]:
            calls = [client.agenerate(item["prompt"], max_tokens=256) for item in batch]
            return list(await asyncio.gather(*calls))

        responses = asyncio.run(answer_all())
        return [{"prompt": i["prompt"], "response": r} for i, r in zip(batch, responses)]


def run_pipeline(
    name: str, records: list[dict[str, Any]], seed_operator: bool, batch_size: int
) -> list[Any]:
    """Run ``records`` through the seed's operator or the kernel's ``.batch()``; return answers."""
    answers: list[dict[str, Any]] = []
    env = LocalEnvironment(name)
    stream = env.from_collection(records)
    if seed_operator:
        batches = stream.map(BatchLLMOperator, batch_size=batch_size, timeout=5.0)
    else:
        batches = stream.batch(batch_size, timeout_s=5.0).map(GenerateBatch)
    batches.flatmap(lambda results: results).sink(answers.append)
    env.submit()
    return answers


def main(
    questions: list[str] = QUESTIONS, batch_size: int = 4, llm_client: Any = None
) -> dict[str, Any]:
    """Run the seed's operator and the ``.batch()`` pipeline on ``questions``; return both.

    ``llm_client`` replaces ``UnifiedInferenceClient.create_auto()`` (it needs ``generate``,
    ``agenerate`` and ``close``).
    """
    global client
    client = llm_client or UnifiedInferenceClient.create_auto()
    records = [{"prompt": chat_prompt(q)} for q in questions]
    results: dict[str, Any] = {}
    for name, seed_operator in (("seed_batch_operator", True), ("kernel_batch", False)):
        start = time.perf_counter()
        answers = run_pipeline(name, records, seed_operator, batch_size)
        seconds = time.perf_counter() - start
        results[name] = {"answers": answers, "seconds": seconds}
        print(f"{name}: {len(answers)} of {len(records)} prompts answered in {seconds:.1f} s")
        for answer in answers:
            question = answer["prompt"].split("\n")[1].removesuffix("<|im_end|>")
            print(f"  {question} -> {answer['response'].strip()[:60]!r}")
    client.close()
    return results


if __name__ == "__main__":
    main()
