"""Prefix-aware routing on real CPU engines: where a request goes decides whether its long
prompt prefix is computed again.

Three llama.cpp engine servers (``sage llm serve``'s engine, SmolLM2-135M-Instruct Q8_0,
8 slots each, 1 compute thread each on this 2-core machine), each its own process. The
workload: 12 "customers", each with its own ~1,000-token system prompt, and users asking
short questions of one customer at a time (18 tokens of answer each). One engine's cache
holds 8 of the prefixes (one per slot, fewer while several requests of one customer run at
once), the three together 24: all 12 fit in the three instances' caches together but not
in one.

In front of the same three engines, one after another in each round:

* the SAGE gateway with ``prefix_aware`` routing, then ``least_loaded``, then
  ``round_robin`` (one gateway process; the policy is switched through its management API);
* vllm-router (Rust; the ``.venv-peers`` virtualenv) with its ``cache_aware`` policy and
  its default thresholds.

Each case first sends one request per customer through its front (not measured: the
steady state of a service whose customers came before), then the same number of streamed
chat requests from 6 concurrent clients (a closed loop) in a shuffled order. Every case gets
prefixes of its own (a salt), so that nothing one case left in the engines' caches helps the
next. Figures: time to first
token (first byte of answer text) p50/p90, requests/s, and the share of prompt tokens the
engines found cached (their ``usage.prompt_tokens_details.cached_tokens``). Rounds
interleave the cases; medians over rounds. Targets: prefix-aware p90 TTFT <= 0.5x
least-loaded's, requests/s >= 1.2x, and at least vllm-router cache_aware's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))

from _common import cpu_ticks, metric_sum, report_checked
from inference import PEERS, _version, peer
from sage.common.config.ports import SagePorts
from sage.inference.deploy.processes import spawn_engine, spawn_gateway, terminate

INSTANCES = 3
SLOTS = 8
CUSTOMERS = 12
PREFIX_WORDS = 950  # about 1,000 tokens of SmolLM2's tokenizer
MAX_TOKENS = 18
CONCURRENCY = 6
WORDS = [
    *[
        "account",
        "billing",
        "order",
        "invoice",
        "refund",
        "delivery",
        "warehouse",
        "contract",
        "renewal",
        "support",
    ],
    *[
        "ticket",
        "priority",
        "customer",
        "region",
        "shipment",
        "carrier",
        "tracking",
        "payment",
        "credit",
    ],
    *[
        "balance",
        "discount",
        "policy",
        "warranty",
        "return",
        "exchange",
        "product",
        "catalogue",
        "price",
        "quote",
    ],
    *[
        "tax",
        "currency",
        "supplier",
        "schedule",
        "appointment",
        "service",
        "outage",
        "incident",
        "escalation",
    ],
    *[
        "manager",
        "agent",
        "subscription",
        "plan",
        "upgrade",
        "downgrade",
        "license",
        "seat",
        "usage",
        "quota",
    ],
    *["limit", "report", "dashboard", "export", "import", "record"],
]
SAGE_POLICIES = ("prefix_aware", "least_loaded", "round_robin")
ROUTER = "vllm-router cache_aware"
Chat = list[dict[str, str]]


def customer_prompt(salt: str, customer: int) -> str:
    """A customer's ~1,000-token system prompt (deterministic for a salt)."""
    rng = random.Random(f"{salt}/{customer}")
    words = " ".join(rng.choice(WORDS) for _ in range(PREFIX_WORDS))
    return f"You are the assistant of customer {salt}-{customer}. Their records: {words}."


def workload(salt: str, requests: int) -> tuple[list[Chat], list[Chat]]:
    """Each customer's first chat (the warm-up: steady state has every prefix seen before),
    then ``requests`` chats, each one customer's prompt and a short question, shuffled."""
    prompts = [customer_prompt(salt, c) for c in range(CUSTOMERS)]
    rng = random.Random(salt)
    chats = []
    for i in range(CUSTOMERS + requests):
        customer = i % CUSTOMERS
        question = f"User {rng.randrange(1000)} asks: what is the status of order {i}?"
        chats.append(
            [
                {"role": "system", "content": prompts[customer]},
                {"role": "user", "content": question},
            ]
        )
    warmup, measured = chats[:CUSTOMERS], chats[CUSTOMERS:]
    rng.shuffle(measured)
    return warmup, measured


@dataclass
class Outcome:
    ttft: float
    prompt_tokens: int
    cached_tokens: int


