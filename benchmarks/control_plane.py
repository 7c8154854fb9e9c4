"""Control plane: what each scheduling policy buys, what a decision costs, what survives a kill.

One process run, in parts:

1. **Decision cost**: the dispatcher's own time per request (admission into a queue already
   holding 1,000 waiting requests, plus the dispatch that grants one when a slot frees), per
   policy, against the 200 µs target. No sockets: the dispatcher is driven directly, so this
   is the policy code and nothing else (the instance declares a cost, so COST_OPTIMIZED's
   placement and every policy's cost counting are timed too).
2. **Policies on simulated GPU instances** (``sage-cp-bench compare``): a two-class workload
   (interactive: priority 0, SLO 2 s, 30%; batch: priority 5, SLO 30 s) at 1.2x the capacity
   of two simulated instances, the same trace for every policy. Targets: SLO_AWARE meets the
   interactive SLO >= 25 points more often than FIFO with throughput within 5%; PRIORITY's
   high-priority p95 <= 0.5x FIFO's.
3. **HYBRID batching**: mixed LLM and embedding traffic, embeddings offered above what
   one-request-per-call dispatch can serve; HYBRID vs FIFO (unbatched) embedding texts/s at
   the same offered load. Target >= 3x.
4. **Failover**: three simulated LLM instances, non-streamed chats and embeddings; one LLM
   instance SIGKILLed mid-run. Target: no failed idempotent request.
5. **The same policies on the real CPU engines** (SmolLM2 on this CPU): smaller numbers,
   same direction expected. Offered at 2x the capacity a short calibration measures (one
   full batch per instance), since that measurement is rough on a shared 2-core machine.
6. **COST_OPTIMIZED vs SLO_AWARE on priced instances**: two cheap simulated instances (cost
   1 per 1k tokens, the base speed) and a dear one (cost 10, 4x faster), the same two-class
   workload at 0.8x their total capacity, more than the cheap ones can carry. Target:
   COST_OPTIMIZED serves the trace for less, its SLO attainment within 2 points.

Parts 2-5 run the ``sage-cp-bench`` command as a user would (its own gateway and instances,
each a process) and read its JSON report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).parent))

from _common import report
from sage.benchmark.control_plane.cost_served import RunCost
from sage.inference.config import BackendInstanceConfig
from sage.inference.control_plane.dispatcher import Dispatcher, Ticket
from sage.inference.control_plane.instances import InstanceRegistry
from sage.inference.control_plane.queues import PendingRequest

DECISION_TARGET_US = 200.0


def decision_cost(policy: str, queued: int = 1000, requests: int = 20_000) -> float:
    """Microseconds of dispatcher time per request with ``queued`` requests waiting."""
    kind: Literal["llm", "embedding"] = "embedding" if policy == "hybrid" else "llm"

    async def run() -> float:
        loop = asyncio.get_running_loop()
        registry = InstanceRegistry()
        instance = registry.add(
            BackendInstanceConfig(
                port=9,
                model_name="m",
                instance_type=kind,
                max_concurrent_requests=1,
                cost_per_1k_tokens=1.0,
            )
        )
        now = [0.0]
        dispatcher = Dispatcher(registry, policy, batch_wait_s=0.0, clock=lambda: now[0])
        # "hybrid" batches embeddings: a grant takes up to batch_max_texts requests at once;
        # mixed keys keep batches small so that most decisions are single grants.
        pending: list[object] = []

        def admit(i: int) -> None:
            now[0] = i * 1e-3
            request = PendingRequest(
                arrival=now[0],
                kind=kind,
                model="m",
                priority=i % 7,
                slo_ms=2000.0 if i % 3 else 30000.0,
                tokens=64 + i % 200,
            )
            ticket = Ticket(loop.create_future(), None, batch_key=i % 4, texts=1)
            coroutine = dispatcher.admit(request, ticket)
            try:
                coroutine.send(None)  # runs admission up to the wait for a grant
            except StopIteration:  # granted at once (the free slot)
                return
            pending.append(coroutine)

        def finish() -> None:
            dispatcher.finish(
                PendingRequest(0.0, kind, "m"), instance, time.perf_counter(), failed=False
            )

        for i in range(queued + 1):  # one takes the slot, ``queued`` wait
            admit(i)
        started = time.perf_counter()
        for i in range(queued + 1, queued + 1 + requests):
            admit(i)
            finish()  # frees the slot: one waiting request is granted
        elapsed = time.perf_counter() - started
        for coroutine in pending:
            coroutine.close()  # type: ignore[attr-defined]
        return elapsed / requests * 1e6

    return asyncio.run(run())


def decisions(rounds: int) -> list[str]:
    policies = ["fifo", "priority", "slo_aware", "hybrid", "adaptive", "cost_optimized"]
    costs: dict[str, list[float]] = {p: [] for p in policies}
    for _ in range(rounds):
        for policy in policies:
            costs[policy].append(decision_cost(policy))
    lines = [
        "### Decision cost (1,000 requests queued)",
        "",
        "Dispatcher time per request: admission into the queue plus the dispatch that grants "
        "a request when a slot frees (median of rounds).",
        "",
        "| policy | µs per request | target |",
        "|---|---:|---:|",
    ]
    for policy, values in costs.items():
        median = statistics.median(values)
        verdict = "ok" if median <= DECISION_TARGET_US else "OVER"
        lines.append(f"| {policy} | {median:.1f} | ≤ {DECISION_TARGET_US:.0f} ({verdict}) |")
    return lines


CP_BENCH = Path(sys.executable).with_name("sage-cp-bench")
RESULTS = Path(__file__).resolve().parents[1] / "cp_bench_results" / "benchmarks"
SLOW_EMBEDDINGS = '{"embed_call_ms": 40, "embed_ms_per_text": 1.0, "embed_max_batch": 64}'


def cp_bench(*args: str) -> dict[str, Any]:
    """Run ``sage-cp-bench`` (its table goes to stderr here); its JSON report.

    Each run's reports (JSON, PNG, HTML) stay in their own folder under
    ``cp_bench_results/benchmarks/`` to look at.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=f"{args[0]}-", dir=RESULTS))
    subprocess.run([str(CP_BENCH), *args, "--output", str(out)], check=True, stdout=sys.stderr)
    (report_path,) = out.glob("*.json")
    return dict(json.loads(report_path.read_text()))


