"""Charts and HTML pages rebuilt from saved results (``sage-cp-bench visualize``).

A results file of ``run`` or ``compare`` holds the configuration and every request's record;
one of ``sweep`` holds one such result per rate. That is all a chart needs: the figures are
recomputed from the records (:func:`~.metrics.summarize` is a pure function of them), so a
run made with ``--no-visualize``, on a machine without matplotlib, or before a chart changed
can be drawn later, anywhere.

Example:
    >>> paths = visualize(Path("cp_bench_results/run-llm-fifo-20250101T000000.json"))
    ... # doctest: +SKIP
    >>> sorted(paths)  # doctest: +SKIP
    ['html', 'png']
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sage.benchmark.control_plane.config import (
    BenchmarkConfig,
    LengthDistribution,
    RequestClass,
    TenantLoad,
    config_for_mode,
)
from sage.benchmark.control_plane.cost_served import RunCost
from sage.benchmark.control_plane.driver import RequestRecord
from sage.benchmark.control_plane.metrics import summarize
from sage.benchmark.control_plane.report import write_charts
from sage.benchmark.control_plane.runner import BenchmarkResult, Capacity, PolicyRun
from sage.benchmark.control_plane.sweep import SweepResult
from sage.benchmark.control_plane.sweep_report import write_sweep_charts
from sage.common.errors import ConfigError

__all__ = ["config_from_json", "load_results", "result_from_json", "visualize"]

_LENGTHS = ("prompt_tokens", "output_tokens", "texts_per_request", "text_tokens")


def config_from_json(data: dict[str, Any]) -> BenchmarkConfig:
    """The configuration a report's ``config`` holds (:meth:`BenchmarkConfig.to_dict`)."""
    values = dict(data)
    mode = values.pop("mode")
    values["classes"] = [RequestClass(**c) for c in values.get("classes", [])]
    values["tenants"] = [TenantLoad(**t) for t in values.get("tenants", [])]
    for name in _LENGTHS:
        if isinstance(values.get(name), dict):
            values[name] = LengthDistribution(**values[name])
    values["output_dir"] = Path(values.get("output_dir", "cp_bench_results"))
    return config_for_mode(mode, **values)


def result_from_json(data: dict[str, Any]) -> BenchmarkResult:
    """The :class:`BenchmarkResult` a ``run`` or ``compare`` report holds (its metrics
    recomputed from the records)."""
    runs = []
    for run in data["runs"]:
        records = [RequestRecord(**r) for r in run["requests"]]
        runs.append(
            PolicyRun(
                policy=run["policy"],
                active_policy=run["active_policy"],
                records=records,
                metrics=summarize(records),
                events=run.get("events", []),
                instances=run.get("instances", []),
                cluster=run.get("cluster", {}),
                cost=RunCost.from_dict(run["cost"]) if run.get("cost") else None,
            )
        )
    capacity = data.get("capacity")
    return BenchmarkResult(
        command=data["command"],
        config=config_from_json(data["config"]),
        rate=data["rate_rps"],
        capacity=Capacity(**capacity) if capacity else None,
        trace_requests=data["trace_requests"],
        runs=runs,
        started_at=data["started_at"],
        models=data.get("models", {}),
    )


def load_results(path: Path) -> BenchmarkResult | SweepResult:
    """The result a JSON report of ``run``, ``compare`` or ``sweep`` holds.

    Raises:
        ConfigError: the file cannot be read, or is not a report of ``sage-cp-bench``.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not JSON ({exc}); give a report sage-cp-bench wrote") from None
    if not isinstance(data, dict) or data.get("benchmark") != "sage-cp-bench":
        raise ConfigError(
            f'{path}: not a sage-cp-bench report (no "benchmark": "sage-cp-bench"); give '
            "the .json that run, compare or sweep wrote"
        )
    try:
        if data.get("command") == "sweep":
            return SweepResult(
                config=config_from_json(data["config"]),
                results=[result_from_json(r) for r in data["results"]],
                started_at=data["started_at"],
            )
        return result_from_json(data)
    except (KeyError, TypeError, ConfigError) as exc:
        raise ConfigError(
            f"{path}: a sage-cp-bench report this version cannot read ({type(exc).__name__}: "
            f"{exc}); rerun the benchmark to get a current one"
        ) from None


def visualize(path: Path, output_dir: Path | None = None) -> dict[str, Path]:
    """Rebuild the PNG chart (with matplotlib) and the HTML page of the report at ``path``,
    named after it, in ``output_dir`` (default: beside it).

    Returns:
        The paths written, by format.

    Raises:
        ConfigError: ``path`` is not a report (see :func:`load_results`).
    """
    result = load_results(path)
    folder = output_dir or path.parent
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / path.stem
    if isinstance(result, SweepResult):
        return write_sweep_charts(result, stem)
    return write_charts(result, stem)
