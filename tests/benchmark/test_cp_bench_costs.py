"""sage-cp-bench on priced, heterogeneous own instances: ``--instance-costs`` and
``--instance-speeds`` parsed, checked and carried to the gateway; the cost served in the
tables, the JSON and the summary only when instances are priced; and a short comparison of
SLO_AWARE and COST_OPTIMIZED on simulated instances. Runs use stub or simulated instances on
127.0.0.1 and few requests; nothing asserts a timing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sage.benchmark.control_plane.cli import app
from sage.benchmark.control_plane.config import LLMBenchmarkConfig
from sage.benchmark.control_plane.cost_served import cost_served
from sage.benchmark.control_plane.fleet import profile_fields, scaled_profile
from sage.benchmark.control_plane.options import config_from_options
from sage.benchmark.control_plane.report import report_tables
from sage.benchmark.control_plane.runner import simulated_capacity
from sage.benchmark.control_plane.visualize import load_results
from sage.common.errors import ConfigError
from sage.inference.engines.simulated import SimulatorProfile

runner = CliRunner()


def the_report(folder: Path) -> tuple[Path, dict[str, Any]]:
    (path,) = folder.glob("*.json")
    data: dict[str, Any] = json.loads(path.read_text())
    return path, data


# -- options, config files, capacity ---------------------------------------------------------


def test_the_options_parse_and_instances_follow_their_count() -> None:
    config = config_from_options(
        "compare", {"instance_costs": "1, 1,10", "instance_speeds": "1,1,4", "instances": None}
    )
    config.validate()
    assert config.instances == 3
    assert config.instance_costs == [1.0, 1.0, 10.0] and config.instance_speeds == [1.0, 1.0, 4.0]
    given = config_from_options("run", {"instance_costs": "2,3", "instances": 2})
    assert given.instances == 2 and given.instance_costs == [2.0, 3.0]
    plain = config_from_options("run", {"instances": None})
    assert plain.instances == 2 and plain.instance_costs is None  # the default, unpriced


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--instances", "2", "--instance-costs", "1,1,10"],
            "instance_costs has 3 values but instances=2: give --instance-costs one value per "
            "own instance (as many as --instances)",
        ),
        (
            ["--instance-costs", "1,1", "--instance-speeds", "1,2,4"],
            "instance_speeds has 3 values but instances=2",
        ),
        (["--instance-costs", "1,cheap"], "--instance-costs '1,cheap': 'cheap' is not a number"),
        (["--instance-costs", "1,-2"], "instance_costs[1]=-2.0 must be a number >= 0"),
        (["--instance-speeds", "1,0"], "instance_speeds[1]=0.0 must be a number above 0"),
        (
            ["--engine", "stub", "--instance-speeds", "1,4"],
            "instance_speeds only applies to engine='simulated'",
        ),
        (
            ["--control-plane", "http://127.0.0.1:9", "--instance-costs", "1,2"],
            "drop control_plane_url or instance_costs",
        ),
    ],
)
def test_bad_instance_settings_exit_2_naming_the_options(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["run", *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split())


def test_config_files_write_check_and_derive_the_instance_settings(tmp_path: Path) -> None:
    written = runner.invoke(app, ["config"])
    assert written.exit_code == 0
    assert "# instance_costs = [1, 1, 10]" in written.stdout
    assert "# instance_speeds = [1, 1, 4]" in written.stdout

    good = tmp_path / "priced.toml"
    good.write_text("instance_costs = [1, 1, 10]\ninstance_speeds = [1, 1, 4]\n")
    valid = runner.invoke(app, ["validate", str(good)])
    assert valid.exit_code == 0, valid.output
    assert "valid" in valid.stdout

    bad = tmp_path / "mismatch.toml"
    bad.write_text("instances = 2\ninstance_costs = [1, 1, 10]\n")
    invalid = runner.invoke(app, ["validate", str(bad)])
    assert invalid.exit_code == 1
    assert "instance_costs has 3 values but instances=2" in " ".join(invalid.stderr.split())


def test_capacity_adds_up_each_instances_speed() -> None:
    config = LLMBenchmarkConfig(instances=3, instance_speeds=[1.0, 1.0, 4.0])
    one = simulated_capacity(LLMBenchmarkConfig(instances=1)).total_rps
    assert simulated_capacity(config).total_rps == pytest.approx(6 * one, rel=0.02)
    assert simulated_capacity(config).inputs["instance_speeds"] == [1.0, 1.0, 4.0]
    fast = scaled_profile(SimulatorProfile(), 4.0)
    assert fast.decode_base_ms == SimulatorProfile().decode_base_ms / 4
    assert fast.max_batch == SimulatorProfile().max_batch  # a speed is not a bigger batch
    assert profile_fields({"max_batch": 8}, 1.0) == {"max_batch": 8}
    assert profile_fields({"max_batch": 8}, 2.0)["max_batch"] == 8


def test_the_cost_of_a_run_is_the_difference_of_two_snapshots() -> None:
    def instance(name: str, price: float | None, requests: int, cost: float) -> dict[str, Any]:
        return {
            "instance_id": name,
            "instance_type": "llm",
            "cost_per_1k_tokens": price,
            "requests": requests,
            "cost": None if price is None else cost,
        }

    before = {"cost": 1.0, "instances": [instance("a", 1, 4, 1.0), instance("b", 10, 0, 0)]}
    after = {"cost": 7.0, "instances": [instance("a", 1, 10, 2.0), instance("b", 10, 2, 5.0)]}
    run = cost_served(before, after, completed=8)
    assert run is not None
    assert run.total == pytest.approx(6.0) and run.per_1k_requests == pytest.approx(750.0)
    assert [(i.requests, i.share, i.cost) for i in run.instances] == [(6, 0.75, 1.0), (2, 0.25, 5)]
    assert run.share_of_dearest() == 0.25
    unpriced = {"cost": 0.0, "instances": [instance("a", None, 3, 0.0)]}
    assert cost_served({}, unpriced, completed=3) is None
    assert cost_served({}, {}, completed=3) is None  # the gateway did not answer


def test_python_api_checks_the_count_too() -> None:
    with pytest.raises(ConfigError, match="instances=2"):
        LLMBenchmarkConfig(instance_costs=[1.0, 2.0, 3.0]).validate()


# -- runs: priced and not -----------------------------------------------------------------


STUB = ["--engine", "stub", "-n", "12", "-r", "40", "-w", "2", "--no-visualize"]


def test_a_priced_run_registers_the_costs_and_reports_the_cost(tmp_path: Path) -> None:
    args = ["run", *STUB, "--instance-costs", "1,3", "-o", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    path, data = the_report(tmp_path)
    assert data["config"]["instances"] == 2  # followed --instance-costs
    (run,) = data["runs"]
    by_port = {e["port"]: e["cost_per_1k_tokens"] for e in run["cluster"]["instances"]}
    registered = {i["port"]: i["cost_per_1k_tokens"] for i in run["instances"]}
    assert sorted(by_port.values()) == [1.0, 3.0] and registered == by_port  # the gateway's
    cost = run["cost"]
    assert cost["completed"] == 12 and cost["total"] > 0
    assert cost["total"] == pytest.approx(sum(i["cost"] for i in cost["instances"]))
    assert cost["per_1k_requests"] == pytest.approx(cost["total"] / 12 * 1000)
    # the warm-up is not counted: the instances answered the trace's 12 requests
    assert sum(i["requests"] for i in cost["instances"]) == 12
    assert sum(i["share"] for i in cost["instances"]) == pytest.approx(1.0)
    assert "cost served per instance" in result.stdout  # the instances' table
    assert any(line.startswith("fifo: cost served") for line in data["summary"])
    # read back from the JSON (visualize), the tables are the same
    overview = report_tables(load_results(path))[0]  # type: ignore[arg-type]
    assert overview.headers[-2:] == ["cost", "cost/1k req"]


def test_an_unpriced_run_shows_nothing_about_cost(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", *STUB, "--instances", "1", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    path, data = the_report(tmp_path)
    (run,) = data["runs"]
    assert "cost" not in run
    assert "cost_per_1k_tokens" not in run["cluster"]["instances"][0]
    assert "cost served" not in result.stdout
    assert not any("cost" in h for t in report_tables(load_results(path)) for h in t.headers)  # type: ignore[arg-type]
    assert not any("cost" in line for line in data["summary"])


def test_cost_optimized_keeps_a_light_load_off_the_dear_instance(tmp_path: Path) -> None:
    """At a light load (SLOs far above any service time) the cheap instances always have a
    free slot expected in time: COST_OPTIMIZED never needs the dear one, so it serves the
    very same trace for no more than SLO_AWARE (same tokens, the lowest price)."""
    args = [
        "compare",
        "--policies",
        "slo_aware,cost_optimized",
        "--instance-costs",
        "1,1,10",
        "--instance-speeds",
        "1,1,4",
        "--sim-profile",
        '{"decode_base_ms": 1.0, "decode_ms_per_seq": 0.1}',
        "--classes",
        "interactive:0:60000:0.5,batch:5:120000:0.5",
        "--output-tokens",
        "16",
        "-n",
        "16",
        "-r",
        "8",
        "-w",
        "2",
        "--no-visualize",
        "-o",
        str(tmp_path),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    _, data = the_report(tmp_path)
    runs = {run["policy"]: run for run in data["runs"]}
    assert [r["active_policy"] for r in data["runs"]] == ["slo_aware", "cost_optimized"]
    speeds = [e.get("speed", 1.0) for e in runs["cost_optimized"]["cluster"]["instances"]]
    assert sorted(speeds) == [1.0, 1.0, 4.0]
    cheap, slo = runs["cost_optimized"]["cost"], runs["slo_aware"]["cost"]
    dear = max(cheap["instances"], key=lambda i: i["cost_per_1k_tokens"])
    assert dear["cost_per_1k_tokens"] == 10.0 and dear["requests"] == 0 and dear["share"] == 0
    assert cheap["completed"] == slo["completed"] == 16
    assert 0 < cheap["total"] <= slo["total"] + 1e-9
