"""Observability: what publishing to the dashboard costs a job, and what the dashboard costs.

Part 1, job throughput, interleaved over several rounds (medians) after a warm-up round: one
local job, ``from_collection(range(N))`` (``--records``, default 10,000,000: 3-5 s a run, so
several periodic snapshots) → ``map(Double)`` → ``filter(Even)`` (keeps the doubles of even
numbers: half the records) → ``sink(Count)``, fused into one task that runs in this
process's main thread, timed from ``env.submit()`` until it returns (which includes
the job's final, synchronous snapshot). Three cases:

1. ``no dashboard``: ``$SAGE_HOME`` points at an empty temporary directory, so the job's
   publisher thread finds no dashboard state file (one file read per second);
2. ``publishing to a dashboard``: ``$SAGE_HOME`` points at the directory of a ``sage
   dashboard --port 0`` subprocess, with one live page stand-in (a subprocess holding
   ``GET /events`` open and reading every event), so the dashboard does its full work (a
   refresh per second: psutil samples, the whole state serialised and pushed to the page)
   while the job POSTs its metrics snapshot to it every second;
3. ``publishing + memory monitor (1 s)``: case 2 with the job config
   ``{"memory_monitor": {"threshold_mb": 100000, "interval_s": 1.0}}`` (an RSS sampler thread).

The publisher reads ``$SAGE_HOME`` at each tick, so switching ``os.environ["SAGE_HOME"]``
between runs switches cases. Every run is checked (exit 1 if one is wrong): the sink saw
exactly the even records, doubled (count and sum); in cases 2 and 3 the dashboard's
``/api/state`` lists the job by name, finished, with the same count at its sink (and, in case
3, the memory monitor's figures); no job of case 1 ever reaches the dashboard.

Part 2, the dashboard's own cost, measured on its process with psutil over a window of
``--window`` seconds (CPU: user + system time over the window's wall time; RSS: the largest of
one sample per second): (a) idle with the one events client; (b) the same while one job runs
(the pipeline over an endless range, stopped after the window) and publishes to it.

Part 3, reading it: 20 more jobs are POSTed to ``/api/jobs`` (with the token; each row
carries a real ``JobMetrics.to_dict()`` of a finished run), then ``GET /api/state`` and
``GET /metrics`` are requested ``--requests`` times each from this process (httpx, one
kept-alive connection, one untimed request first): median and p95 latency, response size.
``--write-readme`` stores the table in README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil

sys.path.insert(0, str(Path(__file__).parent))

from _common import Case, busy_cpu_s, cpu_ticks, fmt_rate, interleave, report_checked
from sage.common.core.functions.filter_function import FilterFunction
from sage.common.core.functions.map_function import MapFunction
from sage.common.core.functions.sink_function import SinkFunction
from sage.common.observability.discovery import DashboardAddress, find_dashboard
from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.runtime.publisher import publisher

START_TIMEOUT_S = 60.0  # the dashboard subprocess listening, the events client's first event
EXTRA_JOBS = 20
MONITOR = {"memory_monitor": {"threshold_mb": 100_000, "interval_s": 1.0}}

# The live page stand-in: holds /events open, prints each event's size (one line each).
EVENTS_CLIENT = """
import sys, httpx
with httpx.stream("GET", sys.argv[1] + "/events", timeout=None) as response:
    response.raise_for_status()
    for line in response.iter_lines():
        if line.startswith("data: "):
            print(len(line), flush=True)
"""


@dataclass
class Tally:
    """What the sink instances saw, added up as they close."""

    records: int = 0
    total: int = 0


class Double(MapFunction):
    def execute(self, x: int) -> int:
        return 2 * x


class Even(FilterFunction):
    """Keeps the doubles of even numbers (multiples of 4): half the records."""

    def execute(self, x: int) -> bool:
        return x % 4 == 0


class Count(SinkFunction):
    def __init__(self, tally: Tally, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tally = tally
        self.records = self.total = 0

    def execute(self, x: int) -> None:
        self.records += 1
        self.total += x

    def close(self) -> None:
        self.tally.records += self.records
        self.tally.total += self.total


def expected(n: int) -> tuple[int, int]:
    """(records, sum) the sink must see for ``range(n)``: ``2 * x`` for every even ``x``."""
    m = (n + 1) // 2  # 0, 2, ..., 2(m - 1)
    return m, 2 * m * (m - 1)


def build(name: str, n: int | None, config: dict[str, Any]) -> tuple[LocalEnvironment, Tally]:
    """The pipeline over ``range(n)`` (``n`` None: an endless range)."""
    tally = Tally()
    env = LocalEnvironment(name, config=config)
    source = range(n) if n is not None else range(sys.maxsize)
    env.from_collection(source).map(Double).filter(Even).sink(Count, tally)
    return env, tally


def sink_records(row: dict[str, Any]) -> int:
    """Records the sink took, from a dashboard row's metrics."""
    operators = (row.get("metrics") or {}).get("operators") or ()
    return sum(int(op.get("records_in") or 0) for op in operators if op.get("kind") == "sink")


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL if it is still there after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Window:
    """The dashboard process over one window."""

    cpu_pct: float  # of one CPU
    rss_mb: float  # the largest sample
    events: int  # events the page stand-in received
    event_kb: float  # their mean size


