"""Rich renderings of plans and metrics for the command line and demos."""

from __future__ import annotations

from rich.table import Table

from sage.kernel.runtime.metrics import JobMetrics

__all__ = ["format_latency", "operator_table", "task_table"]


def format_latency(ms: float) -> str:
    """``"850 µs"``, ``"12.4 ms"`` or ``"1.20 s"``."""
    if ms < 1.0:
        return f"{ms * 1e3:.1f} µs"
    if ms < 1000.0:
        return f"{ms:.1f} ms"
    return f"{ms / 1e3:.2f} s"


def _label(operator: str) -> str:
    """``"map 'Parse'"`` -> ``"Parse"``."""
    _, _, label = operator.partition(" ")
    return label.strip("'") or operator


def operator_table(metrics: JobMetrics, title: str | None = None) -> Table:
    """One row per operator: parallelism, records in/out, errors, throughput, latency."""
    table = Table(
        title=title
        or f"Operators of job {metrics.job!r} ({metrics.status}, {metrics.elapsed_s:.2f} s)"
    )
    table.add_column("operator", min_width=18, overflow="fold")
    for column in ("par", "in", "out", "errors", "records/s", "p50", "p95", "p99"):
        table.add_column(column, justify="right", no_wrap=True)
    for op in metrics.operators:
        table.add_row(
            op.operator,
            str(op.parallelism),
            f"{op.records_in:,}",
            f"{op.records_out:,}",
            f"[red]{op.errors:,}[/red]" if op.errors else "0",
            f"{op.throughput_rps:,.0f}",
            format_latency(op.p50_ms),
            format_latency(op.p95_ms),
            format_latency(op.p99_ms),
        )
    return table


def task_table(metrics: JobMetrics) -> Table:
    """One row per task (thread): status, records, busy time and input-queue fill."""
    table = Table(title="Tasks (one thread each)")
    table.add_column("task", no_wrap=True)
    table.add_column("operators", min_width=18, overflow="fold")
    for column in ("status", "in", "out", "busy", "queue peak"):
        table.add_column(column, justify="right", no_wrap=True)
    for task in metrics.tasks:
        queue = f"{task.queue_peak}/{task.queue_capacity}" if task.queue_capacity else "-"
        table.add_row(
            task.task_id,
            " → ".join(_label(name) for name in task.operators),
            task.status,
            f"{task.records_in:,}",
            f"{task.records_out:,}",
            f"{task.busy_s:.3f} s",
            queue,
        )
    return table
