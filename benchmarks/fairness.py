"""Fairness among tenants: a heavy tenant sends 10x a light tenant's load through the gateway;
what the light tenant's latency becomes with the policy's order alone (FIFO) and with fair
share.

Three cases, each one ``sage-cp-bench run`` (the real gateway as its own process, over two
simulated GPU instances, each its own process), one after another in each round:

1. **alone**: the light tenant only, at 0.1x the instances' capacity;
2. **FIFO**: the light tenant and a heavy one at 10x its load (1.0x capacity; 1.1x
   together), the gateway serving them in arrival order (``--no-fair-share``);
3. **fair share**: the same two tenants, served by weighted fair share (the gateway's
   default with tenants; equal weights).

Why simulated instances: fairness is a property of the gateway's queue, and a queue forms
only where requests wait for a slot. The simulator has a batched GPU engine's timing (a batch
of up to 8 sequences decoding together, prefill charged in the step that admits a request)
without a model, so requests wait in the gateway as they would in front of GPUs; the stub
engine answers at once and nobody would ever wait. Its profile here is a memory-bound decode
(a step of 20 ms + 0.5 ms per sequence): a full batch slows every sequence down a little,
which no gateway queue can undo; that floor is printed with the figures.

Requests are not streamed (the figure is end-to-end latency; the client, the gateway and the
engines share this machine's cores). Each tenant's requests come from its own random stream,
so the light tenant sends the very same requests in the three cases. Rounds interleave the
cases (reversed every other round); medians over rounds, ratios paired per round. Target:
the light tenant's p95 with fair share within 1.5x its p95 alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _common import report_checked
from control_plane import cp_bench
from sage.inference.engines.simulated import SimulatorProfile

PROFILE = {
    "max_batch": 8,
    "decode_base_ms": 20.0,
    "decode_ms_per_seq": 0.5,
    "prefill_ms_per_token": 0.02,
}
LIGHT_LOAD = 0.1
HEAVY_TIMES = 10
TARGET = 1.5
BOTH = f"light:1:1,heavy:1:{HEAVY_TIMES}"
CASES: dict[str, tuple[str, float, list[str]]] = {
    "alone": ("light:1:1", LIGHT_LOAD, []),
    "fifo": (BOTH, LIGHT_LOAD * (1 + HEAVY_TIMES), ["--no-fair-share"]),
    "fair": (BOTH, LIGHT_LOAD * (1 + HEAVY_TIMES), []),
}
TITLES = {
    "alone": "light alone",
    "fifo": f"light + heavy ({HEAVY_TIMES}x), FIFO",
    "fair": f"light + heavy ({HEAVY_TIMES}x), fair share",
}


def run_case(case: str, duration_s: float, policy: str) -> dict[str, Any]:
    """One ``sage-cp-bench run`` of ``case``; the run's metrics."""
    tenants, load, extra = CASES[case]
    report = cp_bench(
        "run",
        *("--mode", "llm", "--policy", policy, "--tenants", tenants),
        *("--load", f"{load:g}", "--duration", f"{duration_s:g}", "--no-stream"),
        *("--classes", "std:0:600000:1", "--prompt-tokens", "128", "--output-tokens", "32"),
        *("--sim-profile", json.dumps(PROFILE), "--warmup", "2"),
        *extra,
    )
    (run,) = report["runs"]
    return dict(run["metrics"])


def _s(ms: float) -> str:
    return f"{ms / 1000:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of each trace")
    parser.add_argument("--policy", default="fifo", help="the policy inside each tenant")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
    started = time.perf_counter()
    for i in range(args.rounds):
        for case in list(CASES) if i % 2 == 0 else reversed(CASES):
            results[case].append(run_case(case, args.duration, args.policy))
            print(f"[round {i + 1}: {case} done]", file=sys.stderr)

    def light(m: dict[str, Any], figure: str) -> float:
        return float(m["by_tenant"]["light"]["latency"][figure])

    def heavy(m: dict[str, Any], key: str) -> float:
        return float(m["by_tenant"]["heavy"][key])

    def median(case: str, value: Callable[[dict[str, Any]], float]) -> float:
        return float(statistics.median(value(m) for m in results[case]))

    def ratio(case: str) -> float:  # paired per round: the cases of a round ran back to back
        return statistics.median(
            light(m, "p95_ms") / light(a, "p95_ms")
            for m, a in zip(results[case], results["alone"], strict=True)
        )

    profile = SimulatorProfile.from_mapping(PROFILE)
    floor = profile.step_s(profile.max_batch) / profile.step_s(1)
    example = results["fair"][0]
    lines = [
        f"Two simulated GPU instances (batch {PROFILE['max_batch']}, a decode step of "
        f"{PROFILE['decode_base_ms']:g} ms + {PROFILE['decode_ms_per_seq']:g} ms per sequence) "
        f"behind the gateway; non-streamed chats of ~128 prompt and ~32 output tokens. The "
        f"light tenant offers {LIGHT_LOAD:g}x the instances' capacity, the heavy one "
        f"{HEAVY_TIMES}x that ({LIGHT_LOAD * HEAVY_TIMES:g}x capacity); {args.duration:g} s "
        f"traces, {args.rounds} rounds, policy {args.policy} inside each tenant; "
        f"{example['by_tenant']['light']['requests']} light and "
        f"{example['by_tenant']['heavy']['requests']} heavy requests a run.",
        "",
        "| case | light p50 | light p95 | light p95 / alone | heavy req/s | heavy tokens/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for case, title in TITLES.items():
        mixed = case != "alone"
        lines.append(
            f"| {title} | {_s(median(case, lambda m: light(m, 'p50_ms')))} | "
            f"{_s(median(case, lambda m: light(m, 'p95_ms')))} | "
            + (f"{ratio(case):.2f}x" if mixed else "1.00x")
            + " | "
            + (f"{median(case, lambda m: heavy(m, 'throughput_rps')):.2f}" if mixed else "-")
            + " | "
            + (f"{median(case, lambda m: heavy(m, 'tokens_per_s')):.0f}" if mixed else "-")
            + " |"
        )
    fair, fifo = ratio("fair"), ratio("fifo")
    verdict = "met" if fair <= TARGET else "NOT met"
    throughput = median("fair", lambda m: heavy(m, "throughput_rps")) / median(
        "fifo", lambda m: heavy(m, "throughput_rps")
    )
    lines += [
        "",
        f"- Light p95 beside the heavy tenant, vs alone: **{fair:.2f}x with fair share** "
        f"(target <= {TARGET:g}x: {verdict}), {fifo:.2f}x under FIFO.",
        f"- Heavy throughput with fair share / FIFO: {throughput:.3f}x (it keeps the capacity "
        "the light tenant does not use).",
        f"- Floor: a full batch makes the engine's step {floor:.2f}x its step with one "
        "sequence; the light tenant's requests pay that beside the heavy one whatever the "
        "gateway does.",
    ]
    errors = [
        f"{case}: {m['overall']['failed']} requests failed"
        for case, runs in results.items()
        for m in runs
        if m["overall"]["failed"]
    ]
    print(f"[{time.perf_counter() - started:.0f} s]", file=sys.stderr)
    report_checked("fairness", "Fairness among tenants", lines, errors, args.write_readme)


if __name__ == "__main__":
    main()
