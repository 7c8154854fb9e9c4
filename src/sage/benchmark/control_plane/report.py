"""Reports of a benchmark: Rich tables on screen, JSON, a PNG chart and an HTML page.

The tables are built once as plain rows (:class:`TableData`) and rendered twice, by Rich for
the terminal and as HTML for the report page, so both always show the same figures. The
HTML page is self-contained: its chart is embedded as a base64 PNG.

Without matplotlib the PNG is skipped with a logged warning (``pip install
'sage-flow[cpbench]'``); JSON and HTML are written regardless.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from sage.benchmark.control_plane.cost_served import InstanceCost, RunCost, format_cost
from sage.benchmark.control_plane.metrics import GroupMetrics
from sage.benchmark.control_plane.runner import BenchmarkResult, PolicyRun
from sage.cli.render import format_latency

__all__ = [
    "TableData",
    "chart_png",
    "cost_table",
    "format_rate",
    "format_share",
    "html_page",
    "html_report",
    "report_tables",
    "rich_table",
    "summary_lines",
    "to_json",
    "write_charts",
    "write_page",
    "write_reports",
]

logger = logging.getLogger(__name__)


@dataclass
class TableData:
    """A table as text cells: what both the terminal and the HTML page show."""

    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)


def format_share(value: float) -> str:
    """A share (0..1) as a percentage: ``97.5%``."""
    return f"{value * 100:.1f}%"


def format_rate(value: float) -> str:
    """A rate per second: one decimal below 100, whole numbers above."""
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _group_cells(group: GroupMetrics, ttft: bool) -> list[str]:
    cells = [
        str(group.requests),
        str(group.failed),
        format_rate(group.throughput_rps),
        format_rate(group.tokens_per_s) if group.output_tokens else "-",
        format_rate(group.texts_per_s) if group.texts else "-",
        format_latency(group.latency.p50_ms),
        format_latency(group.latency.p95_ms),
        format_latency(group.latency.p99_ms),
    ]
    if ttft:
        cells += [
            format_latency(group.ttft.p50_ms) if group.ttft.count else "-",
            format_latency(group.ttft.p95_ms) if group.ttft.count else "-",
        ]
    return [*cells, format_share(group.slo_attainment)]


_GROUP_HEADERS = ["requests", "failed", "req/s", "tokens/s", "texts/s", "p50", "p95", "p99"]


def _has_ttft(result: BenchmarkResult) -> bool:
    return any(run.metrics.overall.ttft.count for run in result.runs)


def _priced(result: BenchmarkResult) -> bool:
    return any(run.cost is not None for run in result.runs)


def _cost_cells(cost: RunCost | None) -> list[str]:
    if cost is None:
        return ["-", "-"]
    return [format_cost(cost.total), format_cost(cost.per_1k_requests)]


def _price(instance: InstanceCost) -> str:
    """An instance's declared cost per 1k tokens (``-``: none)."""
    return "-" if instance.cost_per_1k_tokens is None else f"{instance.cost_per_1k_tokens:g}"


def cost_table(result: BenchmarkResult) -> TableData:
    """Per policy and instance: its declared cost, the requests it answered, their share of
    its kind's, and the cost it served (priced runs only)."""
    table = TableData(
        "cost served per instance",
        ["policy", "instance", "cost/1k tokens", "requests", "share", "cost"],
    )
    for run in result.runs:
        for i in run.cost.instances if run.cost is not None else ():
            table.rows.append(
                [
                    run.policy,
                    f"{i.instance_id} ({i.kind})",
                    _price(i),
                    str(i.requests),
                    format_share(i.share),
                    "-" if i.cost is None else format_cost(i.cost),
                ]
            )
    return table