def _runs(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {run["policy"]: run["metrics"] for run in report["runs"]}


def _s(ms: float) -> str:
    return f"{ms / 1000:.2f} s"


def policies(duration_s: float, engine_args: list[str], title: str) -> list[str]:
    report = cp_bench(
        "compare",
        "--mode",
        "llm",
        "--policies",
        "fifo,priority,slo_aware",
        *engine_args,
    )
    runs = _runs(report)
    fifo, priority, slo = runs["fifo"], runs["priority"], runs["slo_aware"]
    lines = [
        f"### {title}",
        "",
        f"{report['trace_requests']} requests; {report['summary'][0]}; the same trace for "
        "every policy, each on a fresh gateway and fresh instances.",
        "",
        "| policy | req/s | interactive SLO met | interactive p95 | batch SLO met | batch p95 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, metrics in runs.items():
        inter, batch = metrics["by_class"]["interactive"], metrics["by_class"]["batch"]
        lines.append(
            f"| {name} | {metrics['overall']['throughput_rps']:.2f} | "
            f"{inter['slo_attainment']:.1%} | {_s(inter['latency']['p95_ms'])} | "
            f"{batch['slo_attainment']:.1%} | {_s(batch['latency']['p95_ms'])} |"
        )
    gain = (
        slo["by_class"]["interactive"]["slo_attainment"]
        - fifo["by_class"]["interactive"]["slo_attainment"]
    ) * 100
    throughput = slo["overall"]["throughput_rps"] / fifo["overall"]["throughput_rps"]
    p95 = (
        priority["by_class"]["interactive"]["latency"]["p95_ms"]
        / fifo["by_class"]["interactive"]["latency"]["p95_ms"]
    )
    lines += [
        "",
        f"- SLO_AWARE vs FIFO, interactive SLO met: **{gain:+.1f} points** (target >= +25), "
        f"throughput **{throughput:.3f}x** (target within 5%).",
        f"- PRIORITY vs FIFO, high-priority p95: **{p95:.2f}x** (target <= 0.5x).",
    ]
    return lines


def hybrid(duration_s: float) -> list[str]:
    report = cp_bench(
        "compare",
        "--mode",
        "hybrid",
        "--policies",
        "fifo,hybrid",
        "--llm-ratio",
        "0.1",
        "--duration",
        str(duration_s),
        "--sim-profile",
        SLOW_EMBEDDINGS,
    )
    runs = _runs(report)
    emb = {name: m["by_kind"]["embedding"] for name, m in runs.items()}
    llm = {name: m["by_kind"]["llm"] for name, m in runs.items()}
    ratio = emb["hybrid"]["texts_per_s"] / emb["fifo"]["texts_per_s"]
    lines = [
        "### HYBRID: embeddings batched per model vs unbatched dispatch",
        "",
        f"10% LLM, 90% embedding requests ({report['trace_requests']} in all, "
        f"{report['rate_rps']:.1f} req/s; {report['summary'][0]}) on simulated LLM and "
        "embedding instances (an embedding call costs 40 ms + 1 ms per text, one at a time); "
        "the same trace for both. FIFO sends one request per call; HYBRID merges the "
        "waiting ones.",
        "",
        "| policy | embedding texts/s | embedding p95 | LLM req/s | LLM p95 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in runs:
        lines.append(
            f"| {name} | {emb[name]['texts_per_s']:.0f} | {_s(emb[name]['latency']['p95_ms'])}"
            f" | {llm[name]['throughput_rps']:.2f} | {_s(llm[name]['latency']['p95_ms'])} |"
        )
    lines += ["", f"- HYBRID / FIFO embedding throughput: **{ratio:.2f}x** (target >= 3x)."]
    return lines


def failover(duration_s: float) -> list[str]:
    kill_at = duration_s / 3
    report = cp_bench(
        "run",
        "--mode",
        "hybrid",
        "--policy",
        "slo_aware",
        "--instances",
        "3",
        "--no-stream",
        "--duration",
        str(duration_s),
        "--load",
        "0.8",
        "--kill-instance-at",
        str(kill_at),
    )
    (run,) = report["runs"]
    metrics = run["metrics"]
    overall = metrics["overall"]
    return [
        "### Failover: one of three LLM instances killed mid-run",
        "",
        f"{overall['requests']} requests (non-streamed chats and embeddings, all idempotent) "
        f"at 0.8x capacity; SIGKILL to one LLM instance at {kill_at:.0f} s.",
        "",
        f"- completed {overall['completed']}, failed {overall['failed']}; failed idempotent: "
        f"**{metrics['failed_idempotent']}** (target 0); p99 {_s(overall['latency']['p99_ms'])}.",
        f"- events: {'; '.join(str(e) for e in run.get('events', []))}",
    ]


CHEAP_COST, DEAR_COST, DEAR_SPEED = 1.0, 10.0, 4.0


def cost(duration_s: float) -> list[str]:
    costs = f"{CHEAP_COST:g},{CHEAP_COST:g},{DEAR_COST:g}"
    report = cp_bench(
        "compare",
        "--mode",
        "llm",
        "--policies",
        "slo_aware,cost_optimized",
        "--instance-costs",
        costs,
        "--instance-speeds",
        f"1,1,{DEAR_SPEED:g}",
        "--load",
        "0.8",
        "--duration",
        str(duration_s),
    )
    runs = {run["policy"]: run for run in report["runs"]}
    lines = [
        "### COST_OPTIMIZED vs SLO_AWARE on priced instances",
        "",
        f"{report['trace_requests']} requests; {report['summary'][0]}; three simulated "
        f"instances: two cheap (cost {CHEAP_COST:g} per 1k tokens, the base speed) and one dear "
        f"(cost {DEAR_COST:g}, {DEAR_SPEED:g}x faster); the cheap ones alone carry "
        f"{2 / (2 + DEAR_SPEED):.0%} of the capacity. The same trace for both policies, each on "
        "a fresh gateway and fresh instances; cost as the gateway counts it (tokens x cost / "
        "1000), warm-up excluded.",
        "",
        "| policy | req/s | interactive SLO met | batch SLO met | p95 | cost "
        "| cost per 1k requests | share on the dear instance |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run in runs.items():
        metrics = run["metrics"]
        inter, batch = metrics["by_class"]["interactive"], metrics["by_class"]["batch"]
        lines.append(
            f"| {name} | {metrics['overall']['throughput_rps']:.2f} | "
            f"{inter['slo_attainment']:.1%} | {batch['slo_attainment']:.1%} | "
            f"{_s(metrics['overall']['latency']['p95_ms'])} | {run['cost']['total']:,.1f} | "
            f"{run['cost']['per_1k_requests']:,.1f} | "
            f"{RunCost.from_dict(run['cost']).share_of_dearest():.1%} |"
        )
    slo, cheap = runs["slo_aware"], runs["cost_optimized"]
    ratio = cheap["cost"]["total"] / slo["cost"]["total"]
    points = (
        cheap["metrics"]["overall"]["slo_attainment"] - slo["metrics"]["overall"]["slo_attainment"]
    ) * 100
    lines += [
        "",
        f"- COST_OPTIMIZED vs SLO_AWARE: cost **{ratio:.2f}x**, SLO attainment "
        f"**{points:+.1f} points** (target: cost lower, attainment within 2 points).",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--parts",
        default="decisions,policies,hybrid,failover,cpu,cost",
        help="comma-separated subset to run",
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per policy run")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    parts: dict[str, Callable[[], list[str]]] = {
        "decisions": lambda: decisions(args.rounds),
        "policies": lambda: policies(
            args.duration,
            ["--duration", str(args.duration)],
            "Policies on two simulated GPU instances at 1.2x capacity",
        ),
        "hybrid": lambda: hybrid(args.duration / 3),
        "failover": lambda: failover(args.duration / 3),
        "cpu": lambda: policies(
            args.duration,
            [
                "--engine",
                "cpu",
                "--requests",
                "120",
                "--load",
                "2.0",
                "--prompt-tokens",
                "32",
                "--output-tokens",
                "16",
                "--classes",
                "interactive:0:8000:0.3,batch:5:60000:0.7",
            ],
            "The same policies on the real CPU engines (two SmolLM2 instances, SLOs 8 s / 60 s, "
            "2x the calibrated capacity)",
        ),
        "cost": lambda: cost(args.duration),
    }
    lines: list[str] = []
    for name in args.parts.split(","):
        started = time.perf_counter()
        lines += [*parts[name](), ""]
        print(f"[{name}: {time.perf_counter() - started:.0f} s]", file=sys.stderr)
    write = args.write_readme and len(args.parts.split(",")) == len(parts)
    report("control_plane", "Control plane", lines, write)


if __name__ == "__main__":
    main()
