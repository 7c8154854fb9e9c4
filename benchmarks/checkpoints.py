"""Checkpoints: what aligned checkpoints and restarts cost on the local runtime, side by side.

One pipeline, the shape of ``tests/checkpoint_helpers.py``: a source function counting
``0..N-1`` whose position (``offset``) is its checkpointed state, ``keyby`` over 37 keys, a
keyed running count (``(key, value, count of the key so far)``, keyed state) with
parallelism 2, into a sink with parallelism 2 (fused with the count). Run in one process,
interleaved over several rounds (medians), in these configurations:

1. no fault tolerance, a sink that counts (the baseline);
2. checkpoints every 5 s, ``checkpoint_dir`` in a temporary directory on disk, same sink;
3. checkpoints every 0.5 s;
4. the output written as JSON lines: to a plain file per instance without fault tolerance
   (the file baseline), the same with checkpoints every 0.5 s (still no transactions), and
   with :class:`TransactionalFileSink` and checkpoints every 0.5 s (exactly-once output:
   pre-commit and fsync at each checkpoint, commit once it is complete);
5. recovery: case 3 where the count raises once at record ``N/2`` (first attempt only) and
   the job restarts from the last checkpoint (``fixed``, ``delay_s`` 0.01).

Every run is checked (exit 1 if one is wrong): the counting sink's counters are checkpointed
state, so even after the restart it must have seen each record once (record count, sum of the
values, and every row's count equal to its position among its key's records); a file sink's
output, read back (``read_committed`` for the transactional one), must hold each record once
with its exact count, and no uncommitted files.

Also measured, through the functions' checkpoint hooks (no timer of their own): a checkpoint's
duration (from the source's snapshot to the sink's ``notify_checkpoint_complete``, after the
checkpoint is written and fsynced) and the source's pause (from its snapshot until it reads
its next record: a task holds its output from its barrier until the tasks it sends to have
taken their snapshots, so this is the time they take to drain what was queued before it).
``--write-readme`` stores the table in README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import Case, busy_cpu_s, cpu_ticks, fmt_rate, interleave, report_checked
from sage.common.core.context import RuntimeContext
from sage.common.core.functions.map_function import MapFunction
from sage.common.core.functions.sink_function import SinkFunction
from sage.common.core.functions.source_function import SourceFunction, StopSignal
from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.checkpoint import TransactionalFileSink, read_committed
from sage.kernel.checkpoint.state import END_OF_INPUT

KEYS = 37
HANG_S = 120.0  # a run still going after this long is reported as hung


@dataclass
class Probe:
    """What the functions of one run report (every instance of the run shares it)."""

    fail_at: int = -1  # the record the count raises on, once (-1: never)
    failed_at: float | None = None
    recovered_at: float | None = None  # the failing record counted, after the restart
    snapshot_at: dict[int, float] = field(default_factory=dict)  # checkpoint id -> source
    resumed_at: dict[int, float] = field(default_factory=dict)  # its next record after it
    completed_at: dict[int, float] = field(default_factory=dict)  # first sink notified
    restored: list[tuple[int, float]] = field(default_factory=list)  # (offset, when)
    totals: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # sink instance


class Numbers(SourceFunction):
    """``0, 1, ..., n - 1``; the position is its checkpointed state."""

    def __init__(self, n: int, probe: Probe, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n, self.probe = n, probe
        self.offset = 0
        self._paused: int | None = None  # the checkpoint just taken, until the next record

    def execute(self) -> Any:
        if self._paused is not None:
            self.probe.resumed_at[self._paused] = time.perf_counter()
            self._paused = None
        if self.offset >= self.n:
            return StopSignal
        self.offset += 1
        return self.offset - 1

    def get_state(self, checkpoint_id: int) -> dict[str, int]:
        if checkpoint_id != END_OF_INPUT:
            self.probe.snapshot_at[checkpoint_id] = time.perf_counter()
            self._paused = checkpoint_id
        return {"offset": self.offset}

    def restore_state(self, state: dict[str, int]) -> None:
        self.offset = state["offset"]
        self.probe.restored.append((self.offset, time.perf_counter()))


class InjectedFailure(RuntimeError):
    pass


class RunningCount(MapFunction):
    """``(key, value, count of the key so far)``: keyed state; raises once at ``fail_at``."""

    def __init__(self, probe: Probe, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.probe = probe
        self.fail_at = probe.fail_at

    def execute(self, value: int) -> tuple[int, int, int]:
        if value == self.fail_at:
            if self.probe.failed_at is None:
                self.probe.failed_at = time.perf_counter()
                raise InjectedFailure(f"injected failure at record {value}")
            self.probe.recovered_at = time.perf_counter()
        count = self.state.get(0) + 1
        self.state.set(count)
        return value % KEYS, value, count


class CountingSink(SinkFunction):
    """Counts rows, sums their values and counts rows whose count is not their position
    among their key's records; the counters are checkpointed state."""

    state_fields = ("rows", "value_sum", "misplaced")

    def __init__(self, probe: Probe, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.probe = probe
        self.rows = self.value_sum = self.misplaced = 0

    def execute(self, row: tuple[int, int, int]) -> None:
        key, value, count = row
        self.rows += 1
        self.value_sum += value
        if count != value // KEYS + 1 or key != value % KEYS:
            self.misplaced += 1

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        if checkpoint_id == END_OF_INPUT:  # the job ended cleanly: these are the totals
            index = 0 if self.ctx is None else self.ctx.instance_index
            self.probe.totals[index] = (self.rows, self.value_sum, self.misplaced)
        else:
            self.probe.completed_at.setdefault(checkpoint_id, time.perf_counter())


class JsonLinesSink(SinkFunction):
    """The lines ``TransactionalFileSink`` writes, to one plain file per instance."""

    def __init__(self, directory: Path, probe: Probe, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.directory, self.probe = directory, probe
        self._file: Any = None

    def open(self, context: RuntimeContext) -> None:
        path = self.directory / f"part-{context.instance_index}.jsonl"
        self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - spans records

    def execute(self, data: Any) -> None:
        self._file.write(json.dumps(data) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        if checkpoint_id != END_OF_INPUT:
            self.probe.completed_at.setdefault(checkpoint_id, time.perf_counter())


class TimedTransactionalSink(TransactionalFileSink):
    """``TransactionalFileSink`` noting when each checkpoint completes."""

    def __init__(self, directory: Path, probe: Probe, **kwargs: Any) -> None:
        super().__init__(directory, **kwargs)
        self.probe = probe

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        if checkpoint_id != END_OF_INPUT:
            self.probe.completed_at.setdefault(checkpoint_id, time.perf_counter())
        super().notify_checkpoint_complete(checkpoint_id)


@dataclass
class Config:
    """One configuration of the pipeline."""

    name: str
    interval_s: float | None = None  # None: no fault tolerance
    sink: str = "count"  # "count", "file" (plain JSON lines) or "transactional"
    fail: bool = False


@dataclass
class Run:
    """What one run of a configuration reported, besides its time."""

    checkpoints: int
    restarts: int
    cpu_s: float  # this process's CPU time (every thread) during the run
    durations: list[float]
    pauses: list[float]
    restart_s: float | None = None  # failure -> the new attempt's source restored
    recovery_s: float | None = None  # failure -> the failing record counted after the restart
    replayed: int | None = None  # records read again after the restart


class Bench:
    """Runs the configurations; remembers each run's extra figures and any wrong result."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.runs: dict[str, list[Run]] = {}
        self.errors: list[str] = []
        self._seq = 0

    def case(self, config: Config, n: int) -> Case:
        """The timed case of ``config`` over ``n`` records."""
        self.runs[config.name] = []
        return Case(config.name, records=n, timed=lambda: self.run(config, n))

    def run(self, config: Config, n: int, warmup: bool = False) -> float:
        """Run ``config`` once over ``n`` records, check its output; its seconds."""
        self._seq += 1
        where = self.scratch / f"run-{self._seq}"
        out, ckpt = where / "out", where / "ckpt"
        out.mkdir(parents=True)
        probe = Probe(fail_at=n // 2 if config.fail else -1)
        settings: dict[str, Any] = {}
        if config.interval_s is not None:
            section: dict[str, Any] = {
                "strategy": "checkpoint",
                "checkpoint_dir": str(ckpt),
                "checkpoint_interval": config.interval_s,
            }
            if config.fail:
                section.update(restart_strategy="fixed", max_restarts=1, delay_s=0.01)
            settings["fault_tolerance"] = section
        env = LocalEnvironment("checkpoints", config=settings)
        counts = (
            env.from_source(Numbers, n, probe)
            .keyby(lambda v: v % KEYS)
            .map(RunningCount, probe, parallelism=2)
        )
        if config.sink == "count":
            counts.sink(CountingSink, probe, parallelism=2)
        elif config.sink == "file":
            counts.sink(JsonLinesSink, out, probe, parallelism=2)
        else:
            counts.sink(TimedTransactionalSink, out, probe, parallelism=2)
        start, cpu = time.perf_counter(), time.process_time()
        job = env.submit(autostop=False)
        try:
            ended = job.wait(HANG_S)
        except Exception as exc:
            self.errors.append(f"{config.name}: the job failed: {type(exc).__name__}: {exc}")
            ended = True
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        if not ended:
            self.errors.append(f"{config.name}: no end after {HANG_S:.0f} s (hung)")
            job.close()
        else:
            self._check(config, probe, out, n)
        if config.fail and (job.restarts != 1 or probe.failed_at is None):
            self.errors.append(f"{config.name}: {job.restarts} restarts, expected 1")
        taken = probe.snapshot_at
        run = Run(
            checkpoints=job.checkpoints_completed,
            restarts=job.restarts,
            cpu_s=cpu,
            durations=[probe.completed_at[i] - taken[i] for i in taken if i in probe.completed_at],
            pauses=[probe.resumed_at[i] - taken[i] for i in taken if i in probe.resumed_at],
        )
        if probe.failed_at is not None and probe.restored:
            offset, restored_at = probe.restored[-1]
            run.restart_s = restored_at - probe.failed_at
            run.replayed = probe.fail_at - offset
        if probe.failed_at is not None and probe.recovered_at is not None:
            run.recovery_s = probe.recovered_at - probe.failed_at
        if not warmup:
            self.runs[config.name].append(run)
        shutil.rmtree(where, ignore_errors=True)
        return elapsed

    def _check(self, config: Config, probe: Probe, out: Path, n: int) -> None:
        """Each record once, with its exact running count (else an error is noted)."""
        if config.sink == "count":
            rows = sum(t[0] for t in probe.totals.values())
            value_sum = sum(t[1] for t in probe.totals.values())
            misplaced = sum(t[2] for t in probe.totals.values())
            expected = (n, n * (n - 1) // 2, 0)
            if len(probe.totals) != 2 or (rows, value_sum, misplaced) != expected:
                self.errors.append(
                    f"{config.name}: the sinks saw {rows:,} rows (expected {n:,}), value sum "
                    f"{value_sum:,} (expected {expected[1]:,}), {misplaced:,} rows with a "
                    f"wrong count, from {len(probe.totals)} of 2 instances"
                )
            return
        # The committed lines (for the plain sink: all of them), "[key, value, count]" each,
        # parsed by numpy as a flat run of integers (json.loads would take seconds).
        text = "".join(read_committed(out, parse=str))
        leftovers = [p.name for p in out.iterdir() if not p.name.endswith(".jsonl")]
        numbers = text.replace("[", " ").replace("]", " ").replace(",", " ")
        try:
            flat = np.fromstring(numbers, dtype=np.int64, sep=" ")  # text mode: not deprecated
        except ValueError:
            flat = np.zeros(0, dtype=np.int64)
        lines = text.count("\n")
        if lines != n or flat.size != 3 * n:
            self.errors.append(
                f"{config.name}: {lines:,} lines holding {flat.size:,} integers (expected "
                f"{n:,} lines of 3)"
            )
            return
        key, value, count = flat.reshape(n, 3).T
        wrong = int(np.count_nonzero((key != value % KEYS) | (count != value // KEYS + 1)))
        once = bool((np.sort(value) == np.arange(n)).all())
        if wrong or not once or leftovers:
            self.errors.append(
                f"{config.name}: {wrong:,} rows with a wrong count; each value once: {once}; "
                f"uncommitted files: {leftovers[:5]}"
            )


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.0f} ms"


def _median_of_means(samples: list[list[float]]) -> str:
    """Median over runs of each run's mean (``-`` where no run has any)."""
    means = [statistics.mean(s) for s in samples if s]
    return _ms(statistics.median(means)) if means else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--records", type=int, default=1_500_000, help="per run with the counting sink"
    )
    parser.add_argument(
        "--file-records", type=int, default=400_000, help="per run with a file sink"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()
    # the restart's warning ("restarting in 0.01 s from checkpoint 3") is expected here
    logging.getLogger("sage.kernel.runtime.local.executor").setLevel(logging.ERROR)

    base = Config("no fault tolerance")
    every_5 = Config("checkpoints every 5 s", 5.0)
    every_05 = Config("checkpoints every 0.5 s", 0.5)
    failing = Config("checkpoints every 0.5 s, one failure and restart", 0.5, fail=True)
    file_base = Config("JSON lines file, no fault tolerance", sink="file")
    file_05 = Config("JSON lines file, checkpoints every 0.5 s, no transactions", 0.5, "file")
    txn_05 = Config("TransactionalFileSink, checkpoints every 0.5 s", 0.5, "transactional")
    counting = [base, every_5, every_05, failing]
    files = [file_base, file_05, txn_05]

    started, own_cpu, busy = time.perf_counter(), time.process_time(), busy_cpu_s()
    with tempfile.TemporaryDirectory(prefix="sage-bench-ckpt-") as scratch:
        bench = Bench(Path(scratch))
        sizes = {c.name: args.records for c in counting} | {
            c.name: args.file_records for c in files
        }
        cases = {c.name: bench.case(c, sizes[c.name]) for c in counting + files}
        for config in counting + files:  # warm-up: imports, code paths, the disk's first files
            bench.run(config, sizes[config.name] // 10, warmup=True)
        stolen, total = cpu_ticks()
        interleave(list(cases.values()), rounds=args.rounds, warmup=0)
        stolen2, total2 = cpu_ticks()
    wall = time.perf_counter() - started
    others = (busy_cpu_s() - busy - (time.process_time() - own_cpu)) / wall

    def ratio(config: Config, against: Config) -> str:
        return f"{cases[config.name].ratio_to(cases[against.name]):.2f}x {against.name}"

    ratios = {
        base.name: "",
        every_5.name: ratio(every_5, base),
        every_05.name: ratio(every_05, base),
        failing.name: ratio(failing, every_05),
        file_base.name: ratio(file_base, base),
        file_05.name: ratio(file_05, file_base),
        txn_05.name: f"{ratio(txn_05, file_base)}; {ratio(txn_05, file_05)}",
    }
    lines = [
        "A source function (its offset checkpointed) → keyby over "
        f"{KEYS} keys → keyed running count, parallelism 2 → sink, parallelism 2 (fused with "
        f"the count): 3 tasks; {args.records:,} records per run into the counting sink, "
        f"{args.file_records:,} into the file sinks. {args.rounds} interleaved rounds after a "
        "warm-up (each case once over a tenth of the records). records/s: median (min-max); "
        "ratio: median over rounds of the two cases' speeds in the same round; the other "
        "figures: medians over rounds of each run's figure (CPU: this process's CPU time, "
        "every thread, over the records; checkpoint duration, from the source's snapshot to "
        "the sink's `notify_checkpoint_complete`, and the source's pause, from its snapshot to "
        "its next record: the run's mean over its checkpoints). `checkpoint_dir`: a temporary "
        "directory on the local disk (ext4), a fresh one per run.",
        "",
        "| case | records/s | ratio | CPU per record | checkpoints | checkpoint duration "
        "| source pause per checkpoint | host steal |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for config in counting + files:
        case, runs = cases[config.name], bench.runs[config.name]
        cpu_us = statistics.median(r.cpu_s for r in runs) / case.records * 1e6
        lines.append(
            f"| {config.name} | {fmt_rate(case.rate)} ({case.spread()}) | "
            f"{ratios[config.name]} | {cpu_us:.2f} µs | "
            f"{statistics.median(r.checkpoints for r in runs):g} | "
            f"{_median_of_means([r.durations for r in runs])} | "
            f"{_median_of_means([r.pauses for r in runs])} | {case.steal_pct} |"
        )
    lines += [
        "",
        "A task holds its output from the moment it passes a barrier on until the tasks it "
        "sends to have taken their snapshots, so the source's pause is the time the next "
        "tasks take to work through what was queued before the barrier: short when the sink "
        "keeps up (the counting sink), long when the inboxes are full (the file sinks, slower per "
        "record). The checkpoint's duration adds writing it (pickle, fsync, rename) and "
        "notifying the functions, which the tasks do not wait for.",
    ]
    if statistics.median(r.checkpoints for r in bench.runs[every_5.name]) <= 1:
        lines += [
            "",
            f"A run of {args.records:,} records ends before or just after the first "
            "checkpoint at 5 s: that row is fault tolerance switched on with at most one "
            "checkpoint.",
        ]
    failed, plain = cases[failing.name], cases[every_05.name]
    extra = statistics.median(f - p for f, p in zip(failed.seconds, plain.seconds, strict=True))
    fail_runs = bench.runs[failing.name]

    def median_ms(values: list[float | None]) -> str:
        known = [v for v in values if v is not None]
        return _ms(statistics.median(known)) if known else "-"

    replayed = [r.replayed for r in fail_runs if r.replayed is not None]
    lines += [
        "",
        f"Recovery: the count raised once at record {args.records // 2:,} (mid-run); per run: "
        f"{statistics.median(r.restarts for r in fail_runs):g} restart, checkpoints "
        f"completed: {statistics.median(r.checkpoints for r in fail_runs):g}. From "
        "the failure to the new attempt's source restoring its offset: "
        f"{median_ms([r.restart_s for r in fail_runs])} (the restart delay is 10 ms); to the "
        "failing record counted again, i.e. the time lost (timed within the run, so free of "
        f"the run-to-run noise): **{median_ms([r.recovery_s for r in fail_runs])}**, most of "
        "it reading again the records from the last checkpoint's offset to the failing one: "
        f"{f'{statistics.median(replayed):,.0f}' if replayed else '-'}. The whole job took "
        f"{failed.median_s:.2f} s vs {plain.median_s:.2f} s without the failure (medians; "
        f"paired per round: {1 / failed.ratio_to(plain):.2f}x the time, {extra:+.2f} s); the "
        f"runs without the failure took {min(plain.seconds):.2f}-{max(plain.seconds):.2f} s.",
        "",
        f"The whole benchmark took {wall:.0f} s; host steal over it: "
        f"{(stolen2 - stolen) / max(total2 - total, 1):.0%}; other processes of this machine "
        f"kept {max(others, 0.0):.1f} of its {os.cpu_count()} CPUs busy on average meanwhile.",
    ]
    report_checked(
        "checkpoints", "Checkpoints (local runtime)", lines, bench.errors, args.write_readme
    )


if __name__ == "__main__":
    main()