def report_tables(result: BenchmarkResult) -> list[TableData]:
    """The tables of a result: policies side by side, then every group, then errors; with
    priced instances, ``cost`` and ``cost/1k req`` columns and a table of instances."""
    ttft = _has_ttft(result)
    headers = [*_GROUP_HEADERS, *(["TTFT p50", "TTFT p95"] if ttft else []), "SLO met"]
    classes = [c.name for c in result.config.classes]
    priority = {c.name: c.priority for c in result.config.classes}
    priced = _priced(result)
    overview = TableData(
        f"sage-cp-bench {result.command}: {result.config.mode} mode, "
        f"{result.trace_requests} requests at {result.rate:,.2f} req/s",
        [
            "policy",
            *headers,
            *(f"SLO {name}" for name in classes),
            *(["cost", "cost/1k req"] if priced else []),
        ],
    )
    groups = TableData("per kind and class (and priority, tenant)", ["policy", "group", *headers])
    errors = TableData("errors", ["policy", "kind", "count", "message"])
    for run in result.runs:
        m = run.metrics
        per_class = [
            format_share(m.by_class[name].slo_attainment) if name in m.by_class else "-"
            for name in classes
        ]
        costs = _cost_cells(run.cost) if priced else []
        overview.rows.append([run.policy, *_group_cells(m.overall, ttft), *per_class, *costs])
        rows = [(g.name, g) for g in m.by_kind.values()] if len(m.by_kind) > 1 else []
        rows += [(f"{g.name} (priority {priority[g.name]})", g) for g in m.by_class.values()]
        if len(m.by_priority) != len(m.by_class):  # else the class rows say it all
            rows += [(g.name, g) for g in m.by_priority.values()]
        rows += [(f"tenant {g.name}", g) for g in m.by_tenant.values()]
        groups.rows += [[run.policy, label, *_group_cells(g, ttft)] for label, g in rows]
        for kind, messages in m.errors.items():
            for message, count in messages.items():
                errors.rows.append([run.policy, kind, str(count), message])
    return [
        overview,
        groups,
        *([cost_table(result)] if priced else []),
        *([errors] if errors.rows else []),
    ]


def summary_lines(result: BenchmarkResult) -> list[str]:
    """What was run: load and capacity, models, instances, events; one fact a line."""
    config = result.config
    lines = []
    if result.capacity is not None:
        cap = result.capacity
        kinds = ", ".join(f"{k} {v:,.1f} req/s" for k, v in cap.per_kind.items())
        lines.append(
            f"offered {result.rate:,.2f} req/s = {result.load or 0:.2f}x the estimated capacity "
            f"{cap.total_rps:,.2f} req/s ({kinds}; from the {cap.source})"
        )
        lines += cap.notes
    else:
        lines.append(f"offered {result.rate:,.2f} req/s (given; capacity not estimated)")
    where = config.control_plane_url or f"its own gateway over {config.engine} instances"
    lines.append(
        f"target: {where}; models: "
        + ", ".join(f"{k} {v}" for k, v in result.models.items())
        + f"; arrivals {config.arrival_pattern}; seed {config.seed}"
    )
    if config.tenants:
        total = sum(t.share for t in config.tenants)
        tenants = ", ".join(
            f"{t.name} (weight {t.weight:g}, {t.share / total:.0%} of the load)"
            for t in config.tenants
        )
        order = "weighted fair share" if config.fair_share else "the policy's order (no fair share)"
        lines.append(f"tenants: {tenants}; served by {order}")
    if config.control_plane_url is not None and len(result.runs) > 1:
        lines.append(
            "the policies ran one after another on the same gateway (switched at run time), "
            "so its state carries over from one to the next"
        )
    for run in result.runs:
        m = run.metrics
        if m.send_lag_p99_ms > 100:
            lines.append(
                f"{run.policy}: the client sent late (p99 {m.send_lag_p99_ms:.0f} ms): it was "
                "short of CPU, latencies include that"
            )
        for event in run.events:
            lines.append(f"{run.policy}: at {event['at_s']:.1f} s: {event['event']}")
        if run.cost is not None:
            lines.append(_cost_line(run.policy, run.cost))
        if m.overall.failed or run.events:
            kinds = ", ".join(f"{g.failed} {g.name}" for g in m.by_kind.values())
            lines.append(
                f"{run.policy}: {m.overall.failed} failed ({kinds}): {m.failed_idempotent} "
                f"idempotent (retryable), {m.failed_streaming} streamed"
            )
    return lines


