"""Shared helpers of the benchmarks: machine description, interleaved timing, README tables."""

from __future__ import annotations

import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

README = Path(__file__).with_name("README.md")


def machine() -> str:
    """One line describing where the figures come from."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            kb = int(fh.readline().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def cpu_ticks() -> tuple[int, int]:
    """(stolen, total) CPU ticks of this machine so far; (0, 0) where /proc/stat is missing.

    On a virtual machine, "steal" is time the hypervisor gave our vCPUs to someone else;
    a run with much of it is slowed by the host, not by the code.
    """
    try:
        with open("/proc/stat", encoding="utf-8") as fh:
            fields = [int(v) for v in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0, 0
    return fields[7], sum(fields)


def busy_cpu_s() -> float:
    """CPU seconds this machine has spent busy (any process) so far; 0 without /proc/stat."""
    try:
        with open("/proc/stat", encoding="utf-8") as fh:
            ticks = [int(v) for v in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait


@dataclass
class Case:
    """A timed case: ``run()`` does the work and returns how many records it handled.

    A case that times only part of its run (the work inside a job, not the job around it)
    gives ``timed`` instead: it does the work and returns the seconds that part took.
    """

    name: str
    run: Callable[[], int] = lambda: 0
    seconds: list[float] = field(default_factory=list)
    steal: list[float] = field(default_factory=list)
    records: int = 0
    timed: Callable[[], float] | None = None

    @property
    def steal_pct(self) -> str:
        """Median share of CPU time stolen by the host while this case ran."""
        return f"{statistics.median(self.steal) * 100:.0f}%" if self.steal else "n/a"

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        """Records per second at the median time."""
        return self.records / self.median_s

    def ratio_to(self, base: Case) -> float:
        """Median over rounds of this case's speed relative to ``base`` in the same round.

        Paired per round (the two ran back to back), so drift in machine speed between
        rounds cancels out better than in a ratio of two medians.
        """
        return statistics.median(
            (b / base.records) / (s / self.records)
            for s, b in zip(self.seconds, base.seconds, strict=True)
        )

    def spread(self) -> str:
        """``"min-max"`` records/s over the rounds."""
        rates = sorted(self.records / s for s in self.seconds)
        return f"{fmt_rate(rates[0])}-{fmt_rate(rates[-1])}"


def interleave(cases: list[Case], rounds: int, warmup: int = 1) -> None:
    """Run every case once per round, in turn, so drifting machine speed hits all alike.

    Odd rounds run the cases in reverse order, so a trend within a round cancels out.
    """
    for i in range(warmup + rounds):
        for case in cases if i % 2 == 0 else reversed(cases):
            stolen, total = cpu_ticks()
            if case.timed is not None:
                elapsed, records = case.timed(), case.records
            else:
                start = time.perf_counter()
                records = case.run()
                elapsed = time.perf_counter() - start
            stolen2, total2 = cpu_ticks()
            if i >= warmup:
                case.seconds.append(elapsed)
                case.steal.append((stolen2 - stolen) / max(total2 - total, 1))
                case.records = records


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` in Prometheus text whose labels include ``labels``."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name)
        and line[len(name)] in " {"
        and all(label in line for label in wanted)
    )


def fmt_rate(rate: float) -> str:
    """``"2.31 M"`` / ``"512 k"`` records per second."""
    return f"{rate / 1e6:.2f} M" if rate >= 1e6 else f"{rate / 1e3:.0f} k"


def write_readme_section(name: str, markdown: str) -> None:
    """Replace this benchmark's section of ``benchmarks/README.md`` (between its markers)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = README.read_text(encoding="utf-8") if README.exists() else "# Benchmarks\n"
    block = f"{start}\n{markdown.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    README.write_text(text, encoding="utf-8")


def report(name: str, title: str, lines: list[str], write_readme: bool) -> None:
    """Print a benchmark's table (ending with the machine line) and optionally store it."""
    table = "\n".join([*lines, "", f"Machine: {machine()}."])
    print(table)
    if write_readme:
        write_readme_section(name, f"## {title}\n\n{table}")


def report_checked(
    name: str, title: str, lines: list[str], errors: list[str], write_readme: bool
) -> None:
    """:func:`report`, listing ``errors`` (wrong results) if any: then the README is left as
    it was and the process exits 1."""
    if errors:
        lines = [*lines, "", "**Wrong results**:", "", *(f"- {e}" for e in errors)]
    report(name, title, lines, write_readme and not errors)
    if errors:
        sys.exit(1)
