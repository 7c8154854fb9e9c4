"""``sage-cp-bench``: what each scheduling policy of the control plane buys, measured.

``sage-cp-bench run -m llm -p fifo -n 100`` sends one trace through a gateway scheduled by
one policy; ``sage-cp-bench compare -m llm -p fifo,priority,slo_aware`` sends the very same
trace (same seed) once per policy, each on a fresh gateway over fresh instances;
``sage-cp-bench sweep -p fifo -r 5,10,20,40`` runs it once per offered rate. Without
``--control-plane`` the benchmark starts its own gateway over ``--instances`` GPU-instance
simulators (``--engine simulated``, the default: no GPU, no network), the real CPU engines
(``cpu``) or stubs (``stub``). Unless ``--rate`` is given, the offered rate is ``--load``
times the instances' estimated capacity (see :mod:`.runner`). ``--instance-costs 1,1,10``
prices the own instances (``--instance-speeds 1,1,4`` makes simulated ones faster): the
reports then show the cost served (see :mod:`.fleet`).

Settings may also come from ``--config FILE`` (:mod:`.config_file`; an option given on the
command line overrides the file); ``config`` writes one with every key, ``validate`` checks
one, ``visualize`` redraws the charts of saved results.

Output: a progress bar, Rich tables, and JSON, PNG and HTML reports under ``--output``
(``-q``: the result table only; ``--no-visualize``: JSON only).
Exit status: 0 done, 1 a server failed (``validate``: the file is invalid), 2 a bad option
(the message says which and why).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import typer

from sage.benchmark.control_plane import config_file as files
from sage.benchmark.control_plane.config import (
    ArrivalPattern,
    BenchmarkConfig,
    Engine,
    Kind,
    Mode,
    Shape,
)
from sage.benchmark.control_plane.options import (
    EXAMPLES,
    IMPLIED,
    Command,
    config_from_options,
    parse_rates,
)
from sage.benchmark.control_plane.report import report_tables, summary_lines, write_reports
from sage.benchmark.control_plane.runner import Observer, run_benchmark
from sage.benchmark.control_plane.screen import console, observer, setup_logging, show
from sage.benchmark.control_plane.sweep import run_sweep
from sage.benchmark.control_plane.sweep_report import (
    sweep_summary,
    sweep_tables,
    write_sweep_reports,
)
from sage.benchmark.control_plane.visualize import visualize as rebuild_charts
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

T = TypeVar("T")

NOT_IN_FILES = ("config_file", "quiet", "verbose")
"""Options a config file cannot set: the file itself, and how the terminal looks."""

RUN_HELP = """Send one trace through a gateway scheduled by one --policy; report the figures.

Example: sage-cp-bench run -m llm -p fifo -n 100
"""
COMPARE_HELP = """Send the same trace once per policy in --policies; report them side by side.

Each policy gets the very same requests (same seed) on a fresh gateway over fresh instances.

Example: sage-cp-bench compare -m llm -p fifo,priority,slo_aware -n 100
"""
SWEEP_HELP = """Run a policy at each offered rate of --rate; report the load curve.

Each rate gets the same seeded requests on fresh instances; the table and the chart show
latency, throughput and SLO attainment against the offered load.

