"""Propagation: what a job's priority and SLO, carried to the gateway, buy an interactive job.

Two SAGE jobs run at once in this process and share one gateway (its own process, policy
``priority``) in front of the real CPU engines (SmolLM2 on llama.cpp and MiniLM, a process
each, as ``sage llm serve`` runs them). The LLM instance takes ``--max-concurrent`` requests
at once (2), so the rest wait in the gateway's queue, where the policy orders them:

* **interactive RAG**: a question arrives every ``--interval`` seconds (open loop: the same
  arrivals in both cases), and an operator embeds it, searches a small VDB service and asks
  for a short answer (``max_tokens`` 16), all through ``call_service``. Job config:
  ``priority`` 0, ``slo_ms`` 2000.
* **batch summarisation**: ``--batch-parallelism`` operator instances summarise long-ish
  documents (``max_tokens`` 64) back to back, enough to keep the engine saturated and the
  gateway's queue full. Job config: ``priority`` 5, ``slo_ms`` 60000.

Case A (*propagation*): the job configs above; every call carries the job's fields as the
``x-sage-priority`` / ``x-sage-slo-ms`` headers. Case B (*none*): the same jobs without
scheduling fields: the gateway gives every request its default priority (ties in arrival
order, so FIFO). The cases alternate (A B, then B A, ...) over the rounds after a warm-up
round; each round is a fresh pair of jobs on the same engines and gateway.

The policy is ``priority`` rather than ``slo_aware``: it orders strictly by the field the
jobs carry (ties by arrival, aging one level per 10 s), so the comparison isolates what
propagation delivers; ``slo_aware`` orders by slack against latency it predicts from what
it has measured so far, which moves with the load and would add its own noise. Both fields
are sent either way.

Measured per round: the p95 latency of the interactive job's LLM calls (the calls that
compete with the batch job: its embedding calls go to an instance nobody else loads, shown
beside), and the batch job's summaries per second over a fixed window: from the first
question's arrival to ``--tail`` seconds after the last one, the same length in both cases
and long enough to hold every answer (priority moves the interactive work earlier; a window
ending at the last answer would charge it to case A alone). Ratios A/B are paired per round;
medians over rounds. Targets: interactive LLM-call p95 A/B <= 0.5x; batch throughput A/B
within 10%.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _common import cpu_ticks, report
from sage.common.core.functions.map_function import MapFunction
from sage.common.core.functions.source_function import SourceFunction, StopSignal
from sage.inference.client.unified import UnifiedInferenceClient
from sage.inference.deploy.processes import spawn_engine, spawn_gateway, terminate
from sage.kernel.api.local_environment import LocalEnvironment
from sage.middleware.services.llm import LLMService
from sage.middleware.services.vdb import VDBService

INTERACTIVE = {"priority": 0, "slo_ms": 2000}
BATCH = {"priority": 5, "slo_ms": 60_000}
POLICY = "priority"
ANSWER_TOKENS, SUMMARY_TOKENS = 16, 64
# Instances of the RAG operator: enough that a question never waits for a free one, even
# when answers take seconds (open loop: the waits measured are the gateway's alone).
ANSWERERS = 16
TOPICS = [
    "hash tables",
    "the water cycle",
    "photosynthesis",
    "TCP congestion control",
    "garbage collection",
    "plate tectonics",
    "vaccines",
    "compilers",
]


def passage(i: int, facts: int) -> str:
    """A deterministic text about one topic, ``facts`` sentences long."""
    topic = TOPICS[i % len(TOPICS)]
    return f"Note {i} on {topic}. " + " ".join(
        f"Fact {j} about {topic}: it matters in case {i * 7 + j}, as experts on {topic} "
        f"have noted since year {1900 + (i * 13 + j) % 120}."
        for j in range(facts)
    )


# -- the two jobs ---------------------------------------------------------------------------------


class Questions(SourceFunction):
    """One question every ``interval`` s from ``start`` (an arrival schedule: the load is
    the same whatever the answers take), ``count`` in all."""

    def __init__(self, count: int, interval: float, start: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.count, self.interval, self.start = count, interval, start
        self.sent = 0
        # An arrival schedule (the load generator), not a delay on the record path: this
        # event is never set, its wait returns when the next arrival is due.
        self._clock = threading.Event()

    def execute(self) -> Any:
        if self.sent == self.count:
            return StopSignal("all questions asked")
        due = self.start + self.sent * self.interval
        self._clock.wait(max(0.0, due - time.perf_counter()))
        self.sent += 1
        topic = TOPICS[self.sent % len(TOPICS)]
        return f"What is known about {topic}? (question {self.sent})"


class Answer(MapFunction):
    """Embed the question, search the VDB, ask for a short answer; the time of each call."""

    def execute(self, question: str) -> dict[str, float]:
        llm = self.call_service["llm"]
        start = time.perf_counter()
        vector = llm.embed(question)
        embedded = time.perf_counter()
        hits = self.call_service["vdb"].search(vector, top_k=2)
        context = " ".join(hit["metadata"]["text"][:300] for hit in hits)
        asked = time.perf_counter()
        llm.chat(
            [
                {"role": "system", "content": f"Answer briefly from this context: {context}"},
                {"role": "user", "content": question},
            ],
            max_tokens=ANSWER_TOKENS,
            temperature=0,
        )
        done = time.perf_counter()
        return {"embed_s": embedded - start, "chat_s": done - asked, "start": start, "end": done}


class Documents(SourceFunction):
    """Documents to summarise, round after round, until ``stop`` is set."""

    def __init__(self, stop: threading.Event, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stop, self.next = stop, 0

    def execute(self) -> Any:
        if self.stop.is_set():
            return StopSignal("window over")
        self.next += 1
        return passage(self.next, facts=6)


class Summarise(MapFunction):
    """One summary per document; returns when it was done."""

    def __init__(self, first: threading.Event, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.first = first

    def execute(self, document: str) -> float:
        self.call_service["llm"].chat(
            f"Summarise in one sentence:\n\n{document}", max_tokens=SUMMARY_TOKENS, temperature=0
        )
        self.first.set()  # the engine is busy: the interactive job may start
        return time.perf_counter()


def vdb_of(vectors: list[list[float]], texts: list[str]) -> VDBService:
    """The RAG job's VDB, holding the corpus."""
    vdb = VDBService(dim=len(vectors[0]))
    vdb.add(vectors, metadata=[{"text": t} for t in texts])
    return vdb