async def ask(
    client: httpx.AsyncClient, url: str, model: str, chat: list[dict[str, str]]
) -> Outcome:
    """One streamed chat; its time to the first text and its prompt's cached tokens."""
    body = {
        "model": model,
        "messages": chat,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.perf_counter()
    first = None
    usage: dict[str, object] = {}
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and any(
                (c.get("delta") or {}).get("content") for c in chunk.get("choices", [])
            ):
                first = time.perf_counter()
            if chunk.get("usage"):
                usage = chunk["usage"]
    assert first is not None, "an answer with no text"
    details = usage.get("prompt_tokens_details") or {}
    assert isinstance(details, dict)
    return Outcome(
        first - sent, int(usage.get("prompt_tokens", 0)), int(details.get("cached_tokens") or 0)
    )


def served(engines: list[int]) -> list[int]:
    """Chat requests each engine has finished (its own count)."""
    return [
        int(
            metric_sum(
                httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text,
                "sage_engine_requests_total",
                endpoint="chat",
            )
        )
        for port in engines
    ]


async def closed_loop(
    url: str, model: str, chats: list[list[dict[str, str]]]
) -> tuple[list[Outcome], float]:
    """Send ``chats`` from ``CONCURRENCY`` clients, each taking the next when done."""
    todo = iter(chats)
    outcomes: list[Outcome] = []
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def worker() -> None:
            for chat in todo:
                outcomes.append(await ask(client, url, model, chat))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return outcomes, time.perf_counter() - start


@dataclass
class Figures:
    p50: list[float] = field(default_factory=list)
    p90: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    cached: list[float] = field(default_factory=list)
    steal: list[float] = field(default_factory=list)
    spread: list[str] = field(default_factory=list)

    def add(self, outcomes: list[Outcome], seconds: float, steal: float) -> None:
        ttfts = sorted(o.ttft for o in outcomes)
        self.p50.append(statistics.median(ttfts))
        self.p90.append(statistics.quantiles(ttfts, n=10)[-1])
        self.rps.append(len(outcomes) / seconds)
        prompt = sum(o.prompt_tokens for o in outcomes)
        self.cached.append(sum(o.cached_tokens for o in outcomes) / max(prompt, 1))
        self.steal.append(steal)


def med(values: list[float]) -> float:
    return statistics.median(values)


def paired(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Median, min and max over rounds of a[i] / b[i]."""
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    return statistics.median(ratios), min(ratios), max(ratios)


def set_routing(gateway: int, policy: str) -> None:
    answer = httpx.put(
        f"http://127.0.0.1:{gateway}/v1/management/policy", json={"routing": policy}, timeout=10
    )
    answer.raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=72, help="requests per case")
    parser.add_argument(
        "--routing",
        default=",".join(SAGE_POLICIES),
        help="SAGE routing policies to run (comma-separated)",
    )
    parser.add_argument("--no-router", action="store_true", help="leave vllm-router out")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()

    logs = Path(tempfile.mkdtemp(prefix="sage-prefix-bench-"))
    pids: list[int] = []
    try:
        engines = []
        for i in range(INSTANCES):
            pid, port, model = spawn_engine(
                "llm",
                "smollm2",
                "cpu",
                logs / f"engine{i}.log",
                timeout_s=600,
                extra=("--max-batch", str(SLOTS), "--threads", "1"),
            )
            pids.append(pid)
            engines.append(port)
        backends = [
            {"host": "127.0.0.1", "port": port, "model_name": model, "instance_id": f"engine{i}"}
            for i, port in enumerate(engines)
        ]
        gateway_pid, gateway = spawn_gateway(
            {"port": 0, "llm_backends": backends, "routing_policy": "prefix_aware"},
            logs / "gateway.json",
            logs / "gateway.log",
        )
        pids.append(gateway_pid)
        fronts: dict[str, str] = {
            f"SAGE {policy}": f"http://127.0.0.1:{gateway}/v1/chat/completions"
            for policy in args.routing.split(",")
        }
        router_args: list[str] | None = None
        if (PEERS / "vllm-router").exists() and not args.no_router:
            router_port = SagePorts.any_free_port()
            router_args = [
                str(PEERS / "vllm-router"),
                *("--host", "127.0.0.1", "--port", str(router_port)),
                *("--worker-urls", *(f"http://127.0.0.1:{p}" for p in engines)),
                *("--policy", "cache_aware"),
                *(
                    "--prometheus-host",
                    "127.0.0.1",
                    "--prometheus-port",
                    str(SagePorts.any_free_port()),
                ),
                *("--log-level", "warning"),
            ]
            fronts[ROUTER] = f"http://127.0.0.1:{router_port}/v1/chat/completions"
        figures = {name: Figures() for name in fronts}
        names = list(fronts)

        def run_case(name: str, salt: str) -> None:
            if name.startswith("SAGE "):
                set_routing(gateway, name.removeprefix("SAGE "))
            warmup, chats = workload(salt, args.requests)
            asyncio.run(closed_loop(fronts[name], model, warmup))
            before = served(engines)
            stolen, total = cpu_ticks()
            outcomes, seconds = asyncio.run(closed_loop(fronts[name], model, chats))
            stolen2, total2 = cpu_ticks()
            steal = (stolen2 - stolen) / max(total2 - total, 1)
            spread = "/".join(str(b - a) for a, b in zip(before, served(engines), strict=True))
            if salt != "warmup":
                figures[name].add(outcomes, seconds, steal)
                figures[name].spread.append(spread)
            p90 = statistics.quantiles([o.ttft for o in outcomes], n=10)[-1]
            rate = len(outcomes) / seconds
            cached = sum(o.cached_tokens for o in outcomes) / sum(o.prompt_tokens for o in outcomes)
            print(
                f"  {name}: p90 TTFT {p90:.2f} s, {rate:.2f} req/s, cached {cached:.0%}, "
                f"requests per engine {spread}",
                flush=True,
            )

        def rounds() -> None:
            run_case(names[0], "warmup")  # the engines' first requests, not measured
            for r in range(args.rounds):
                print(f"round {r + 1}", flush=True)
                order = names if r % 2 == 0 else list(reversed(names))
                for name in order:
                    run_case(name, f"r{r}-{name}")

        if router_args is not None:
            with peer(router_args, router_port, logs / "vllm-router.log"):
                rounds()
        else:
            rounds()
    finally:
        for pid in pids:
            terminate(pid)

    base = figures["SAGE least_loaded"]
    best = figures["SAGE prefix_aware"]
    lines = [
        f"{INSTANCES} llama.cpp engine servers (SmolLM2-135M-Instruct Q8_0, {SLOTS} slots, 1 "
        f"thread each), {CUSTOMERS} customers with a ~1,000-token prompt each, short questions "
        f"({MAX_TOKENS} tokens of answer), {args.requests} streamed requests per case from "
        f"{CONCURRENCY} concurrent clients, after one unmeasured request per customer (the "
        f"steady state); {args.rounds} interleaved rounds, medians; ratios paired per round. "
        "Cached: the share of prompt tokens the engines did not compute again.",
        "",
        "| front | TTFT p50 | TTFT p90 | req/s | cached | p90 vs least-loaded | req/s vs "
        "least-loaded | requests per engine (last round) | host steal |",
        "|---|---:|---:|---:|---:|---|---|---|---:|",
    ]
    for name, fig in figures.items():
        p90 = "{:.2f}x ({:.2f}-{:.2f})".format(*paired(fig.p90, base.p90))
        rps = "{:.2f}x ({:.2f}-{:.2f})".format(*paired(fig.rps, base.rps))
        label = f"{name} ({_version('vllm-router')})" if name == ROUTER else name
        lines.append(
            f"| {label} | {med(fig.p50) * 1e3:,.0f} ms | {med(fig.p90) * 1e3:,.0f} ms | "
            f"{med(fig.rps):.2f} | {med(fig.cached) * 100:.0f}% | {p90} | {rps} | "
            f"{fig.spread[-1]} | {med(fig.steal) * 100:.0f}% |"
        )
    p90_ratio = paired(best.p90, base.p90)[0]
    rps_ratio = paired(best.rps, base.rps)[0]
    lines += [
        "",
        f"Prefix-aware vs least-loaded: p90 TTFT **{p90_ratio:.2f}x** (target <= 0.5x), "
        f"requests/s **{rps_ratio:.2f}x** (target >= 1.2x).",
    ]
    if ROUTER in figures:
        router = figures[ROUTER]
        lines.append(
            f"Prefix-aware vs vllm-router cache_aware: p90 TTFT "
            f"**{paired(best.p90, router.p90)[0]:.2f}x**, requests/s "
            f"**{paired(best.rps, router.rps)[0]:.2f}x** (target: p90 <= 1x, req/s >= 1x)."
        )
    else:
        lines.append("vllm-router is not installed (`make bench` puts it in .venv-peers).")
    report_checked("prefix_routing", "Prefix-aware routing", lines, [], args.write_readme)


if __name__ == "__main__":
    main()
