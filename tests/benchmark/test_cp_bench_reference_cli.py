"""sage-cp-bench as the reference's users type it: short flags, --quiet, --no-visualize,
--config files (config, validate), sweep and visualize; and the reference's quick start on
the benchmark's own simulated instances. Runs use stub or simulated instances on 127.0.0.1
and few requests."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sage.benchmark.control_plane import config_file as files
from sage.benchmark.control_plane.cli import NOT_IN_FILES, app, bench
from sage.benchmark.control_plane.config import HybridBenchmarkConfig
from sage.benchmark.control_plane.driver import RequestRecord
from sage.benchmark.control_plane.metrics import summarize
from sage.benchmark.control_plane.options import config_from_options
from sage.benchmark.control_plane.report import write_reports
from sage.benchmark.control_plane.runner import BenchmarkResult, PolicyRun
from sage.benchmark.control_plane.visualize import load_results

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"
STUB = ["--engine", "stub", "--instances", "1"]


def the_report(folder: Path, pattern: str = "*.json") -> dict[str, Any]:
    (path,) = folder.glob(pattern)
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# -- short flags, --no-visualize, --quiet --------------------------------------------------


def test_short_flags_reach_the_config_and_no_visualize_writes_json_only(tmp_path: Path) -> None:
    flags = ["-m", "llm", "-p", "fifo", "-n", "12", "-r", "40", "-w", "1", "-t", "30"]
    result = runner.invoke(app, ["run", *flags, "-o", str(tmp_path), *STUB, "--no-visualize"])
    assert result.exit_code == 0, result.output
    data = the_report(tmp_path)
    config = data["config"]
    assert config["mode"] == "llm" and config["policies"] == ["fifo"]
    assert config["num_requests"] == 12 and config["request_rate"] == 40.0
    assert config["warmup_requests"] == 1 and config["timeout_seconds"] == 30.0
    assert config["output_dir"] == str(tmp_path)
    assert len(data["runs"][0]["requests"]) == 12
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob("*.html"))
    # not quiet: the steps and the reports written are shown
    assert "starting the gateway" in result.output and "reports: " in result.output


def test_the_control_plane_short_flag_reaches_the_config() -> None:
    result = runner.invoke(app, ["run", "-c", "127.0.0.1:9"])
    assert result.exit_code == 2
    assert "control_plane_url='127.0.0.1:9'" in result.stderr and "http://" in result.stderr


def test_quiet_prints_the_result_table_and_nothing_else(tmp_path: Path) -> None:
    args = ["run", "-q", "-n", "10", "-r", "50", "-w", "1", *STUB, "-o", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "sage-cp-bench run: llm mode, 10 requests" in result.stdout
    for chatter in ("starting the gateway", "10/10", "0 failed", "reports: ", "•", "per kind"):
        assert chatter not in result.stdout
    assert list(tmp_path.glob("*.png"))  # quiet only quiets the terminal


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "-r", "5,10"], "sage-cp-bench sweep -r 5,10"),
        (["run", "-r", "fast"], "--rate 'fast' is not a number"),
        (["sweep", "-p", "fifo"], "sweep needs --rate"),
        (["run", "-p", "fifo,priority"], "run takes one --policy"),
        (["config", "-o", "bench.yaml"], "name it *.toml"),
    ],
)
def test_bad_options_exit_2_naming_the_option_and_the_fix(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


# -- the reference's quick start -------------------------------------------------------------


def test_the_quick_start_run_uses_its_own_simulators(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default --output, cp_bench_results, lands here
    result = runner.invoke(app, ["run", "-m", "llm", "-p", "fifo", "-n", "20"])
    assert result.exit_code == 0, result.output
    data = the_report(tmp_path / "cp_bench_results", "run-llm-fifo-*.json")
    assert data["config"]["engine"] == "simulated" and data["config"]["control_plane_url"] is None
    (run,) = data["runs"]
    assert run["cluster"]["engine"] == "simulated" and len(run["cluster"]["instances"]) == 2
    assert len(run["requests"]) == 20 and run["metrics"]["overall"]["failed"] == 0
    assert data["capacity"]["source"] == "simulator profile"


def test_the_quick_start_compare_runs_every_policy_on_the_same_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["compare", "-m", "llm", "-p", "fifo,priority,slo_aware", "-n", "20"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = the_report(tmp_path / "cp_bench_results", "compare-llm-*.json")
    assert [r["policy"] for r in data["runs"]] == ["fifo", "priority", "slo_aware"]
    assert [r["active_policy"] for r in data["runs"]] == ["fifo", "priority", "slo_aware"]
    traces = [[(q["index"], q["request_class"]) for q in r["requests"]] for r in data["runs"]]
    assert len(traces[0]) == 20 and traces[0] == traces[1] == traces[2]


# -- config files ----------------------------------------------------------------------------


def keys() -> dict[str, files.FileKey]:
    return files.file_keys(bench, NOT_IN_FILES)


def test_config_validate_and_run_round_trip_with_a_flag_overriding_the_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bench.toml"
    assert runner.invoke(app, ["config", "-o", str(path)]).exit_code == 0
    checked = runner.invoke(app, ["validate", str(path)])
    assert checked.exit_code == 0, checked.output
    assert f"{path.name}: valid" in checked.stdout

    # read back, the written file gives every default, so the same configuration
    values, problems = files.load(path, keys())
    assert problems == []
    defaults = {k.name: k.default for k in keys().values()}
    assert values == {k: v for k, v in defaults.items() if v is not None and k in values}
    assert {"mode", "requests", "load", "engine", "visualize"} <= set(values)
    assert config_from_options("run", {**defaults, **values}) == config_from_options(
        "run", defaults
    )

    edits = {"requests": "30", "engine": '"stub"', "instances": "1", "warmup": "1"}
    text = path.read_text()
    for key, value in edits.items():
        text = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
    text = text.replace("# rate = 20.0", "rate = 50.0")
    path.write_text(text)
    args = ["run", "--config", str(path), "-n", "12", "-o", str(tmp_path), "--no-visualize"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    config = the_report(tmp_path)["config"]
    assert config["num_requests"] == 12  # the flag, not the file's 30
    assert config["engine"] == "stub" and config["instances"] == 1  # the file's
    assert config["request_rate"] == 50.0 and config["warmup_requests"] == 1


def test_config_writes_a_comment_for_every_key_of_the_mode() -> None:
    hybrid = runner.invoke(app, ["config", "--mode", "hybrid"])
    llm = runner.invoke(app, ["config"])
    assert hybrid.exit_code == llm.exit_code == 0
    assert 'mode = "hybrid"' in hybrid.stdout and "llm_ratio = 0.7" in hybrid.stdout
    assert "llm_ratio" not in llm.stdout and "texts_per_request" not in llm.stdout
    lines = hybrid.stdout.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^(# )?[a-z_]+ = ", line) and i > 4:
            assert lines[i - 1].startswith("# ") and not re.match(r"^# [a-z_]+ = ", lines[i - 1])
    written = {m.group(1) for m in re.finditer(r"(?m)^(?:# )?([a-z_]+) = ", hybrid.stdout)}
    assert written == set(keys())  # hybrid uses every key


def test_validate_names_each_bad_key_its_line_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('mode = "hybird"\nrequets = 20\nload = -1\ninstances = 2.5\n')
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    err = result.stderr
    assert "4 problems" in err
    assert "mode (line 1): 'hybird' is not one of" in err and "did you mean 'hybrid'" in err
    assert "requets (line 2): unknown key 'requets' (did you mean 'requests'?)" in err
    assert "load (line 3)" in err and "must be a number above 0" in err
    assert "instances (line 4): 2.5 must be a whole number" in err

    run = runner.invoke(app, ["run", "--config", str(path)])
    assert run.exit_code == 2 and "did you mean 'requests'" in run.stderr


def test_validate_reads_json_and_yaml_files(tmp_path: Path) -> None:
    good = tmp_path / "sweep.json"
    good.write_text(
        json.dumps(
            {
                "mode": "hybrid",
                "policies": ["fifo", "priority"],
                "rate": [5, 10],
                "sim_profile": {"max_batch": 8},
            }
        )
    )
    result = runner.invoke(app, ["validate", str(good)])
    assert result.exit_code == 0, result.output
    assert "policies: fifo, priority" in result.stdout and "5,10 req/s" in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: llm\nrequests: 0\n")
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 1
    assert "requests (line 2): LLMBenchmarkConfig.num_requests=0" in result.stderr


# -- sweep and visualize ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One sweep at two rates on a stub instance: its output folder and terminal output."""
    folder = tmp_path_factory.mktemp("sweep")
    args = ["sweep", "-p", "fifo", "-r", "20,40", "-n", "10", "-w", "1", *STUB, "-o", str(folder)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return folder, result.stdout


def test_a_sweep_runs_the_same_trace_once_per_rate(sweep_run: tuple[Path, str]) -> None:
    folder, output = sweep_run
    rows = [line for line in output.splitlines() if re.match(r"^│ \d", line)]
    assert [row.split("│")[1].strip() for row in rows] == ["20.0", "40.0"]
    assert all("fifo" in row and "0/10" in row for row in rows)
    data = the_report(folder, "sweep-llm-fifo-*.json")
    assert data["command"] == "sweep" and data["rates_rps"] == [20.0, 40.0]
    assert [r["rate_rps"] for r in data["results"]] == [20.0, 40.0]
    assert [p["rate_rps"] for p in data["points"]] == [20.0, 40.0]
    requests = [r["runs"][0]["requests"] for r in data["results"]]
    assert [len(r) for r in requests] == [10, 10]
    # the same requests, arriving faster at the higher rate
    assert [q["request_class"] for q in requests[0]] == [q["request_class"] for q in requests[1]]
    assert requests[1][-1]["scheduled_s"] < requests[0][-1]["scheduled_s"]
    (png,) = folder.glob("sweep-*.png")
    assert png.read_bytes().startswith(PNG)
    (page,) = folder.glob("sweep-*.html")
    assert "data:image/png;base64," in page.read_text() and "SLO met" in page.read_text()


def test_visualize_rebuilds_a_sweeps_charts(sweep_run: tuple[Path, str], tmp_path: Path) -> None:
    (report,) = sweep_run[0].glob("sweep-*.json")
    result = runner.invoke(app, ["visualize", str(report), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / f"{report.stem}.png").read_bytes().startswith(PNG)
    assert "fifo" in (tmp_path / f"{report.stem}.html").read_text()


def test_visualize_rebuilds_a_runs_charts_from_its_json(tmp_path: Path) -> None:
    config = HybridBenchmarkConfig(policies=["fifo", "slo_aware"], output_dir=tmp_path)
    records = [
        RequestRecord(i, "llm", "interactive", 0, 2000.0, False, 0.1 * i, finished_s=0.1 * i + 1)
        for i in range(10)
    ]
    runs = [PolicyRun(p, p, records, summarize(records)) for p in config.policies]
    started = "2025-12-01T12:00:00+00:00"
    result = BenchmarkResult("compare", config, 10.0, None, 10, runs, started, {"llm": "m"})
    paths = write_reports(result, charts=False)
    assert set(paths) == {"json"}
    loaded = load_results(paths["json"])
    assert isinstance(loaded, BenchmarkResult)
    assert loaded.config == config and loaded.runs[1].metrics == runs[1].metrics

    drawn = runner.invoke(app, ["visualize", str(paths["json"])])
    assert drawn.exit_code == 0, drawn.output
    stem = paths["json"].with_suffix("")
    assert stem.with_suffix(".png").read_bytes().startswith(PNG)
    assert "slo_aware" in stem.with_suffix(".html").read_text()


def test_visualize_refuses_a_file_that_is_not_a_report(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text('{"rows": []}')
    result = runner.invoke(app, ["visualize", str(other)])
    assert result.exit_code == 2
    assert "not a sage-cp-bench report" in result.stderr