# -- one run -------------------------------------------------------------------------------------


@dataclass
class Run:
    """What one run of one case measured."""

    chat_s: list[float]
    embed_s: list[float]
    summaries_per_s: float
    steal: float
    late: int  # answers after the window's end (the window was too short for them)

    @property
    def chat_p95(self) -> float:
        return p95(self.chat_s)

    @property
    def embed_p95(self) -> float:
        return p95(self.embed_s)


@dataclass
class Case:
    name: str
    propagate: bool
    runs: list[Run] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return float(statistics.median(getattr(run, attribute) for run in self.runs))

    def ratio(self, base: Case, attribute: str) -> tuple[float, float, float]:
        """Median (min, max) over rounds of this case's figure over ``base``'s."""
        ratios = sorted(
            getattr(a, attribute) / getattr(b, attribute)
            for a, b in zip(self.runs, base.runs, strict=True)
        )
        return statistics.median(ratios), ratios[0], ratios[-1]


def p95(values: list[float]) -> float:
    """The 95th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


@dataclass(frozen=True)
class Setup:
    url: str
    vectors: list[list[float]]
    texts: list[str]
    questions: int
    interval: float
    batch_parallelism: int
    tail_s: float


def one_run(setup: Setup, propagate: bool) -> Run:
    """The two jobs at once: batch first, the interactive job once the engine is busy."""
    fields: tuple[dict[str, Any], dict[str, Any]] = (INTERACTIVE, BATCH) if propagate else ({}, {})
    llm_options: dict[str, Any] = {"control_plane_url": setup.url, "env_file": None}
    stop, busy = threading.Event(), threading.Event()
    batch = LocalEnvironment(
        "summaries", config={**fields[1], "batch_size": 1, "channel_capacity": 1}
    )
    batch.register_service("llm", LLMService, **llm_options)
    done = (
        batch.from_source(Documents, stop)
        .map(Summarise, busy, parallelism=setup.batch_parallelism)
        .collect()
    )
    stolen, total = cpu_ticks()
    batch.submit(autostop=False)
    try:
        if not busy.wait(600):
            raise RuntimeError("the batch job finished no summary in 600 s")
        rag = LocalEnvironment("rag", config={**fields[0], "batch_size": 1})
        rag.register_service("llm", LLMService, **llm_options)
        rag.register_service("vdb", lambda: vdb_of(setup.vectors, setup.texts))
        start = time.perf_counter() + 0.05
        answers = (
            rag.from_source(Questions, setup.questions, setup.interval, start)
            .map(Answer, parallelism=ANSWERERS)
            .collect()
        )
        rag.submit()
        end = start + (setup.questions - 1) * setup.interval + setup.tail_s
        # the batch job runs to the window's end (a measurement window, not a delay)
        threading.Event().wait(max(0.0, end - time.perf_counter()))
    finally:
        stop.set()  # on an error too: the engines stop next, failing the calls in flight
    batch.wait()  # the summaries in flight (one per operator instance at most)
    stolen2, total2 = cpu_ticks()
    finished = sum(1 for t in done if start <= t <= end)
    return Run(
        chat_s=[a["chat_s"] for a in answers],
        embed_s=[a["embed_s"] for a in answers],
        summaries_per_s=finished / (end - start),
        steal=(stolen2 - stolen) / max(total2 - total, 1),
        late=sum(1 for a in answers if a["end"] > end),
    )


# -- engines and gateway -------------------------------------------------------------------------


@contextmanager
def serving(logs: Path, max_concurrent: int) -> Iterator[str]:
    """The CPU engines and a gateway over them, each its own process; the gateway's URL."""
    pids: list[int] = []
    try:
        llm_pid, llm_port, llm = spawn_engine(
            "llm",
            "smollm2",
            "cpu",
            logs / "llm.log",
            timeout_s=600,
            extra=["--max-batch", str(max_concurrent)],
        )
        pids.append(llm_pid)
        emb_pid, emb_port, emb = spawn_engine(
            "embedding", "all-minilm-l6-v2", "cpu", logs / "embedding.log", timeout_s=600
        )
        pids.append(emb_pid)

        def backend(port: int, model: str, kind: str, slots: int) -> dict[str, Any]:
            return {
                "host": "127.0.0.1",
                "port": port,
                "model_name": model,
                "instance_type": kind,
                "max_concurrent_requests": slots,
            }

        gateway = {
            "host": "127.0.0.1",
            "port": 0,
            "scheduling_policy": POLICY,
            "llm_backends": [backend(llm_port, llm, "llm", max_concurrent)],
            "embedding_backends": [backend(emb_port, emb, "embedding", 8)],
        }
        gateway_pid, gateway_port = spawn_gateway(
            gateway, logs / "gateway.json", logs / "gateway.log"
        )
        pids.append(gateway_pid)
        yield f"http://127.0.0.1:{gateway_port}/v1"
    finally:
        for pid in reversed(pids):
            terminate(pid)