def _cost_line(policy: str, cost: RunCost) -> str:
    shares = ", ".join(
        f"{i.instance_id} ({_price(i)}/1k tokens) {format_share(i.share)}" for i in cost.instances
    )
    return (
        f"{policy}: cost served {format_cost(cost.total)} ({format_cost(cost.per_1k_requests)} "
        f"per 1k requests); requests per instance: {shares}"
    )


def rich_table(data: TableData) -> Table:
    """A Rich rendering of ``data`` (numbers right-aligned)."""
    table = Table(title=data.title)
    for i, header in enumerate(data.headers):
        text_column = header in ("policy", "group", "kind", "message", "instance")
        table.add_column(header, justify="left" if text_column else "right", no_wrap=i < 2)
    for row in data.rows:
        table.add_row(*row)
    return table


def to_json(result: BenchmarkResult) -> dict[str, Any]:
    """The whole result as JSON-ready data, every request's record included."""

    def run_dict(run: PolicyRun) -> dict[str, Any]:
        return {
            "policy": run.policy,
            "active_policy": run.active_policy,
            "metrics": run.metrics.to_dict(),
            **({"cost": run.cost.to_dict()} if run.cost is not None else {}),
            "events": run.events,
            "instances": run.instances,
            "cluster": run.cluster,
            "requests": [asdict(r) for r in run.records],
        }

    return {
        "benchmark": "sage-cp-bench",
        "command": result.command,
        "started_at": result.started_at,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "config": result.config.to_dict(),
        "models": result.models,
        "rate_rps": result.rate,
        "load": result.load,
        "capacity": asdict(result.capacity) if result.capacity else None,
        "trace_requests": result.trace_requests,
        "summary": summary_lines(result),
        "runs": [run_dict(run) for run in result.runs],
    }


def _bars(axis: Any, labels: list[str], series: dict[str, list[float]], ylabel: str) -> None:
    """Grouped bars: one group per label, one bar per series (policy)."""
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        axis.bar([x + i * width for x in range(len(labels))], values, width, label=name)
    axis.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(labels))], labels)
    axis.set_ylabel(ylabel)
    axis.grid(axis="y", alpha=0.3)