Example: sage-cp-bench sweep -p fifo -r 5,10,20,40 -n 200
"""


def bench(
    ctx: typer.Context,
    mode: Annotated[
        Mode, typer.Option("--mode", "-m", help="Requests: chat, embeddings or both.")
    ] = "llm",
    policies: Annotated[
        str | None,
        typer.Option(
            "--policy",
            "--policies",
            "-p",
            help="run: one policy; compare, sweep: a comma-separated list (compare's default "
            "fifo,priority,slo_aware; else fifo). Scheduling: fifo, priority, slo_aware, hybrid "
            "(hybrid_slo), adaptive, cost_optimized; routing: least_loaded, round_robin, "
            "prefix_aware (cache_aware), session; or both: slo_aware+prefix_aware.",
        ),
    ] = None,
    requests: Annotated[int, typer.Option("--requests", "-n", help="Requests in the trace.")] = 100,
    duration: Annotated[
        float | None, typer.Option(help="Trace length in seconds (instead of --requests).")
    ] = None,
    rate: Annotated[
        str | None,
        typer.Option(
            "--rate",
            "--rates",
            "-r",
            metavar="RPS",
            help="Offered requests/s (default: --load x capacity); sweep: the rates to run, "
            "comma-separated (5,10,20,40).",
        ),
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
        int,
        typer.Option(
            "--warmup", "-w", help="Warm-up requests per kind before the trace (not measured)."
        ),
    ] = 4,
    instances: Annotated[
        int,
        typer.Option(
            help="Own instances of the mode's kind (hybrid: LLM instances); default 2, or as "
            "many as --instance-costs/--instance-speeds give."
        ),
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
    instance_costs: Annotated[
        str | None,
        typer.Option(
            metavar="COSTS",
            help="cost_per_1k_tokens of each own instance, comma-separated (1,1,10): the "
            "gateway places by it under cost_optimized, and the reports show the cost served.",
        ),
    ] = None,
    instance_speeds: Annotated[
        str | None,
        typer.Option(
            metavar="SPEEDS",
            help="simulated: how many times faster than --sim-profile each own instance runs, "
            "comma-separated (1,1,4).",
        ),
    ] = None,
    max_concurrent: Annotated[
        int | None,
        typer.Option(help="Own LLM instances' max_concurrent_requests (default: batch size)."),
    ] = None,
    control_plane: Annotated[
        str | None,
        typer.Option(
            "--control-plane",
            "-c",
            help="A running gateway's URL (default: start one of its own).",
        ),
    ] = None,
    llm_model: Annotated[str | None, typer.Option(help="Chat model to request.")] = None,
    embedding_model: Annotated[str | None, typer.Option(help="Embedding model to request.")] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", "-t", help="Seconds a request may take.")
    ] = 600.0,
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
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for the JSON, PNG and HTML reports.")
    ] = Path("cp_bench_results"),
    visualize: Annotated[
        bool,
        typer.Option(
            "--visualize/--no-visualize", help="Write the PNG chart and HTML page (else JSON only)."
        ),
    ] = True,
    config_file: Annotated[
        Path | None,
        typer.Option(
            "--config",
            exists=True,
            dir_okay=False,
            help="Settings from a file (.toml, .json, .yaml): keys are these options' long "
            "names with underscores; options given here override it. See: sage-cp-bench config",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print the result table only.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False,
) -> None:
    """``run``, ``compare`` and ``sweep`` share every option, so they are one function
    registered under three names; its options are read from ``ctx.params`` (and the file)."""
    setup_logging(verbose, quiet)
    command = cast(Command, ctx.info_name if ctx.info_name in ("compare", "sweep") else "run")
    options = _options(ctx, config_file)
    try:
        config = config_from_options(command, options)
        rates = parse_rates(options["rate"], command)
        config.validate()
    except ConfigError as exc:
        raise usage(str(exc)) from None
    charts = bool(options["visualize"])
    if command == "sweep":
        sweep = _guarded(lambda progress: run_sweep(config, rates, progress), quiet)
        paths = write_sweep_reports(sweep, charts=charts)
        show(sweep_tables(sweep), sweep_summary(sweep), paths, quiet)
    else:
        result = _guarded(lambda progress: run_benchmark(config, command, progress), quiet)
        paths = write_reports(result, charts=charts)
        show(report_tables(result), summary_lines(result), paths, quiet)


def _guarded(benchmark: Callable[[Observer | None], T], quiet: bool) -> T:
    """Run ``benchmark`` under a progress bar (unless ``quiet``); its errors as exits."""
    try:
        with observer(quiet) as progress:
            return benchmark(progress)
    except ConfigError as exc:
        raise usage(str(exc)) from None
    except (GatewayError, SpawnError) as exc:
        raise fail(str(exc)) from None


def _keys() -> dict[str, files.FileKey]:
    """The keys of a config file: ``bench``'s options."""
    return files.file_keys(bench, NOT_IN_FILES)


