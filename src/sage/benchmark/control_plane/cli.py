"""``sage-cp-bench``: what each scheduling policy of the control plane buys, measured.

``sage-cp-bench run --mode llm --policy fifo --requests 100`` sends one trace through a
gateway scheduled by one policy; ``sage-cp-bench compare --mode llm --policies
fifo,priority,slo_aware`` sends the very same trace (same seed) once per policy, each on a
fresh gateway over fresh instances. Without ``--control-plane`` the benchmark starts its own
gateway over ``--instances`` GPU-instance simulators (``--engine simulated``), the real CPU
engines (``cpu``) or stubs (``stub``). Unless ``--rate`` is given, the offered rate is
``--load`` times the instances' estimated capacity (see :mod:`.runner`).

Output: a progress bar, Rich tables, and JSON, PNG and HTML reports under ``--output``.
Exit status: 0 done, 1 a server failed, 2 a bad option (the message says which and why).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from sage.benchmark.control_plane.config import (
    ArrivalPattern,
    Engine,
    Kind,
    LengthDistribution,
    LLMBenchmarkConfig,
    Mode,
    RequestClass,
    Shape,
    TenantLoad,
    config_for_mode,
)
from sage.benchmark.control_plane.driver import RequestRecord
from sage.benchmark.control_plane.report import (
    report_tables,
    rich_table,
    summary_lines,
    write_reports,
)
from sage.benchmark.control_plane.runner import PolicyRun, run_benchmark
from sage.cli.errors import fail, usage
from sage.common.errors import ConfigError, GatewayError
from sage.inference.deploy.processes import SpawnError

__all__ = ["app"]

app = typer.Typer(
    name="sage-cp-bench",
    help="Benchmark the control plane's scheduling policies (throughput, latency, TTFT, SLOs).",
    no_args_is_help=True,
    add_completion=False,
)
# Piped output (make, CI logs) gets a width that fits the tables.
console = Console(width=None if sys.stdout.isatty() else 160)


class _ProgressBar:
    """The runner's observer: a Rich progress bar per policy, steps as dim lines."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None
        self.failed = 0

    def status(self, message: str) -> None:
        self.progress.console.print(f"[dim]{message}[/dim]")

    def policy_started(self, policy: str, total: int) -> None:
        self.failed = 0
        self.task = self.progress.add_task(policy, total=total, failed=0)

    def request_done(self, record: RequestRecord) -> None:
        assert self.task is not None
        self.failed += not record.ok
        self.progress.update(self.task, advance=1, failed=self.failed)

    def policy_finished(self, run: PolicyRun) -> None:
        pass


def _lengths(mean: float | None, shape: Shape, spread: float = 0.5) -> LengthDistribution | None:
    """A :class:`LengthDistribution` around ``mean`` (``None``: keep the config's default)."""
    return None if mean is None else LengthDistribution.around(mean, shape, spread)


RUN_HELP = """Send one trace through a gateway scheduled by one --policy; report the figures.

Example: sage-cp-bench run --mode llm --policy fifo --requests 100
"""
COMPARE_HELP = """Send the same trace (same seed) once per policy in --policies, each on a fresh
gateway over fresh instances; report them side by side.

Example: sage-cp-bench compare --mode llm --policies fifo,priority,slo_aware
"""