def chart_png(result: BenchmarkResult) -> bytes | None:
    """The chart as PNG bytes; ``None`` (with a warning) when matplotlib is missing.

    Four panels: SLO attainment per class, p95 latency per class, throughput per kind, and
    the most urgent class's latency over the run, one colour per policy.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning(
            "matplotlib is not installed: no PNG chart (the HTML report has the tables); "
            "install it with: pip install 'sage-flow[cpbench]'"
        )
        return None
    runs = result.runs
    classes = [c.name for c in sorted(result.config.classes, key=lambda c: c.priority)]

    def per_class(metric: Callable[[GroupMetrics], float]) -> dict[str, list[float]]:
        return {
            run.policy: [
                metric(run.metrics.by_class[c]) if c in run.metrics.by_class else 0.0
                for c in classes
            ]
            for run in runs
        }

    figure = Figure(figsize=(12, 8), layout="constrained")
    (slo, p95), (throughput, timeline) = figure.subplots(2, 2)
    _bars(slo, classes, per_class(lambda g: g.slo_attainment * 100), "SLO met (%)")
    slo.set_ylim(0, 105)
    slo.set_title("SLO attainment per class")
    slo.legend()
    _bars(p95, classes, per_class(lambda g: g.latency.p95_ms / 1e3), "p95 latency (s)")
    p95.set_title("p95 latency per class")
    kinds = sorted({k for run in runs for k in run.metrics.by_kind})
    labels = [f"{k} req/s" for k in kinds]
    rates = {
        run.policy: [
            run.metrics.by_kind[k].throughput_rps if k in run.metrics.by_kind else 0.0
            for k in kinds
        ]
        for run in runs
    }
    if "embedding" in kinds:
        labels.append("embedding texts/s / 10")
        for run in runs:
            emb = run.metrics.by_kind.get("embedding")
            rates[run.policy].append(emb.texts_per_s / 10 if emb else 0.0)
    _bars(throughput, labels, rates, "per second")
    throughput.set_title("throughput")
    urgent = classes[0]
    for run in runs:
        ok = [
            (r.scheduled_s, r.latency_s) for r in run.records if r.request_class == urgent and r.ok
        ]
        timeline.scatter([t for t, _ in ok], [lat for _, lat in ok], s=6, label=run.policy)
    slo_s = next(c.slo_ms for c in result.config.classes if c.name == urgent) / 1e3
    timeline.axhline(slo_s, color="grey", linestyle="--", linewidth=1, label=f"SLO {slo_s:g} s")
    timeline.set_xlabel("arrival (s into the trace)")
    timeline.set_ylabel("latency (s)")
    timeline.set_title(f"{urgent} latency over the run")
    timeline.legend()
    figure.suptitle(summary_lines(result)[0], fontsize=9)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=100)
    return out.getvalue()


def _html_table(data: TableData) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in data.headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in data.rows
    )
    title = html.escape(data.title)
    return f"<h2>{title}</h2>\n<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, td:nth-child(2) { text-align: left; }
li { margin: 0.2em 0; }
img { max-width: 100%; border: 1px solid #ddd; }
"""


def html_page(
    title: str, started_at: str, summary: list[str], png: bytes | None, tables: list[TableData]
) -> str:
    """A self-contained HTML page: what ran (``summary``), the chart (inline), ``tables``."""
    items = "".join(f"<li>{html.escape(line)}</li>" for line in summary)
    chart = (
        f'<img alt="chart" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        if png is not None
        else "<p>(no chart: matplotlib is not installed)</p>"
    )
    body = "\n".join(_html_table(t) for t in tables)
    title = html.escape(title)
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{_STYLE}</style></head>\n<body><h1>{title}</h1>\n"
        f"<p>{html.escape(started_at)}</p><ul>{items}</ul>\n{chart}\n{body}\n"
        "</body></html>\n"
    )


def html_report(result: BenchmarkResult, png: bytes | None) -> str:
    """A self-contained HTML page: what ran, the chart (inline), every table."""
    title = f"sage-cp-bench {result.command} ({result.config.mode})"
    return html_page(title, result.started_at, summary_lines(result), png, report_tables(result))


def write_reports(
    result: BenchmarkResult, output_dir: Path | None = None, *, charts: bool = True
) -> dict[str, Path]:
    """Write ``<name>.json``, and unless ``charts`` is false ``<name>.png`` (with
    matplotlib) and ``<name>.html``.

    Returns:
        The paths written, by format.
    """
    folder = output_dir or result.config.output_dir
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / f"{result.name}.json"}
    paths["json"].write_text(json.dumps(to_json(result), indent=1), encoding="utf-8")
    if charts:
        paths.update(write_charts(result, folder / result.name))
    return paths


def write_charts(result: BenchmarkResult, stem: Path) -> dict[str, Path]:
    """Write ``<stem>.png`` (with matplotlib) and ``<stem>.html``; the paths, by format."""
    png = chart_png(result)
    return write_page(stem, png, html_report(result, png))


def write_page(stem: Path, png: bytes | None, html: str) -> dict[str, Path]:
    """Write ``<stem>.png`` (when there is a chart) and ``<stem>.html``; the paths, by format."""
    paths: dict[str, Path] = {}
    if png is not None:
        paths["png"] = stem.with_name(stem.name + ".png")
        paths["png"].write_bytes(png)
    paths["html"] = stem.with_name(stem.name + ".html")
    paths["html"].write_text(html, encoding="utf-8")
    return paths
