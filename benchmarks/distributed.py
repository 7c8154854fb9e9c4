"""Distributed runtime: SAGE's Ray runtime on 1 and 3 loopback nodes, vs local, vs Ray Data.

Three measurements, all in this one process run, on Ray clusters of loopback nodes that
each declare 4 CPUs (logical Ray resources; the machine itself has what it has):

1. An I/O-bound map (10 ms per record, standing for a remote call) over ``IO_RECORDS``
   records, on a 1-node cluster with map parallelism 4 and on a 3-node cluster with map
   parallelism 12: parallelism follows the cluster's CPU slots, as in Flink. End-to-end job
   time and run time without the job's start-up (``elapsed_s - startup_s``). Target: the
   3-node run >= 2.5x faster than the 1-node run. The two clusters run one after the other
   (rounds cannot interleave across clusters), several rounds each.
2. 1,000,000 integers through kernel_throughput's 5 maps and filter into a counting sink,
   fused into one task: the local runtime vs the Ray runtime on the 3-node cluster with
   parallelism 1 and 3 (every operator; each instance a whole chain). Interleaved rounds.
3. The same I/O-bound map with Ray Data's ``map_batches`` on the same 3-node cluster,
   interleaved with SAGE's 3-node runs of part 1. Target: SAGE's end-to-end time at least
   as good as Ray Data's (>= 1.0x).
4. ``collect()`` of 1,000,000 small records at the driver: a ``LocalEnvironment`` vs a
   ``RemoteEnvironment`` whose JobManager is a process of its own running the job on the
   3-node cluster (records travel host -> JobManager -> driver). Interleaved rounds for the
   throughput; then the driver's memory, each case in a fresh process of its own: its peak
   RSS growth while collecting all the records, and while a ``max_records`` cap of 100,000
   stops the job (the memory is bounded by the cap, not by the stream).

Ray binds to the machine's interface unless it runs in a network namespace whose only
interface is loopback: as root with ``unshare`` and ``ip``, this script re-executes itself
in one; elsewhere it says so and exits. ``--write-readme`` stores the table in README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import Case, fmt_rate, interleave, report  # noqa: E402
from kernel_throughput import MAPS, expected, keep  # noqa: E402
from sage.kernel.api.local_environment import LocalEnvironment  # noqa: E402
from sage.kernel.jobmanager.token import TOKEN_ENV  # noqa: E402
from sage.kernel.runtime.ray.executor import RAY_MAX_BATCH_DELAY_S  # noqa: E402

LOOPBACK = "127.0.0.1"
CPUS_PER_NODE = 4
IO_RECORDS = 3_000
IO_WAIT_S = 0.010
CPU_RECORDS = 1_000_000
COLLECT_RECORDS = 1_000_000
COLLECT_CAP = 100_000  # the cap of the bounded-memory case (a tenth of the stream)
# Ray Data: one read task per block, fused with the map (see ray_data_seconds). One block
# per CPU was the fastest of 1, 2, 3, 4, 8 and 15 per CPU on this machine.
RAY_DATA_BLOCKS_PER_CPU = 1
_NETNS_MARK = "SAGE_BENCH_LOOPBACK_NETNS"


# -- pipeline functions (workers import them from this module: benchmarks/ is on their path)


def remote_call(x: int) -> int:
    time.sleep(IO_WAIT_S)  # the workload: a 10 ms remote call, not a sleep in SAGE
    return x


def discard(x: Any) -> None:
    """The sink: does nothing (records are counted by the job's metrics)."""


def increment(x: int) -> int:
    return x + 1


def remote_call_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """Ray Data's version of ``remote_call``: the same 10 ms wait for every row."""
    for _ in range(len(batch["id"])):
        time.sleep(IO_WAIT_S)
    return batch


# -- the loopback namespace and the clusters -----------------------------------------------


def loopback_only() -> bool:
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def ensure_loopback_namespace() -> None:
    """Re-execute in a network namespace with only loopback, or exit saying why."""
    if loopback_only():
        return
    tools = shutil.which("unshare") and shutil.which("ip")
    if os.geteuid() == 0 and tools and not os.environ.get(_NETNS_MARK):
        os.environ[_NETNS_MARK] = "1"
        script = 'ip link set lo up && exec "$0" "$@"'
        argv = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]]
        os.execvp("unshare", ["unshare", "-n", "sh", "-c", script, *argv])
    sys.exit(
        "distributed.py: Ray binds to this machine's network interface unless it runs in a "
        "network namespace whose only interface is loopback; run this benchmark as root with "
        "`unshare` and `ip` installed (it re-executes itself in one), or from inside such a "
        "namespace."
    )


