"""Reports of a load sweep: its table, a chart of the load curve, JSON and an HTML page.

The table has one row per offered rate (and policy): offered rate, achieved throughput,
p50/p99 latency, TTFT (streamed chats), SLO attainment and failures. The chart draws
latency, SLO attainment and throughput against the offered rate, one line per policy.
The page and the tables come from :mod:`.report`, so a sweep's page looks like a run's.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from sage.benchmark.control_plane.report import (
    TableData,
    format_rate,
    format_share,
    html_page,
    summary_lines,
    write_page,
)
from sage.benchmark.control_plane.sweep import SweepResult, sweep_points, sweep_to_json
from sage.cli.render import format_latency

__all__ = [
    "sweep_chart_png",
    "sweep_html",
    "sweep_summary",
    "sweep_tables",
    "write_sweep_charts",
    "write_sweep_reports",
]

logger = logging.getLogger(__name__)


def _ms(value: float | None) -> str:
    return "-" if value is None else format_latency(value)


def sweep_tables(sweep: SweepResult) -> list[TableData]:
    """The load curve as a table (one row per rate and policy), then the errors, if any."""
    points = sweep_points(sweep)
    ttft = any(p["ttft_p50_ms"] is not None for p in points)
    load = any(p["load"] is not None for p in points)
    config = sweep.config
    count = f"{config.duration_s:g} s" if config.duration_s else f"{config.num_requests} requests"
    table = TableData(
        f"sage-cp-bench sweep: {config.mode} mode, {count} per rate",
        [
            "rate",
            *(["load"] if load else []),
            "policy",
            "req/s",
            "p50",
            "p99",
            *(["TTFT p50", "TTFT p99"] if ttft else []),
            "SLO met",
            "failed",
        ],
    )
    for p in points:
        table.rows.append(
            [
                format_rate(p["rate_rps"]),
                *([f"{p['load']:.2f}x" if p["load"] is not None else "-"] if load else []),
                p["policy"],
                format_rate(p["throughput_rps"]),
                format_latency(p["latency_p50_ms"]),
                format_latency(p["latency_p99_ms"]),
                *([_ms(p["ttft_p50_ms"]), _ms(p["ttft_p99_ms"])] if ttft else []),
                format_share(p["slo_attainment"]),
                f"{p['failed']}/{p['requests']}",
            ]
        )
    errors = TableData("errors", ["rate", "policy", "kind", "count", "message"])
    for result in sweep.results:
        for run in result.runs:
            for kind, messages in run.metrics.errors.items():
                for message, n in messages.items():
                    rate = format_rate(result.rate)
                    errors.rows.append([rate, run.policy, kind, str(n), message])
    return [table, *([errors] if errors.rows else [])]


def sweep_summary(sweep: SweepResult) -> list[str]:
    """What was swept: rates, capacity, target, and each rate's events and failures."""
    config = sweep.config
    rates = ", ".join(f"{r:g}" for r in sweep.rates)
    lines = [
        f"{', '.join(config.policies)} at {rates} req/s offered: the same seeded requests at "
        "every rate, each rate on fresh instances"
    ]
    first = sweep.results[0] if sweep.results else None
    if first is not None and first.capacity is not None:
        cap = first.capacity
        lines.append(f"estimated capacity {cap.total_rps:,.2f} req/s (from the {cap.source})")
    if first is not None:
        lines += [line for line in summary_lines(first) if line.startswith("target: ")]
    for result in sweep.results:
        runs = tuple(f"{run.policy}: " for run in result.runs)  # events, failures, lag
        lines += [
            f"at {result.rate:g} req/s, {line}"
            for line in summary_lines(result)
            if line.startswith(runs)
        ]
    return lines


def sweep_chart_png(sweep: SweepResult) -> bytes | None:
    """The load curve as PNG bytes; ``None`` (with a warning) when matplotlib is missing.

    Three panels against the offered rate: p50 (solid) and p99 (dashed) latency, SLO
    attainment, and achieved throughput (the dotted diagonal is "all offered load served").
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning(
            "matplotlib is not installed: no PNG chart (the HTML report has the table); "
            "install it with: pip install 'sage-flow[cpbench]'"
        )
        return None
    points = sweep_points(sweep)
    policies = list(dict.fromkeys(p["policy"] for p in points))
    figure = Figure(figsize=(15, 4.5), layout="constrained")
    latency, slo, throughput = figure.subplots(1, 3)
    for policy in policies:
        mine = [p for p in points if p["policy"] == policy]
        rates = [p["rate_rps"] for p in mine]
        (line,) = latency.plot(
            rates, [p["latency_p50_ms"] / 1e3 for p in mine], marker="o", label=f"{policy} p50"
        )
        latency.plot(
            rates,
            [p["latency_p99_ms"] / 1e3 for p in mine],
            marker="o",
            linestyle="--",
            color=line.get_color(),
            label=f"{policy} p99",
        )
        slo.plot(rates, [p["slo_attainment"] * 100 for p in mine], marker="o", label=policy)
        throughput.plot(rates, [p["throughput_rps"] for p in mine], marker="o", label=policy)
    top = max(sweep.rates, default=1.0)
    throughput.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1)
    for axis, ylabel, title in (
        (latency, "latency (s)", "latency"),
        (slo, "SLO met (%)", "SLO attainment"),
        (throughput, "achieved req/s", "throughput"),
    ):
        axis.set_xlabel("offered load (req/s)")
        axis.set_ylabel(ylabel)
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    slo.set_ylim(0, 105)
    figure.suptitle(sweep_summary(sweep)[0], fontsize=9)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=100)
    return out.getvalue()


def sweep_html(sweep: SweepResult, png: bytes | None) -> str:
    """A self-contained HTML page: what was swept, the chart (inline), the tables."""
    title = f"sage-cp-bench sweep ({sweep.config.mode})"
    return html_page(title, sweep.started_at, sweep_summary(sweep), png, sweep_tables(sweep))


def write_sweep_charts(sweep: SweepResult, stem: Path) -> dict[str, Path]:
    """Write ``<stem>.png`` (with matplotlib) and ``<stem>.html``; the paths, by format."""
    png = sweep_chart_png(sweep)
    return write_page(stem, png, sweep_html(sweep, png))


def write_sweep_reports(
    sweep: SweepResult, output_dir: Path | None = None, *, charts: bool = True
) -> dict[str, Path]:
    """Write ``<name>.json``, and unless ``charts`` is false the PNG and the HTML page.

    Returns:
        The paths written, by format.
    """
    folder = output_dir or sweep.config.output_dir
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / f"{sweep.name}.json"}
    paths["json"].write_text(json.dumps(sweep_to_json(sweep), indent=1), encoding="utf-8")
    if charts:
        paths.update(write_sweep_charts(sweep, folder / sweep.name))
    return paths