# -- the report ----------------------------------------------------------------------------------


def table(cases: tuple[Case, Case], setup: Setup, args: argparse.Namespace) -> list[str]:
    a, b = cases
    chat, chat_low, chat_high = a.ratio(b, "chat_p95")
    rate, rate_low, rate_high = a.ratio(b, "summaries_per_s")
    chat_ok = "ok" if chat <= 0.5 else "MISSED"
    rate_ok = "ok" if abs(rate - 1) <= 0.10 else "MISSED"
    lines = [
        f"SmolLM2-135M (llama.cpp) and MiniLM engines behind one gateway (policy `{POLICY}`; "
        f"the LLM instance takes {args.max_concurrent} requests at once, the rest queue in the "
        f"gateway). Interactive RAG job: {setup.questions} questions, one every "
        f"{setup.interval:g} s (open loop), each an embedding call, a VDB search and a chat "
        f"call (max_tokens {ANSWER_TOKENS}), on {ANSWERERS} operator instances; config "
        f"{INTERACTIVE}. Batch job: "
        f"{setup.batch_parallelism} operator instances summarising ~200-token documents "
        f"(max_tokens {SUMMARY_TOKENS}) back to back; config {BATCH}. *Propagation*: the "
        "configs as given, every call carries them as headers; *none*: no scheduling fields. "
        f"Batch throughput over the arrivals plus {setup.tail_s:g} s in both cases. "
        f"{args.rounds} interleaved rounds after a warm-up; figures are medians over rounds, "
        "ratios paired per round, median (min-max).",
        "",
        "| case | interactive LLM call p95 | interactive embedding p95 | batch summaries/s "
        "| host steal |",
        "|---|---:|---:|---:|---:|",
    ]
    for case in cases:
        steal = statistics.median(run.steal for run in case.runs) * 100
        lines.append(
            f"| {case.name} | {case.median('chat_p95'):.2f} s | "
            f"{case.median('embed_p95') * 1000:.0f} ms | {case.median('summaries_per_s'):.2f} "
            f"| {steal:.0f}% |"
        )
    lines += [
        "",
        f"- Interactive LLM-call p95, propagation / none: **{chat:.2f}x** "
        f"({chat_low:.2f}-{chat_high:.2f}); target <= 0.5x ({chat_ok}).",
        f"- Batch throughput, propagation / none: **{rate:.2f}x** ({rate_low:.2f}-"
        f"{rate_high:.2f}); target within 10% ({rate_ok}).",
    ]
    late = sum(run.late for case in cases for run in case.runs)
    if late:
        lines.append(
            f"- {late} interactive answers came after the throughput window: raise --tail."
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--questions", type=int, default=25, help="per run")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between questions")
    parser.add_argument("--batch-parallelism", type=int, default=8)
    parser.add_argument("--max-concurrent", type=int, default=2, help="the LLM instance's")
    parser.add_argument(
        "--tail", type=float, default=10.0, help="seconds of the window after the last arrival"
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 10 questions")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.questions = 1, 10
    logs = Path(tempfile.mkdtemp(prefix="sage-bench-propagation-"))
    started = time.perf_counter()
    with serving(logs, args.max_concurrent) as url:
        texts = [passage(i, facts=3) for i in range(64)]
        with UnifiedInferenceClient.create(control_plane_url=url, env_file=None) as client:
            vectors = client.embed(texts)
        setup = Setup(
            url, vectors, texts, args.questions, args.interval, args.batch_parallelism, args.tail
        )
        cases = (Case("propagation", True), Case("none", False))
        warm = Setup(url, vectors, texts, 4, args.interval, args.batch_parallelism, 0.0)
        for case in cases:
            one_run(warm, case.propagate)  # loads, connections, the gateway's estimates
        for i in range(args.rounds):
            for case in cases if i % 2 == 0 else reversed(cases):
                run = one_run(setup, case.propagate)
                case.runs.append(run)
                print(
                    f"[round {i + 1} {case.name}: chat p95 {run.chat_p95:.2f} s, "
                    f"{run.summaries_per_s:.2f} summaries/s, {run.late} late answers]",
                    file=sys.stderr,
                )
    print(f"[{time.perf_counter() - started:.0f} s; logs in {logs}]", file=sys.stderr)
    title = "Pipeline → gateway propagation"
    report("propagation", title, table(cases, setup, args), args.write_readme and not args.quick)


if __name__ == "__main__":
    main()