@contextmanager
def ray_cluster(nodes: int) -> Iterator[tuple[list[str], float]]:
    """A cluster of ``nodes`` loopback nodes with 4 CPUs each, this process connected.

    Yields the node ids (head first) and the seconds the cluster took to start.
    """
    import ray
    from ray.cluster_utils import Cluster

    from sage.kernel.runtime.ray.cluster import connect

    start = time.perf_counter()
    node_args = {"num_cpus": CPUS_PER_NODE, "node_ip_address": LOOPBACK}
    cluster = Cluster(
        initialize_head=True, head_node_args={**node_args, "include_dashboard": False}
    )
    try:
        ids = [cluster.head_node.node_id]
        ids += [cluster.add_node(**node_args).node_id for _ in range(nodes - 1)]
        cluster.wait_for_nodes()
        connect(cluster.address)
        yield ids, time.perf_counter() - start
    finally:
        ray.shutdown()
        cluster.shutdown()


# -- the cases -------------------------------------------------------------------------------


class RayRuns:
    """Runs one SAGE pipeline on Ray per call; keeps each run's time without start-up.

    ``case.timed`` is the end-to-end time (building the job, start-up, run, tear-down);
    ``run_s`` the part after every task had opened (``elapsed_s - startup_s``).
    """

    def __init__(
        self, name: str, build: Callable[[], LocalEnvironment], check: Callable[[Any], None]
    ) -> None:
        self.case = Case(name, timed=self.once)
        self.build = build
        self.check = check
        self.run_s: list[float] = []
        self.startup_s: list[float] = []
        self.placement: dict[str, str] = {}
        self.plan: Any = None
        self.metrics: Any = None

    def once(self) -> float:
        from sage.kernel.runtime.ray.executor import RayJob

        start = time.perf_counter()
        env = self.build()
        self.plan = env.plan()
        job = RayJob(self.plan, env.job_config, env.services)
        try:
            job.run()
        finally:
            job.close()
        elapsed = time.perf_counter() - start
        self.metrics = job.metrics()
        self.check(self.metrics)
        self.run_s.append(job.elapsed_s - job.startup_s)
        self.startup_s.append(job.startup_s)
        self.placement = job.placement
        return elapsed

    def drop_warmup(self, warmup: int) -> None:
        del self.run_s[:warmup], self.startup_s[:warmup]


def io_pipeline(parallelism: int) -> Callable[[], LocalEnvironment]:
    def build() -> LocalEnvironment:
        env = LocalEnvironment(f"io_p{parallelism}")
        env.from_collection(range(IO_RECORDS)).map(remote_call, parallelism=parallelism).sink(
            discard
        )
        return env

    return build


def sunk(metrics: Any) -> int:
    """Records the job's sink received."""
    assert metrics.status == "finished", metrics.status
    return sum(op.records_in for op in metrics.operators if op.operator.startswith("sink "))


def check_io(metrics: Any) -> None:
    assert sunk(metrics) == IO_RECORDS, sunk(metrics)


def cpu_pipeline(parallelism: int) -> Callable[[], LocalEnvironment]:
    def build() -> LocalEnvironment:
        env = LocalEnvironment(f"cpu_p{parallelism}")
        stream = env.from_collection(range(CPU_RECORDS), parallelism=parallelism)
        for f in MAPS:
            stream = stream.map(f, parallelism=parallelism)
        stream.filter(keep, parallelism=parallelism).sink(discard, parallelism=parallelism)
        return env

    return build


def check_cpu(metrics: Any) -> None:
    assert sunk(metrics) == expected(), sunk(metrics)


def run_local() -> int:
    env = cpu_pipeline(1)()
    env.submit()
    check_cpu(env.metrics())
    return CPU_RECORDS


