"""Control plane: what each scheduling policy buys, what a decision costs, what survives a kill.

One process run, in parts:

1. **Decision cost**: the dispatcher's own time per request (admission into a queue already
   holding 1,000 waiting requests, plus the dispatch that grants one when a slot frees), per
   policy, against the 200 µs target. No sockets: the dispatcher is driven directly, so this
   is the policy code and nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import report
from sage.common.components.sage_llm.config import BackendInstanceConfig
from sage.common.components.sage_llm.control_plane.dispatcher import Dispatcher, Ticket
from sage.common.components.sage_llm.control_plane.instances import InstanceRegistry
from sage.common.components.sage_llm.control_plane.queues import PendingRequest

DECISION_TARGET_US = 200.0


def decision_cost(policy: str, queued: int = 1000, requests: int = 20_000) -> float:
    """Microseconds of dispatcher time per request with ``queued`` requests waiting."""
    kind = "embedding" if policy == "hybrid" else "llm"

    async def run() -> float:
        loop = asyncio.get_running_loop()
        registry = InstanceRegistry()
        instance = registry.add(
            BackendInstanceConfig(
                port=9, model_name="m", instance_type=kind, max_concurrent_requests=1
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
    policies = ["fifo", "priority", "slo_aware", "hybrid", "adaptive"]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", default="decisions", help="comma-separated subset to run")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    parts: dict[str, Callable[[], list[str]]] = {
        "decisions": lambda: decisions(args.rounds),
    }
    lines: list[str] = []
    for name in args.parts.split(","):
        started = time.perf_counter()
        lines += [*parts[name](), ""]
        print(f"[{name}: {time.perf_counter() - started:.0f} s]", file=sys.stderr)
    report("control_plane", "Control plane", lines, args.write_readme)


if __name__ == "__main__":
    main()