def _options(ctx: typer.Context, path: Path | None) -> dict[str, Any]:
    """The options' values: from the command line, else from ``path``, else the defaults.

    Raises:
        typer.Exit: (code 2) the file has problems; the message lists every one.
    """
    options = {k: v for k, v in ctx.params.items() if k not in NOT_IN_FILES}

    def defaulted(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is None or source.name in ("DEFAULT", "DEFAULT_MAP")

    for name in IMPLIED:  # not given: it follows the options it is implied by
        if defaulted(name):
            options[name] = None
    if path is None:
        return options
    try:
        values = files.check(path, _keys())
    except ConfigError as exc:  # ConfigFileError: every problem of the file
        raise usage(str(exc)) from None
    for name, value in values.items():
        if defaulted(name):
            options[name] = value
    return options


app.command("run", help=RUN_HELP)(bench)
app.command("compare", help=COMPARE_HELP)(bench)
app.command("sweep", help=SWEEP_HELP)(bench)


@app.command("config")
def write_config(
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File to write (*.toml); default: print it."),
    ] = None,
    mode: Annotated[
        Mode, typer.Option("--mode", "-m", help="The mode whose keys to write.")
    ] = "llm",
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite --output if it exists.")
    ] = False,
) -> None:
    """Write a config file for --config: every key, its default and its help.

    Keys unset by default are commented out, with a value to uncomment.

    Example: sage-cp-bench config -o bench.toml --mode hybrid
    """
    text = files.render_toml(_keys(), mode, EXAMPLES)
    if output is None:
        typer.echo(text, nl=False)
        return
    if output.suffix.lower() != ".toml":
        raise usage(f"--output {output}: config writes TOML (for its comments); name it *.toml")
    if output.exists() and not force:
        raise usage(f"--output {output} exists; add --force to overwrite it, or name another")
    output.write_text(text, encoding="utf-8")
    console.print(f"wrote {output}; check it with: sage-cp-bench validate {output}")


@app.command("validate")
def validate(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, help="A config file (.toml, .json, .yaml)."),
    ],
) -> None:
    """Check a config file: "valid" and what it sets, or every problem (exit 1).

    Each problem names its key and line, and what to write instead.

    Example: sage-cp-bench validate bench.toml
    """
    try:
        values = files.check(file, _keys())
    except ConfigError as exc:  # ConfigFileError: every problem of the file
        raise fail(str(exc)) from None
    defaults = {key.name: key.default for key in _keys().values()}
    command: Command = "sweep" if "," in str(values.get("rate") or "") else "compare"
    implied = dict.fromkeys(IMPLIED)  # what the file leaves out follows from what it sets
    config = config_from_options(command, {**defaults, **implied, **values})
    console.print(f"[green]{file}: valid[/green]", highlight=False)
    for line in _summary(config, values, defaults):
        console.print(f"• {line}", highlight=False)


def _summary(
    config: BenchmarkConfig, values: dict[str, Any], defaults: dict[str, Any]
) -> list[str]:
    """What a valid file describes, for ``validate``: the benchmark, then what it changes."""
    policies = ", ".join(config.policies) if values.get("policies") else "the command's default"
    size = f"{config.duration_s:g} s" if config.duration_s else f"{config.num_requests} requests"
    rate = f"{values['rate']} req/s" if values.get("rate") else f"{config.load:g}x capacity"
    target = config.control_plane_url or f"own gateway over {config.engine} instances"
    lines = [
        f"{config.mode} mode; policies: {policies}; {size} at {rate} "
        f"({config.arrival_pattern}); {target}; reports in {config.output_dir}"
    ]
    changed = [f"{k} = {v}" for k, v in values.items() if v != defaults[k] and k != "mode"]
    lines.append(f"differs from the defaults: {', '.join(changed) or 'nothing'}")
    if unused := files.ignored(values):
        lines.append(f"ignored in {config.mode} mode: {', '.join(unused)}")
    return lines


@app.command("visualize")
def visualize_results(
    results: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, help="A .json report of run/compare/sweep."),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Folder for the PNG and HTML (default: beside it)."),
    ] = None,
) -> None:
    """Rebuild the PNG chart and the HTML page from a saved JSON report.

    Example: sage-cp-bench visualize cp_bench_results/sweep-llm-fifo-20251201T120000.json
    """
    try:
        paths = rebuild_charts(results, output)
    except ConfigError as exc:
        raise usage(str(exc)) from None
    console.print("charts: " + ", ".join(str(p) for p in paths.values()), highlight=False)


if __name__ == "__main__":  # pragma: no cover
    app()