def bench(
    ctx: typer.Context,
    mode: Annotated[Mode, typer.Option(help="Requests: chat, embeddings or both.")] = "llm",
    policy: Annotated[
        str | None,
        typer.Option(
            "--policy",
            "--policies",
            help="run: one policy; compare: a comma-separated list (default "
            "fifo,priority,slo_aware). Scheduling: fifo, priority, slo_aware, hybrid "
            "(hybrid_slo), adaptive; routing: least_loaded, round_robin, prefix_aware "
            "(cache_aware), session; or both: slo_aware+prefix_aware.",
        ),
    ] = None,
    requests: Annotated[int, typer.Option(help="Requests in the trace.")] = 100,
    duration: Annotated[
        float | None, typer.Option(help="Trace length in seconds (instead of --requests).")
    ] = None,
    rate: Annotated[
        float | None, typer.Option(help="Offered requests/s (default: --load x capacity).")
    ] = None,
    load: Annotated[
        float, typer.Option(help="Offered load as a multiple of the estimated capacity.")
    ] = 1.2,
    llm_ratio: Annotated[float, typer.Option(help="hybrid: share of chat requests.")] = 0.7,
    arrival: Annotated[ArrivalPattern, typer.Option(help="Arrival process.")] = "poisson",
    burst_on: Annotated[float, typer.Option(help="bursty: seconds of each burst.")] = 2.0,
    burst_off: Annotated[float, typer.Option(help="bursty: quiet seconds between bursts.")] = 2.0,
    classes: Annotated[
        str | None,
        typer.Option(
            help="Request classes name:priority:slo_ms:share,... "
            "(default interactive:0:2000:0.3,batch:5:30000:0.7)."
        ),
    ] = None,
    prompt_tokens: Annotated[
        float | None, typer.Option(help="Mean prompt tokens (default 256).")
    ] = None,
    output_tokens: Annotated[
        float | None, typer.Option(help="Mean max_tokens (default 64).")
    ] = None,
    length_shape: Annotated[
        Shape | None, typer.Option(help="Shape of the prompt/output lengths (lognormal).")
    ] = None,
    texts_per_request: Annotated[
        float | None, typer.Option(help="Mean texts per embedding request (default 4).")
    ] = None,
    text_tokens: Annotated[
        float | None, typer.Option(help="Mean tokens per embedded text (default 32).")
    ] = None,
    stream: Annotated[
        bool, typer.Option(help="Stream chat answers (TTFT); --no-stream: idempotent requests.")
    ] = True,
    seed: Annotated[int, typer.Option(help="Seed of the trace.")] = 42,
    warmup: Annotated[
        int, typer.Option(help="Warm-up requests per kind before the trace (not measured).")
    ] = 4,
    instances: Annotated[
        int, typer.Option(help="Own instances of the mode's kind (hybrid: LLM instances).")
    ] = 2,
    embedding_instances: Annotated[
        int | None, typer.Option(help="hybrid: own embedding instances (default --instances).")
    ] = None,
    engine: Annotated[
        Engine,
        typer.Option(help="Own instances: GPU-instance simulators, the CPU models, or stubs."),
    ] = "simulated",
    sim_profile: Annotated[
        str | None,
        typer.Option(
            help="Simulator timing, JSON of SimulatorProfile fields: '{\"max_batch\": 8}'."
        ),
    ] = None,
    max_concurrent: Annotated[
        int | None,
        typer.Option(help="Own LLM instances' max_concurrent_requests (default: batch size)."),
    ] = None,
    control_plane: Annotated[
        str | None,
        typer.Option(help="A running gateway's URL (default: start one of its own)."),
    ] = None,
    llm_model: Annotated[str | None, typer.Option(help="Chat model to request.")] = None,
    embedding_model: Annotated[str | None, typer.Option(help="Embedding model to request.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds a request may take.")] = 600.0,
    kill_instance_at: Annotated[
        float | None,
        typer.Option(help="Kill (SIGKILL) one own instance this many seconds into the trace."),
    ] = None,
    kill_kind: Annotated[
        Kind | None, typer.Option(help="Which kind to kill (default: the mode's; hybrid: llm).")
    ] = None,
    tenants: Annotated[
        str | None,
        typer.Option(
            help="Tenants name:weight:share,... each sending its share of the load with its "
            "own API key (e.g. light:1:1,heavy:1:10); the gateway serves them by fair share."
        ),
    ] = None,
    fair_share: Annotated[
        bool, typer.Option(help="With --tenants: fair share among them (--no-fair-share: not).")
    ] = True,
    output: Annotated[Path, typer.Option(help="Folder for the JSON, PNG and HTML reports.")] = Path(
        "cp_bench_results"
    ),
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False,
) -> None:
    """Both commands: ``run`` (one policy) and ``compare`` (one run per policy, same trace)
    share every option, so they are one function registered under two names."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
        force=True,
    )
    command: Literal["run", "compare"] = "compare" if ctx.info_name == "compare" else "run"
    names = [p.strip() for p in (policy or "").split(",") if p.strip()]
    if command == "run" and len(names) > 1:
        raise usage("run takes one --policy; to compare several use: compare --policies a,b")
    try:
        values: dict[str, Any] = {
            "policies": names
            or (["fifo"] if command == "run" else ["fifo", "priority", "slo_aware"]),
            "num_requests": requests,
            "duration_s": duration,
            "request_rate": rate,
            "load": load,
            "llm_ratio": llm_ratio,
            "arrival_pattern": arrival,
            "burst_on_s": burst_on,
            "burst_off_s": burst_off,
            "stream": stream,
            "seed": seed,
            "warmup_requests": warmup,
            "instances": instances,
            "embedding_instances": embedding_instances,
            "engine": engine,
            "llm_max_concurrent": max_concurrent,
            "control_plane_url": control_plane,
            "llm_model": llm_model,
            "embedding_model": embedding_model,
            "timeout_seconds": timeout,
            "kill_instance_at": kill_instance_at,
            "kill_kind": kill_kind,
            "fair_share": fair_share,
            "output_dir": output,
        }
        if classes is not None:
            values["classes"] = RequestClass.parse_list(classes)
        if tenants is not None:
            values["tenants"] = TenantLoad.parse_list(tenants)
        if sim_profile is not None:
            try:
                values["sim_profile"] = json.loads(sim_profile)
            except ValueError as exc:
                raise ConfigError(
                    f"--sim-profile is not valid JSON ({exc}); e.g. '{{\"max_batch\": 8}}'"
                ) from None
        lengths = {
            "prompt_tokens": _lengths(prompt_tokens, "lognormal"),
            "output_tokens": _lengths(output_tokens, "lognormal"),
            "texts_per_request": _lengths(texts_per_request, "uniform", 0.75),
            "text_tokens": _lengths(text_tokens, "lognormal"),
        }
        values.update({k: v for k, v in lengths.items() if v is not None})
        config = config_for_mode(mode, **values)
        if length_shape is not None and isinstance(config, LLMBenchmarkConfig):
            config.prompt_tokens = dataclasses.replace(config.prompt_tokens, shape=length_shape)
            config.output_tokens = dataclasses.replace(config.output_tokens, shape=length_shape)
        config.validate()
    except ConfigError as exc:
        raise usage(str(exc)) from None

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console) as progress:
            result = run_benchmark(config, command, _ProgressBar(progress))
    except ConfigError as exc:
        raise usage(str(exc)) from None
    except (GatewayError, SpawnError) as exc:
        raise fail(str(exc)) from None
    for table in report_tables(result):
        console.print(rich_table(table))
    for line in summary_lines(result):
        console.print(f"• {line}", highlight=False)
    paths = write_reports(result)
    console.print("reports: " + ", ".join(str(p) for p in paths.values()), highlight=False)


app.command("run", help=RUN_HELP)(bench)
app.command("compare", help=COMPARE_HELP)(bench)


if __name__ == "__main__":  # pragma: no cover
    app()
