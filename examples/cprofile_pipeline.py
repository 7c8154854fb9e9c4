"""Profiling a pipeline with cProfile: the seed's ``profile_pipeline()``, runnable.

Reproduces 《性能调优》 → 性能分析 → 使用 cProfile 分析 of the design document (seed 003).
The ``profile_pipeline()`` block is copied verbatim; the ``run_my_pipeline()`` it calls is
defined here: a small SAGE pipeline that parses 2,000 log lines, keeps the errors and
fingerprints them.

``cProfile`` only sees the thread that enabled it. ``env.submit()`` runs the first task of a
job in the calling thread and every other task on its own thread; ``run_my_pipeline`` keeps
every operator at parallelism 1 so SAGE fuses the whole pipeline into that one task, and the
profile shows the operators' own functions (``ParseLogLine.execute``...). With parallel or
unfused operators, use ``env.metrics()`` for per-operator timings instead (see
``examples/profiled_operator.py``).

Run it with ``python examples/cprofile_pipeline.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import sys

from sage.common.core.functions.map_function import MapFunction
from sage.kernel.api.local_environment import LocalEnvironment

# ---- seed block: 使用 cProfile 分析 (verbatim) ----------------------------------------------
# fmt: off
# isort: off
import cProfile
import pstats
from io import StringIO

def profile_pipeline():
    """对 Pipeline 进行性能分析"""
    profiler = cProfile.Profile()
    profiler.enable()

    # 运行你的 Pipeline
    run_my_pipeline()

    profiler.disable()

    # 输出分析结果
    stream = StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    stats.sort_stats('cumulative')
    stats.print_stats(20)
    print(stream.getvalue())
# isort: on
# fmt: on
# ---- end of seed block ----------------------------------------------------------------------

N_LINES = 2000
LEVELS = ("INFO", "DEBUG", "WARN", "INFO", "ERROR")  # every 5th line is an error
_LINE = re.compile(r"^(?P<ts>\d{2}:\d{2}:\d{2}) (?P<level>[A-Z]+) \[(?P<svc>\w+)\] (?P<msg>.*)$")
_SERVICES = ("gateway", "embedder", "retriever", "generator")


def log_line(i: int) -> str:
    """Log line ``i`` of the input."""
    return (
        f"{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d} {LEVELS[i % 5]} "
        f"[{_SERVICES[i % 4]}] request {i} finished in {i % 97} ms"
    )


class ParseLogLine(MapFunction):
    """Parses a log line into ``{"ts", "level", "svc", "msg"}`` (unparsable: ``None``)."""

    def execute(self, data: str) -> dict[str, str] | None:
        match = _LINE.match(data)
        return None if match is None else match.groupdict()


class Fingerprint(MapFunction):
    """Adds a SHA-256 fingerprint of the message (some CPU work for the profile to show)."""

    def execute(self, data: dict[str, str]) -> dict[str, str]:
        digest = data["msg"].encode()
        for _ in range(500):  # enough that the operator outweighs building the plan
            digest = hashlib.sha256(digest).digest()
        return {**data, "fingerprint": digest.hex()[:16]}


def run_my_pipeline() -> list[dict[str, str]]:
    """The pipeline ``profile_pipeline()`` profiles: parse, keep errors, fingerprint."""
    errors: list[dict[str, str]] = []
    env = LocalEnvironment("log_errors")
    (
        env.from_collection([log_line(i) for i in range(N_LINES)])
        .map(ParseLogLine)
        .filter(lambda rec: rec["level"] == "ERROR")
        .map(Fingerprint)
        .sink(errors.append)
    )
    env.submit()
    print(f"run_my_pipeline: {N_LINES} log lines -> {len(errors)} errors")
    return errors


def main() -> str:
    """Run ``profile_pipeline()``; print and return everything it printed (the report)."""
    captured = StringIO()
    with contextlib.redirect_stdout(captured):
        profile_pipeline()
    report = captured.getvalue()
    sys.stdout.write(report)
    return report


if __name__ == "__main__":
    main()