def ray_data_seconds(blocks: int, batch_size: int) -> float:
    """The I/O-bound map with Ray Data: ``range`` read fused with ``map_batches``, tasks of
    1 CPU each (12 at once on 12 CPUs), results materialized in the cluster."""
    import ray.data

    start = time.perf_counter()
    ds = ray.data.range(IO_RECORDS, override_num_blocks=blocks).map_batches(
        remote_call_batch, batch_size=batch_size, batch_format="numpy"
    )
    count = ds.materialize().count()
    elapsed = time.perf_counter() - start
    assert count == IO_RECORDS, count
    return elapsed


def quiet_ray_data() -> None:
    import logging

    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


# -- collect() at the driver ----------------------------------------------------------------


def collect_env(port: int | None, cap: int) -> tuple[Any, Any]:
    """The collect pipeline on a local environment (``port`` None) or a remote one."""
    from sage.kernel.api.remote_environment import RemoteEnvironment

    env: Any = (
        LocalEnvironment("collect")
        if port is None
        else RemoteEnvironment("collect", port=port, log_to_driver=False)
    )
    result = env.from_collection(range(COLLECT_RECORDS)).map(increment).collect(max_records=cap)
    return env, result


def collect_once(port: int | None) -> int:
    env, result = collect_env(port, COLLECT_RECORDS)
    env.submit()
    assert len(result) == COLLECT_RECORDS and result[-1] == COLLECT_RECORDS, len(result)
    return COLLECT_RECORDS


