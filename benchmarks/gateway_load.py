"""Gateway load test: 5,000 requests at concurrency 64 over three instances, one killed mid-run.

Three engine processes, GPU-instance simulators (``--engine simulated``) or the real CPU
engine serving the bundled SmolLM2 (``--engine cpu``; by default one run on each), and a
gateway process over them, on 127.0.0.1; the load comes from this process
(``httpx.AsyncClient``, closed loop: each of the ``--concurrency`` clients sends its next
request when its previous one ended). 10% of the requests are streamed. When the request at
``--kill-at`` of the run is sent, one instance gets SIGKILL (its process group) and is started
again on the same port as soon as it is gone; the gateway's health checks take it back.
Targets:

* zero lost or hung requests: each one succeeds or gets a retryable status (429 with
  ``Retry-After``, 503). A streamed request that was in flight at the kill and had already
  started its answer may be cut (the gateway cannot run it again once its first byte left);
  those are counted apart. Any other outcome is lost; no end within ``--deadline`` is hung;
* the gateway's RSS grows by less than 50 MB from after a warm-up to the end.

The logic lives in :mod:`sage.benchmark.gateway_load`; ``tests/inference/gateway/
test_gateway_load.py`` runs it shortened (and fails there when a target is missed; here the
verdict is in the table).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import cpu_ticks, report
from sage.benchmark.gateway_load import (
    DEFAULT_PROFILE,
    ENGINES,
    LoadConfig,
    LoadEngine,
    LoadResult,
    run_load,
)

RSS_TARGET_MB = 50.0


def _n(value: float) -> str:
    return f"{value:,.0f}"


def table(result: LoadResult, steal: float) -> tuple[list[str], bool]:
    """The README lines, and whether every target was met."""
    config, counts = result.config, result.categories()
    streams = result.categories(streamed=True)
    streamed = sum(streams.values())
    failover = result.failover
    engines = (
        f"{config.instances} simulated GPU instances (each its own process; "
        f"{json.dumps(config.sim_profile)})"
        if config.engine == "simulated"
        else f"{config.instances} CPU engines serving SmolLM2-135M-Instruct (each its own "
        "process, batches of 8, sharing the machine's cores)"
    )
    kill = (
        f" At request {_n(config.kill_index)} ({config.kill_at:.0%} of them) one instance got "
        "SIGKILL and was started again on its port as soon as it was gone."
        if config.kill_index is not None
        else " No instance was killed."
    )
    lines = [
        f"{_n(config.requests)} chat completions ({streamed / config.requests:.0%} streamed, "
        f"max_tokens {config.max_tokens}) at concurrency {config.concurrency} through the "
        f"gateway ({config.policy}, health checks every {config.health_check_interval_s:g} s) "
        f"over {engines}, after {_n(config.warmup)} warm-up requests; "
        f"closed loop from one client process (httpx).{kill}",
        "",
        "| figure | value | target |",
        "|---|---|---|",
    ]
    accounted = result.accounted and result.gateway_requests == config.requests
    lost_ok = result.lost == 0
    rss_ok = result.rss_growth_mb < RSS_TARGET_MB
    statuses = ", ".join(f"{k}: {_n(v)}" for k, v in sorted(result.statuses().items()))
    rows = [
        (
            "requests accounted for",
            f"{_n(len(result.outcomes))} of {_n(config.requests)} (the gateway received "
            f"{_n(result.gateway_requests)})",
            "all",
        ),
        ("statuses", statuses, ""),
        ("ok", _n(counts["ok"]), ""),
        ("retryable (429 with Retry-After, 503)", _n(counts["retryable"]), ""),
        (
            "streams cut by the kill (in flight, answer started)",
            f"{_n(counts['stream cut'])} of {_n(streamed)} streams",
            "",
        ),
        ("**lost**", f"**{_n(counts['lost'])}**", "0"),
        (f"**hung** (no end within {config.deadline_s:g} s)", f"**{_n(counts['hung'])}**", "0"),
        (
            "gateway retries / failed dispatches",
            f"{_n(result.retries)} / {_n(result.failed_dispatches())} (its `retries` metric; "
            "its instances' `errors`)",
            "",
        ),
        (
            "latency of the ok requests, p50 / p95 / p99",
            " / ".join(f"{_n(result.latency_ms(q))}" for q in (0.5, 0.95, 0.99)) + " ms",
            "",
        ),
        (
            "throughput",
            f"{result.throughput:,.1f} req/s ({result.busy_seconds:.1f} s until the last "
            "request that did not hang)",
            "",
        ),
        (
            "**gateway RSS** after warm-up → end (peak)",
            f"{result.rss_warm / 2**20:.1f} → {result.rss_end / 2**20:.1f} MB "
            f"(**{result.rss_growth_mb:+.1f} MB**; peak {result.rss_peak / 2**20:.1f} MB; "
            f"{result.rss_start / 2**20:.1f} MB before any request)",
            f"growth < {RSS_TARGET_MB:.0f} MB",
        ),
    ]
    back_ok = True
    if failover is not None:
        back_ok = failover.back_s is not None and not failover.error
        after = failover.served_after_back(result.gateway_end)
        seen = (
            f"out of rotation {failover.unhealthy_seen_s - failover.killed_s:.2f} s after the "
            "kill; "
            if failover.unhealthy_seen_s is not None
            else "never seen out of rotation; "
        )

        def since(at: float | None) -> str:
            return f"+{at - failover.killed_s:.2f} s" if at is not None else "never"

        rows.append(
            (
                "killed instance",
                f"SIGKILL at {failover.killed_s:.1f} s into the run; exited "
                f"{since(failover.gone_s)}; listening again {since(failover.listening_s)}; "
                f"{seen}back in rotation {since(failover.back_s)}; served "
                f"{_n(after or 0)} requests after{'; ' + failover.error if failover.error else ''}",
                "back",
            )
        )
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    passed = accounted and lost_ok and rss_ok and back_ok
    missed = [
        name
        for name, ok in (
            ("requests unaccounted for", accounted),
            (f"{counts['lost']} lost, {counts['hung']} hung", lost_ok),
            (f"RSS grew {result.rss_growth_mb:.1f} MB", rss_ok),
            ("the killed instance did not come back", back_ok),
        )
        if not ok
    ]
    lines += [
        "",
        f"Verdict: **{'PASS' if passed else 'FAIL'}**"
        + (f" ({'; '.join(missed)})." if missed else " (zero lost or hung; RSS growth < 50 MB)."),
        f"Host steal during the run: {steal:.0%}.",
    ]
    if examples := result.errors():
        lines += ["", "Lost or hung:", "", *(f"- {e}" for e in examples)]
    return lines, passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--kill-at",
        type=float,
        default=0.4,
        help="share of the requests sent when an instance is killed (negative: no kill)",
    )
    parser.add_argument("--stream-share", type=float, default=0.1)
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="of every request (default: 24, cpu: 4)"
    )
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds: hung after")
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument(
        "--engine",
        choices=(*ENGINES, "all"),
        default="all",
        help="the engines behind the gateway (all: a run on each, one after the other)",
    )
    parser.add_argument(
        "--back-timeout",
        type=float,
        default=None,
        help="seconds the restarted instance may take to be back (default: 30, cpu: 120)",
    )
    parser.add_argument("--policy", default="fifo")
    parser.add_argument("--health-interval", type=float, default=0.5)
    parser.add_argument("--max-queued", type=int, default=None)
    parser.add_argument("--sim-profile", default=json.dumps(DEFAULT_PROFILE))
    parser.add_argument("--log-dir", type=Path, default=None)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    for engine in ENGINES if args.engine == "all" else (args.engine,):
        run_one(args, engine)


def run_one(args: argparse.Namespace, engine: LoadEngine) -> None:
    """One load run on ``engine`` with the command line's settings, reported."""
    on_cpu = engine == "cpu"
    config = LoadConfig(
        requests=args.requests,
        concurrency=args.concurrency,
        kill_at=args.kill_at if args.kill_at >= 0 else None,
        stream_share=args.stream_share,
        max_tokens=args.max_tokens or (4 if on_cpu else 24),
        warmup=args.warmup,
        deadline_s=args.deadline,
        instances=args.instances,
        engine=engine,
        back_timeout_s=args.back_timeout or (120.0 if on_cpu else 30.0),
        policy=args.policy,
        health_check_interval_s=args.health_interval,
        max_queued_requests=args.max_queued,
        sim_profile=json.loads(args.sim_profile),
    )
    stolen, total = cpu_ticks()
    log_dir = args.log_dir / engine if args.log_dir is not None else None
    result = run_load(config, log_dir)
    stolen2, total2 = cpu_ticks()
    lines, _ = table(result, (stolen2 - stolen) / max(total2 - total, 1))
    report(
        "gateway_load_cpu" if on_cpu else "gateway_load",
        "Gateway under load, one instance killed and restarted"
        + (" (real CPU engines)" if on_cpu else ""),
        lines,
        args.write_readme,
    )  # the verdict is in the table; like every benchmark, a missed target is not an error


if __name__ == "__main__":
    main()