class Bench:
    """The dashboard, its events client, the runs and their checks."""

    def __init__(self, scratch: Path, stack: contextlib.ExitStack) -> None:
        self.quiet_home = scratch / "no-dashboard"
        self.board_home = scratch / "dashboard"
        self.quiet_home.mkdir()
        self.board_home.mkdir()
        self.scratch = scratch
        self.stack = stack
        self.errors: list[str] = []
        self.cpu: dict[str, list[float]] = {}  # case -> this process's CPU s per run
        self.sent: dict[str, list[int]] = {}  # case -> snapshots the publisher sent per run
        self.quiet_names: list[str] = []
        self.last_metrics: dict[str, Any] | None = None
        self.last_payload_bytes = 0
        self._seq = 0
        self.dashboard, self.address = self._start_dashboard()
        self.events_log = scratch / "events.log"
        self.client = self._start_events_client()
        self.http = stack.enter_context(httpx.Client(base_url=self.address.url, timeout=10.0))

    # -- subprocesses --------------------------------------------------------------------

    def _start_dashboard(self) -> tuple[subprocess.Popen[bytes], DashboardAddress]:
        log = self.stack.enter_context(open(self.scratch / "dashboard.log", "wb"))  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "sage.cli.main", "dashboard", "--port", "0"],
            env={**os.environ, "SAGE_HOME": str(self.board_home)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.stack.callback(stop_process, proc)
        state_file = self.board_home / "dashboard" / "server.json"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            address = find_dashboard(state_file)
            if address is not None and address.pid == proc.pid:
                return proc, address
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        tail = (self.scratch / "dashboard.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the dashboard did not start (exit {proc.poll()}):\n{tail}")

    def _start_events_client(self) -> subprocess.Popen[bytes]:
        log = self.stack.enter_context(open(self.events_log, "wb"))  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-c", EVENTS_CLIENT, self.address.url],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.stack.callback(stop_process, proc)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            if self.event_sizes():
                return proc
            time.sleep(0.1)
        tail = self.events_log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the events client got no event (exit {proc.poll()}):\n{tail}")

    def event_sizes(self) -> list[int]:
        """The size of every event the page stand-in has received so far."""
        lines = self.events_log.read_text(errors="replace").splitlines()
        return [int(line) for line in lines if line.strip().isdigit()]

    # -- part 1: the timed runs ----------------------------------------------------------

    def case(self, name: str, n: int, publish: bool, config: dict[str, Any]) -> Case:
        self.cpu[name], self.sent[name] = [], []
        return Case(name, records=n, timed=lambda: self.run(name, n, publish, config))

    def run(self, case: str, n: int, publish: bool, config: dict[str, Any]) -> float:
        """One run of ``case``; checks it; its seconds (``env.submit()`` until it returns)."""
        self._seq += 1
        name = f"obs-{self._seq}"
        os.environ["SAGE_HOME"] = str(self.board_home if publish else self.quiet_home)
        env, tally = build(name, n, config)
        sent = publisher().sent
        start, cpu = time.perf_counter(), time.process_time()
        try:
            job = env.submit()
        except Exception as exc:
            self.errors.append(f"{case}: the job failed: {type(exc).__name__}: {exc}")
            return time.perf_counter() - start
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        self.cpu[case].append(cpu)
        self.sent[case].append(publisher().sent - sent)
        if (tally.records, tally.total) != expected(n):
            self.errors.append(
                f"{case}: the sink saw {tally.records:,} records summing to {tally.total:,}, "
                f"expected {expected(n)[0]:,} summing to {expected(n)[1]:,}"
            )
        if not publish:
            self.quiet_names.append(name)
            return elapsed
        self.last_metrics = job.metrics().to_dict()
        self.last_payload_bytes = len(orjson.dumps(publisher().payload("x", job)))
        row = self.row(name)
        if row is None or row.get("status") != "finished":
            self.errors.append(
                f"{case}: the dashboard shows job {name} as "
                f"{'missing' if row is None else row.get('status')}, expected finished"
            )
        elif sink_records(row) != expected(n)[0]:
            self.errors.append(
                f"{case}: the dashboard shows {sink_records(row):,} records at {name}'s sink, "
                f"expected {expected(n)[0]:,}"
            )
        elif config.get("memory_monitor") and not (row.get("memory") or {}).get("peak_mb"):
            self.errors.append(f"{case}: the dashboard shows no memory figures for {name}")
        return elapsed

    def state(self) -> dict[str, Any]:
        response = self.http.get("/api/state")
        response.raise_for_status()
        return dict(response.json())

    def row(self, name: str) -> dict[str, Any] | None:
        return next((r for r in self.state()["jobs"] if r.get("name") == name), None)

    def check_quiet(self) -> None:
        """No job of the case without a dashboard may have reached it."""
        names = {r.get("name") for r in self.state()["jobs"]}
        leaked = [n for n in self.quiet_names if n in names]
        if leaked:
            self.errors.append(f"no dashboard: jobs {leaked} were published to the dashboard")

    # -- part 2: the dashboard's cost ----------------------------------------------------

    def window(self, seconds: float) -> Window:
        """The dashboard process's CPU and RSS over ``seconds``."""
        proc = psutil.Process(self.dashboard.pid)
        events = len(self.event_sizes())
        times, start = proc.cpu_times(), time.perf_counter()
        rss = [proc.memory_info().rss]
        while (left := start + seconds - time.perf_counter()) > 0:
            time.sleep(min(1.0, left))
            rss.append(proc.memory_info().rss)
        after, wall = proc.cpu_times(), time.perf_counter() - start
        sizes = self.event_sizes()[events:]
        busy = after.user + after.system - times.user - times.system
        return Window(
            cpu_pct=100 * busy / wall,
            rss_mb=max(rss) / 2**20,
            events=len(sizes),
            event_kb=statistics.mean(sizes) / 1024 if sizes else 0.0,
        )

    def window_with_job(self, seconds: float) -> Window:
        """:meth:`window` while one job runs (an endless range) and publishes to it."""
        self._seq += 1
        name = f"obs-live-{self._seq}"
        os.environ["SAGE_HOME"] = str(self.board_home)
        env, tally = build(name, None, {})
        job = env.submit(autostop=False)
        try:
            time.sleep(1.5)  # its first snapshots are in
            seen = self.row(name)
            measured = self.window(seconds)
            if not job.stop(60.0):
                self.errors.append(f"{name}: did not stop within 60 s")
        finally:
            job.close()
        m = tally.records  # the first m even numbers, doubled, in order
        if m == 0 or tally.total != 2 * m * (m - 1):
            self.errors.append(
                f"{name}: the sink saw {m:,} records summing to {tally.total:,}, "
                f"expected {2 * m * (m - 1):,}"
            )
        if seen is None or seen.get("status") != "running":
            self.errors.append(f"{name}: not shown running on the dashboard while it ran")
        return measured

    # -- part 3: reading it --------------------------------------------------------------

    def publish_extra(self, count: int) -> None:
        """POST ``count`` running jobs, each with a real job's metrics."""
        headers = {"authorization": f"Bearer {self.address.token}"}
        for i in range(count):
            row = {
                "id": f"bench-{i}",
                "name": f"bench-{i}",
                "status": "running",
                "pid": os.getpid(),
                "metrics": self.last_metrics,
            }
            response = self.http.post("/api/jobs", content=orjson.dumps(row), headers=headers)
            if response.status_code != 204:
                self.errors.append(f"POST /api/jobs bench-{i}: HTTP {response.status_code}")

    def latency(self, path: str, requests: int) -> tuple[float, float, float]:
        """(median s, p95 s, size KB) of ``GET path``."""
        self.http.get(path).raise_for_status()
        seconds, size = [], 0
        for _ in range(requests):
            start = time.perf_counter()
            response = self.http.get(path)
            seconds.append(time.perf_counter() - start)
            response.raise_for_status()
            size = len(response.content)
        p95 = statistics.quantiles(seconds, n=20, method="inclusive")[18]
        return statistics.median(seconds), p95, size / 1024


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000_000, help="per timed run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=float, default=10.0, help="seconds per cost window")
    parser.add_argument("--requests", type=int, default=50, help="per read route")
    parser.add_argument(
        "--quick", action="store_true", help="200,000 records, 2 rounds, 3 s windows"
    )
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.records, args.rounds, args.window, args.requests = 200_000, 2, 3.0, 20
    os.environ["SAGE_DASHBOARD_PUBLISH"] = "1"  # read when the publisher is first created
    if not publisher().enabled:
        sys.exit("the metrics publisher is disabled in this process")

    started, own_cpu, busy = time.perf_counter(), time.process_time(), busy_cpu_s()
    n = args.records
    with contextlib.ExitStack() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="sage-bench-obs-"))
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        bench = Bench(scratch, stack)
        quiet = bench.case("no dashboard", n, False, {})
        board = bench.case("publishing to a dashboard", n, True, {})
        monitored = bench.case("publishing + memory monitor (1 s)", n, True, MONITOR)
        cases = [quiet, board, monitored]
        stolen, total = cpu_ticks()
        interleave(cases, rounds=args.rounds, warmup=1)
        stolen2, total2 = cpu_ticks()
        bench.check_quiet()
        idle = bench.window(args.window)
        live = bench.window_with_job(args.window)
        bench.publish_extra(EXTRA_JOBS)
        jobs_shown = len(bench.state()["jobs"])
        state_read = bench.latency("/api/state", args.requests)
        metrics_read = bench.latency("/metrics", args.requests)
        events_total = len(bench.event_sizes())
        dashboard_alive = bench.dashboard.poll() is None
    wall = time.perf_counter() - started
    steal = (stolen2 - stolen) / max(total2 - total, 1)
    others = (busy_cpu_s() - busy - (time.process_time() - own_cpu)) / wall
    if not dashboard_alive:
        bench.errors.append("the dashboard exited during the benchmark")

    def cpu_us(case: Case) -> str:
        runs = bench.cpu[case.name][-args.rounds :]  # the timed rounds, not the warm-up
        return f"{statistics.median(runs) / case.records * 1e6:.3f} µs" if runs else "-"

    def snapshots(case: Case) -> str:
        runs = bench.sent[case.name][-args.rounds :]
        return f"{statistics.median(runs):g}" if runs else "-"

    def ratio(case: Case) -> str:
        return f"{case.ratio_to(quiet):.3f}x no dashboard"

    lines = [
        f"One local job: `from_collection(range({n:,}))` → map (×2) → filter (keeps half) → "
        "sink, fused into one task in the main thread, timed from `env.submit()` until it "
        f"returns; {args.rounds} interleaved rounds after a warm-up round. records/s: median "
        "(min-max) of source records; ratio: median over rounds of the two cases' speeds in the "
        "same round; CPU per record: this process's CPU time (every thread: the task, the "
        "publisher, the memory monitor) over the records; snapshots sent: by the publisher "
        "during the run (both medians). With a dashboard, the job POSTs its metrics snapshot "
        f"({bench.last_payload_bytes / 1024:.1f} KB of JSON) every second and once more as it "
        "ends; the dashboard runs in its own process with one live page stand-in reading "
        "`/events`. Without one, the job's publisher thread reads `$SAGE_HOME` once a second "
        "and finds nothing.",
        "",
        "| case | records/s | ratio | CPU per record (job process) | snapshots sent | host steal |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for case in cases:
        lines.append(
            f"| {case.name} | {fmt_rate(case.rate)} ({case.spread()}) | "
            f"{'' if case is quiet else ratio(case)} | {cpu_us(case)} | {snapshots(case)} "
            f"| {case.steal_pct} |"
        )
    lines += [
        "",
        "The dashboard's own cost, on its process (psutil): CPU time over a "
        f"{args.window:.0f} s window (100% = one core), the largest RSS sampled once a second "
        "in it, and the events its one page stand-in received meanwhile (the whole state, once "
        "per refresh).",
        "",
        "| dashboard | CPU | RSS | events received | mean event size |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, w in (
        ("idle, one `/events` client", idle),
        ("one job running and publishing, one `/events` client", live),
    ):
        lines.append(
            f"| {label} | {w.cpu_pct:.1f}% | {w.rss_mb:.0f} MiB | {w.events} "
            f"| {w.event_kb:.1f} KB |"
        )
    lines += [
        "",
        f"Reading it, with {jobs_shown} jobs on the board ({EXTRA_JOBS} POSTed as running, each "
        "with a real run's metrics, and the benchmark's finished jobs): "
        f"{args.requests} requests per route from this process over one kept-alive connection.",
        "",
        "| request | median | p95 | response size |",
        "|---|---:|---:|---:|",
    ]
    for path, (median_s, p95_s, kb) in (("/api/state", state_read), ("/metrics", metrics_read)):
        lines.append(f"| `GET {path}` | {_ms(median_s)} | {_ms(p95_s)} | {kb:.1f} KB |")
    lines += [
        "",
        f"The whole benchmark took {wall:.0f} s; the page stand-in received {events_total} "
        f"events. Host steal over the timed rounds: {steal:.0%}; other processes of this machine "
        f"kept {max(others, 0.0):.1f} of its {os.cpu_count()} CPUs busy on average meanwhile "
        "(the dashboard and its client count as others). This is a shared 2-vCPU VM with noisy "
        "neighbours: the dashboard process competes with the job for the same two CPUs, and a "
        "ratio means no more than the spreads next to it allow.",
    ]
    report_checked(
        "observability",
        "Observability: publishing to the dashboard",
        lines,
        bench.errors,
        args.write_readme,
    )


if __name__ == "__main__":
    main()