def peak_rss() -> int:
    """This process's peak resident set since the last :func:`reset_peak_rss` (bytes)."""
    with open("/proc/self/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> int:
    """Start measuring the peak resident set from now (Linux: ``clear_refs`` 5); the
    resident set now."""
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as fh:
        fh.write("5")
    return peak_rss()


def driver_memory(port: int | None, cap: int) -> dict[str, Any]:
    """(In a fresh process) collect once; the driver's peak RSS growth while it did."""
    from sage.common.errors import CollectLimitError

    env, result = collect_env(port, cap)
    base = reset_peak_rss()
    start = time.perf_counter()
    try:
        env.submit()
        outcome = "all records"
    except CollectLimitError:
        outcome = "CollectLimitError"
    elapsed = time.perf_counter() - start
    peak = peak_rss()
    return {
        "seconds": elapsed,
        "growth_mb": max(peak - base, 0) / 2**20,
        "held": len(result),
        "outcome": outcome,
    }


def measure_driver(port: int | None, cap: int) -> dict[str, Any]:
    args = [sys.executable, str(Path(__file__).resolve()), "--driver-memory", str(cap)]
    if port is not None:
        args += ["--port", str(port)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@contextmanager
def jobmanager_process(address: str) -> Iterator[int]:
    """A JobManager in a process of its own on the cluster at ``address``; its port."""
    from sage.common.processes import spawn_module, terminate

    with tempfile.TemporaryDirectory() as home:
        env = {"SAGE_HOME": home}
        pid, port = spawn_module(
            "sage.kernel.jobmanager",
            ["--port", "0", "--ray-address", address],
            Path(home) / "jobmanager.log",
            timeout_s=120,
            env=env,
        )
        try:
            yield port
        finally:
            terminate(pid)


def collect_lines(local: Case, remote: Case, memory: dict[str, dict[str, Any]]) -> list[str]:
    rows = [
        ("local, all records", memory["local"]),
        ("remote, all records", memory["remote"]),
        (f"remote, max_records={COLLECT_CAP:,}", memory["capped"]),
    ]
    list_mb = (sys.getsizeof([0] * COLLECT_RECORDS) + 28 * COLLECT_RECORDS) / 2**20
    table = [
        f"### collect() of {COLLECT_RECORDS:,} records at the driver\n\n"
        f"`env.from_collection(range({COLLECT_RECORDS:,})).map(increment).collect()`: locally, "
        f"and through a JobManager in a process of its own running the job on the 3-node "
        f"cluster above (the records cross from the task's host to the JobManager over Ray, "
        f"then to the driver over HTTP, pickled in chunks of about 1 MB, with backpressure). "
        f"{len(local.seconds)} interleaved rounds after a warm-up; end-to-end: from submit() "
        f"to the last record in the driver's list; median (min-max).",
        "",
        "| case | records/s end-to-end | ratio to local | host steal |",
        "|---|---:|---|---:|",
        f"| LocalEnvironment | {rate_of(local.seconds, COLLECT_RECORDS)} | | {local.steal_pct} |",
        f"| RemoteEnvironment (JobManager process, Ray) | "
        f"{rate_of(remote.seconds, COLLECT_RECORDS)} | "
        f"{paired(local.seconds, remote.seconds):.2f}x local's time | {remote.steal_pct} |",
        "",
        f"The driver's memory, each case once in a fresh process: peak RSS growth from "
        f"submit() on (a list of {COLLECT_RECORDS:,} Python ints is about {list_mb:.0f} MB).",
        "",
        "| driver | ended with | records held | peak RSS growth |",
        "|---|---|---:|---:|",
    ]
    for name, m in rows:
        table.append(f"| {name} | {m['outcome']} | {m['held']:,} | {m['growth_mb']:.1f} MB |")
    return table


# -- reporting -------------------------------------------------------------------------------


def secs(values: list[float]) -> str:
    """``"1.23 s (1.20-1.31)"``: median and min-max."""
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def rate_of(seconds: list[float], records: int) -> str:
    rates = sorted(records / s for s in seconds)
    return f"{fmt_rate(statistics.median(rates))} ({fmt_rate(rates[0])}-{fmt_rate(rates[-1])})"


def paired(a: list[float], b: list[float]) -> float:
    """Median over rounds of ``b / a`` (how many times faster ``a`` was than ``b``)."""
    return statistics.median(y / x for x, y in zip(a, b, strict=True))


def placement_line(runs: RayRuns, node_ids: list[str]) -> str:
    """Tasks per node of the last run, by operator kind."""
    names = {nid: ("head" if i == 0 else f"worker {i}") for i, nid in enumerate(node_ids)}
    chains = {c.id: runs.plan.nodes[c.head].kind.value for c in runs.plan.chains}
    per_node: dict[str, Counter[str]] = {nid: Counter() for nid in node_ids}
    for task in runs.plan.tasks:
        per_node[runs.placement[task.id]][chains[task.chain_id]] += 1
    parts = []
    for nid in node_ids:
        kinds = per_node[nid]
        detail = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        parts.append(f"{names[nid]} {sum(kinds.values())} ({detail})")
    return "; ".join(parts)


def batching_line(runs: RayRuns) -> str:
    """What the last run's metrics say about its batches (per-record calls cost CPU)."""
    tasks = runs.metrics.tasks
    sink = next(t for t in tasks if t.operators[0].startswith("sink "))
    maps = [t for t in tasks if t.operators[0].startswith("map ")]
    busy = statistics.median(t.busy_s for t in maps)
    waited = IO_RECORDS / len(maps) * IO_WAIT_S
    per_batch = sink.records_in / max(sink.batches, 1)
    return (
        f"the sink received its {sink.records_in:,} records in {sink.batches:,} batches "
        f"({per_batch:.1f} records each), each batch a Ray call: a map instance working "
        f"through slow records sends what it has every `max_batch_delay_s` ("
        f"{RAY_MAX_BATCH_DELAY_S * 1000:.0f} ms by default on Ray); each map instance was "
        f"busy {busy:.2f} s (median) for {waited:.2f} s of waiting."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--write-readme", action="store_true")
    parser.add_argument("--driver-memory", type=int, help=argparse.SUPPRESS)  # a child's run
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver_memory is not None:
        print(json.dumps(driver_memory(args.port, args.driver_memory)))
        return
    try:
        import ray.data  # the peer; it needs pandas and pyarrow
    except ImportError as exc:
        sys.exit(f"distributed.py needs Ray Data: pip install 'ray[data]==2.60.0' ({exc})")
    ensure_loopback_namespace()
    # Ray's workers import the pipeline functions from this module (and kernel_throughput):
    # the nodes inherit this path when they start.
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), *([path] if path else [])])

    import ray

    io1_rounds = max(3, args.rounds - 2)  # the slow case; it has its cluster to itself
    one = RayRuns("1", io_pipeline(CPUS_PER_NODE), check_io)
    with ray_cluster(1) as (_, boot1):
        interleave([one.case], rounds=io1_rounds)
        one.drop_warmup(1)

    slots = 3 * CPUS_PER_NODE
    blocks = RAY_DATA_BLOCKS_PER_CPU * slots
    batch_size = -(-IO_RECORDS // blocks)
    three = RayRuns("3", io_pipeline(slots), check_io)
    raydata = Case("ray data", timed=lambda: ray_data_seconds(blocks, batch_size))
    local = Case("local", run_local)
    cpu1 = RayRuns("cpu1", cpu_pipeline(1), check_cpu)
    cpu3 = RayRuns("cpu3", cpu_pipeline(3), check_cpu)
    with ray_cluster(3) as (node_ids, boot3):
        quiet_ray_data()
        interleave([three.case, raydata], rounds=args.rounds)
        three.drop_warmup(1)
        placement = placement_line(three, node_ids)
        interleave([local, cpu1.case, cpu3.case], rounds=args.rounds)
        cpu1.drop_warmup(1)
        cpu3.drop_warmup(1)
        # the JobManager process and this one (and the drivers it starts) share a token
        os.environ[TOKEN_ENV] = os.environ.get(TOKEN_ENV) or "distributed-benchmark"
        with jobmanager_process(ray.get_runtime_context().gcs_address) as port:
            collect_local = Case("collect local", lambda: collect_once(None))
            collect_remote = Case("collect remote", lambda: collect_once(port))
            interleave([collect_local, collect_remote], rounds=args.rounds)
            memory = {
                "local": measure_driver(None, COLLECT_RECORDS),
                "remote": measure_driver(port, COLLECT_RECORDS),
                "capped": measure_driver(port, COLLECT_CAP),
            }

    ideal1 = IO_RECORDS * IO_WAIT_S / CPUS_PER_NODE
    ideal3 = IO_RECORDS * IO_WAIT_S / slots
    e2e_speedup = statistics.median(one.case.seconds) / statistics.median(three.case.seconds)
    run_speedup = statistics.median(one.run_s) / statistics.median(three.run_s)
    vs_data = paired(three.case.seconds, raydata.seconds)
    run_vs_data = paired(three.run_s, raydata.seconds)
    lines = [
        f"### I/O-bound map on 1 vs 3 nodes, and Ray Data on the same 3 nodes\n\n"
        f"{IO_RECORDS:,} records through a map that waits {IO_WAIT_S * 1e3:.0f} ms per record "
        f"(standing for a remote call) into a sink that discards them, default job settings. "
        f"Loopback Ray {ray.__version__} clusters whose nodes declare {CPUS_PER_NODE} CPUs "
        f"each (logical Ray resources: every node runs on this one machine); the map's "
        f"parallelism equals the cluster's CPU slots ({CPUS_PER_NODE} on 1 node, {slots} on "
        f"3), as a Flink job's follows its task slots; SAGE's tasks: the source, the map "
        f"instances, the sink. End-to-end: from building the job to its tear-down; run: "
        f"after every task had opened (`elapsed_s - startup_s`). Median (min-max). The "
        f"1-node cluster ran first, {io1_rounds} rounds, then the 3-node one (rounds cannot "
        f"interleave across clusters); on it SAGE and Ray Data ran interleaved, "
        f"{args.rounds} rounds; one warm-up round before each. The clusters took "
        f"{boot1:.1f} s (1 node) and {boot3:.1f} s (3 nodes) to start.",
        "",
        "| case | end-to-end | run | ideal run | ratio | target | host steal |",
        "|---|---:|---:|---:|---|---|---:|",
        f"| SAGE on Ray, 1 node, map parallelism {CPUS_PER_NODE} | {secs(one.case.seconds)} "
        f"| {secs(one.run_s)} | {ideal1:.2f} s | | | {one.case.steal_pct} |",
        f"| SAGE on Ray, 3 nodes, map parallelism {slots} | {secs(three.case.seconds)} "
        f"| {secs(three.run_s)} | {ideal3:.2f} s | **{run_speedup:.2f}x** 1 node (run), "
        f"{e2e_speedup:.2f}x (end-to-end) | >= 2.5x (run) | {three.case.steal_pct} |",
        f"| Ray Data `map_batches`, 3 nodes, {slots} CPUs | {secs(raydata.seconds)} | | "
        f"{ideal3:.2f} s | SAGE **{vs_data:.2f}x** Ray Data (end-to-end) | >= 1.0x "
        f"| {raydata.steal_pct} |",
        "",
        f"Speed-ups 3 vs 1 node: ratio of the medians (the clusters ran at different times). "
        f"SAGE vs Ray Data: median over rounds of Ray Data's time over SAGE's in the same "
        f"round; SAGE's run alone (without start-up) was {run_vs_data:.2f}x as fast as Ray "
        f"Data end to end. Tasks per node (3 nodes, last run): {placement}.",
        "",
        f"Where SAGE's time goes. Start-up (placing and starting the tasks on the cluster, "
        f"opening the functions; the {os.cpu_count()} cores of this machine do it for every "
        f"node): {statistics.median(one.startup_s):.2f} s for {len(one.placement)} tasks on "
        f"1 node, {statistics.median(three.startup_s):.2f} s for {len(three.placement)} on 3. "
        f"Run: {batching_line(three)}",
        "",
        f"Ray Data configuration: `ray.data.range({IO_RECORDS}, override_num_blocks={blocks})"
        f".map_batches(fn, batch_size={batch_size}, batch_format='numpy').materialize()`: "
        f"{blocks} blocks of {batch_size} rows, each one task of 1 CPU (the default) with the "
        f"read fused into the map, so {slots} tasks run at once; the function waits "
        f"{IO_WAIT_S * 1e3:.0f} ms per row, like SAGE's map. One block per CPU was the fastest "
        f"of 1, 2, 3, 4, 8 and 15 blocks per CPU tried on this machine (smaller blocks add "
        f"tasks, each with its scheduling cost). Both reuse processes from one run to the "
        f"next: Ray Data's tasks run in Ray's pooled worker processes, SAGE's tasks in its "
        f"pooled task hosts (actors that outlive jobs; the warm-up round started them).",
        "",
        f"### Chained CPU-bound pipeline: local vs Ray\n\n"
        f"{CPU_RECORDS:,} integers through kernel_throughput's 5 maps and a filter into a "
        f"discarding sink, all fused into one task per instance (every operator at the same "
        f"parallelism); Ray: the 3-node cluster above. {args.rounds} interleaved rounds after "
        f"a warm-up; records/s: median (min-max); ratio: median over rounds, paired with the "
        f"local run of the same round. Run: without the job's start-up.",
        "",
        "| case | records/s end-to-end | records/s run | ratio to local | host steal |",
        "|---|---:|---:|---|---:|",
        f"| SAGE local runtime, parallelism 1 | {rate_of(local.seconds, CPU_RECORDS)} | | "
        f"| {local.steal_pct} |",
    ]
    for runs, p in ((cpu1, 1), (cpu3, 3)):
        ratio_e2e = paired(runs.case.seconds, local.seconds)
        ratio_run = paired(runs.run_s, local.seconds)
        lines.append(
            f"| SAGE on Ray, 3 nodes, parallelism {p} | {rate_of(runs.case.seconds, CPU_RECORDS)} "
            f"| {rate_of(runs.run_s, CPU_RECORDS)} | {ratio_e2e:.2f}x end-to-end, "
            f"{ratio_run:.2f}x run | {runs.case.steal_pct} |"
        )
    lines += [
        "",
        f"Start-up per job: {statistics.median(cpu1.startup_s):.2f} s (parallelism 1, "
        f"{len(cpu1.placement)} task), {statistics.median(cpu3.startup_s):.2f} s (parallelism "
        f"3, {len(cpu3.placement)} tasks). The 3 nodes share this machine's "
        f"{os.cpu_count()} cores, so parallelism 3 has {os.cpu_count()} cores' worth of "
        f"Python at most.",
        "",
        *collect_lines(collect_local, collect_remote, memory),
    ]
    report("distributed", "Distributed runtime (Ray)", lines, args.write_readme)


if __name__ == "__main__":
    main()
