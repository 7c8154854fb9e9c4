"""sage-cp-bench: deterministic workloads, metrics on hand-built records, reports, config
errors, the CLI's exit codes, and short end-to-end runs against its own simulated gateway."""

from __future__ import annotations

import builtins
import itertools
import json
import logging
import statistics
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from typer.testing import CliRunner

from sage.benchmark.control_plane.cli import app
from sage.benchmark.control_plane.cluster import LocalCluster
from sage.benchmark.control_plane.config import (
    EmbeddingBenchmarkConfig,
    HybridBenchmarkConfig,
    LengthDistribution,
    LLMBenchmarkConfig,
    RequestClass,
)
from sage.benchmark.control_plane.driver import Endpoint, RequestRecord
from sage.benchmark.control_plane.metrics import summarize
from sage.benchmark.control_plane.report import report_tables, write_reports
from sage.benchmark.control_plane.runner import (
    BenchmarkResult,
    PolicyRun,
    simulated_capacity,
)
from sage.benchmark.control_plane.workload import build_trace
from sage.common.errors import ConfigError
from sage.inference.engines.simulated import SimulatorProfile

runner = CliRunner()


# -- workload ------------------------------------------------------------------------------


def test_same_seed_gives_the_same_trace_and_another_seed_another() -> None:
    config = HybridBenchmarkConfig(num_requests=300)
    assert build_trace(config, 20.0) == build_trace(config, 20.0)
    assert build_trace(config, 20.0) != build_trace(
        HybridBenchmarkConfig(num_requests=300, seed=7), 20.0
    )


def test_the_rate_moves_requests_in_time_without_changing_them() -> None:
    config = HybridBenchmarkConfig(num_requests=200)
    slow, fast = build_trace(config, 10.0), build_trace(config, 40.0)

    def what(trace: Any) -> list[tuple[Any, ...]]:
        return [
            (r.kind, r.request_class, r.prompt_tokens, r.max_tokens, r.texts)
            for r in trace.requests
        ]

    assert what(slow) == what(fast)
    assert fast.requests[-1].at_s < slow.requests[-1].at_s


def test_poisson_arrivals_have_the_mean_rate_and_exponential_gaps() -> None:
    trace = build_trace(LLMBenchmarkConfig(num_requests=5000), rate=20.0)
    times = [r.at_s for r in trace.requests]
    assert times == sorted(times)
    assert len(times) / times[-1] == pytest.approx(20.0, rel=0.05)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # exponential gaps: standard deviation equal to the mean
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(1.0, rel=0.1)


def test_class_shares_and_llm_ratio_follow_the_config() -> None:
    trace = build_trace(HybridBenchmarkConfig(num_requests=4000, llm_ratio=0.7), rate=50.0)
    n = len(trace.requests)
    assert trace.count("llm") / n == pytest.approx(0.7, abs=0.03)
    interactive = [r for r in trace.requests if r.request_class == "interactive"]
    assert len(interactive) / n == pytest.approx(0.3, abs=0.03)
    assert {(r.priority, r.slo_ms) for r in interactive} == {(0, 2000.0)}
    batch = {(r.priority, r.slo_ms) for r in trace.requests if r.request_class == "batch"}
    assert batch == {(5, 30000.0)}


def test_bursty_arrivals_fall_only_in_the_on_periods_at_the_same_mean_rate() -> None:
    config = LLMBenchmarkConfig(
        num_requests=3000, arrival_pattern="bursty", burst_on_s=1.0, burst_off_s=3.0
    )
    times = [r.at_s for r in build_trace(config, rate=10.0).requests]
    assert all(t % 4.0 < 1.0 for t in times)
    assert len(times) / times[-1] == pytest.approx(10.0, rel=0.1)


def test_uniform_arrivals_are_evenly_spaced() -> None:
    config = LLMBenchmarkConfig(num_requests=5, arrival_pattern="uniform")
    assert [r.at_s for r in build_trace(config, rate=4.0).requests] == [0.25, 0.5, 0.75, 1.0, 1.25]


def test_a_duration_bounds_the_trace_instead_of_a_count() -> None:
    trace = build_trace(LLMBenchmarkConfig(duration_s=50.0), rate=20.0)
    assert all(r.at_s < 50.0 for r in trace.requests)
    assert len(trace.requests) == pytest.approx(1000, rel=0.1)


def test_lengths_stay_within_bounds_and_average_the_expected_value() -> None:
    config = HybridBenchmarkConfig(num_requests=3000)
    trace = build_trace(config, 30.0)
    llm = [r for r in trace.requests if r.kind == "llm"]
    embedding = [r for r in trace.requests if r.kind == "embedding"]
    for values, dist in [
        ([r.prompt_tokens for r in llm], config.prompt_tokens),
        ([r.max_tokens for r in llm], config.output_tokens),
        ([r.texts for r in embedding], config.texts_per_request),
    ]:
        assert dist.minimum <= min(values) and max(values) <= dist.upper
        assert statistics.mean(values) == pytest.approx(dist.expected(), rel=0.05)
    assert LengthDistribution(10, "fixed").expected() == 10


def test_request_bodies_carry_priority_slo_and_the_lengths() -> None:
    trace = build_trace(HybridBenchmarkConfig(num_requests=50), 10.0)
    chat = next(r for r in trace.requests if r.kind == "llm")
    body = chat.body("m", stream=True)
    assert body["priority"] == chat.priority and body["slo_ms"] == chat.slo_ms
    assert body["max_tokens"] == chat.max_tokens and body["stream"] is True
    # the simulator's estimate of the prompt (4 characters a token) is the trace's length
    assert SimulatorProfile().tokens(body["messages"][0]["content"]) == chat.prompt_tokens
    embed = next(r for r in trace.requests if r.kind == "embedding")
    assert len(embed.body("e", stream=True)["input"]) == embed.texts


# -- capacity ------------------------------------------------------------------------------


def test_simulated_capacity_is_the_profile_capacity_times_the_instances() -> None:
    config = LLMBenchmarkConfig(instances=2, sim_profile={"max_batch": 8})
    profile = SimulatorProfile(max_batch=8)
    expected = 2 * profile.capacity_rps(
        config.prompt_tokens.expected(), config.output_tokens.expected()
    )
    assert simulated_capacity(config).total_rps == pytest.approx(expected)
    hybrid = HybridBenchmarkConfig(llm_ratio=0.5)
    cap = simulated_capacity(hybrid)
    # the mix saturates when its first kind does
    assert cap.total_rps == pytest.approx(min(v / 0.5 for v in cap.per_kind.values()))


# -- metrics -------------------------------------------------------------------------------


def record(index: int, latency: float, **fields: Any) -> RequestRecord:
    values: dict[str, Any] = {
        "index": index,
        "kind": "llm",
        "request_class": "interactive",
        "priority": 0,
        "slo_ms": 2000.0,
        "idempotent": False,
        "scheduled_s": 0.0,
        "output_tokens": 10,
    }
    values.update(fields)
    values["finished_s"] = values["scheduled_s"] + latency
    return RequestRecord(**values)


def hand_built_records() -> list[RequestRecord]:
    """10 interactive chats (1..10 s, one failed), 10 batch embeddings (0.1 s each)."""
    records = [record(i, float(i), first_token_s=0.5) for i in range(1, 11)]
    records[9].error = "HTTP 503: no healthy instance"
    records += [
        record(
            10 + i,
            0.1,
            kind="embedding",
            request_class="batch",
            priority=5,
            slo_ms=30000.0,
            idempotent=True,
            scheduled_s=float(i),
            output_tokens=0,
            texts=4,
        )
        for i in range(10)
    ]
    return records


def test_metrics_percentiles_slo_and_groups_from_hand_built_records() -> None:
    m = summarize(hand_built_records())
    assert m.window_s == pytest.approx(10.0)  # first arrival 0 s, last answer at 10 s
    assert m.overall.requests == 20 and m.overall.failed == 1
    interactive = m.by_class["interactive"]
    # nine answered in 1..9 s; SLO 2 s met by two of the ten (the failed one missed it)
    assert interactive.slo_attainment == pytest.approx(0.2)
    assert interactive.latency.p50_ms == pytest.approx(5000.0)
    assert interactive.latency.p95_ms == pytest.approx(9000.0)
    assert interactive.ttft.p50_ms == pytest.approx(500.0)
    assert interactive.tokens_per_s == pytest.approx(90 / 10.0)
    batch = m.by_class["batch"]
    assert batch.slo_attainment == 1.0 and batch.texts_per_s == pytest.approx(4.0)
    assert batch.ttft.count == 0
    assert list(m.by_class) == ["interactive", "batch"]  # most urgent first
    # each kind over its own window: the embeddings arrive 0..9 s and end by 9.1 s
    assert m.by_kind["embedding"].throughput_rps == pytest.approx(10 / 9.1)
    assert m.by_kind["llm"].throughput_rps == pytest.approx(9 / 10.0)
    assert set(m.by_priority) == {"priority 0", "priority 5"}
    assert m.overall.throughput_rps == pytest.approx(19 / 10.0)
    assert m.errors == {"llm": {"HTTP 503: no healthy instance": 1}}
    assert (m.failed_idempotent, m.failed_streaming) == (0, 1)


def test_metrics_of_no_records_are_zero() -> None:
    m = summarize([])
    assert m.overall.requests == 0 and m.overall.slo_attainment == 0.0


# -- reports -------------------------------------------------------------------------------


def hand_built_result(tmp_path: Path) -> BenchmarkResult:
    config = HybridBenchmarkConfig(policies=["fifo", "slo_aware"], output_dir=tmp_path)
    records = hand_built_records()
    runs = [PolicyRun(p, p, records, summarize(records)) for p in config.policies]
    models = {"llm": "sim-llm", "embedding": "sim-embedding"}
    started = "2025-01-01T00:00:00+00:00"
    capacity = simulated_capacity(config)
    return BenchmarkResult("compare", config, 2.0, capacity, len(records), runs, started, models)


def test_reports_are_written_and_parse(tmp_path: Path) -> None:
    result = hand_built_result(tmp_path)
    paths = write_reports(result)
    data = json.loads(paths["json"].read_text())
    assert [run["policy"] for run in data["runs"]] == ["fifo", "slo_aware"]
    assert len(data["runs"][0]["requests"]) == 20
    assert data["runs"][0]["metrics"]["by_class"]["interactive"]["slo_attainment"] == 0.2
    assert data["config"]["llm_ratio"] == 0.7
    assert paths["png"].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    page = paths["html"].read_text()
    assert "data:image/png;base64," in page and "<table>" in page and "slo_aware" in page
    titles = [t.title for t in report_tables(result)]
    assert titles[-1] == "errors"


def test_without_matplotlib_the_png_is_skipped_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with caplog.at_level(logging.WARNING):
        paths = write_reports(hand_built_result(tmp_path))
    assert "png" not in paths and paths["html"].exists() and paths["json"].exists()
    assert "pip install 'sage-flow[cpbench]'" in caplog.text


# -- configuration errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "named"),
    [
        (LLMBenchmarkConfig(num_requests=0), "num_requests"),
        (LLMBenchmarkConfig(load=-1), "load"),
        (LLMBenchmarkConfig(request_rate=0), "request_rate"),
        (LLMBenchmarkConfig(arrival_pattern="zipf"), "arrival_pattern"),  # type: ignore[arg-type]
        (LLMBenchmarkConfig(classes=[]), "classes"),
        (LLMBenchmarkConfig(classes=[RequestClass("a", slo_ms=0)]), "slo_ms"),
        (LLMBenchmarkConfig(engine="gpu"), "engine"),  # type: ignore[arg-type]
        (LLMBenchmarkConfig(output_tokens=LengthDistribution(0)), "output_tokens"),
        (LLMBenchmarkConfig(sim_profile={"max_batchh": 8}), "max_batchh"),
        (EmbeddingBenchmarkConfig(kill_kind="llm"), "kill_kind"),
        (HybridBenchmarkConfig(llm_ratio=1.5), "llm_ratio"),
        (
            LLMBenchmarkConfig(control_plane_url="http://127.0.0.1:1", kill_instance_at=1.0),
            "kill_instance_at",
        ),
        (LLMBenchmarkConfig(control_plane_url="127.0.0.1:8000"), "control_plane_url"),
    ],
)
def test_validate_names_the_bad_field(config: LLMBenchmarkConfig, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        config.validate()


def test_an_unknown_policy_is_an_error_listing_the_valid_names() -> None:
    with pytest.raises(ConfigError, match="fifo, priority, slo_aware, hybrid, adaptive"):
        LLMBenchmarkConfig(policies=["fastest"]).validate()
    with pytest.raises(ConfigError, match="least_loaded, round_robin, prefix_aware, session"):
        LLMBenchmarkConfig(policies=["slo_aware+nearest"]).validate()
    HybridBenchmarkConfig(policies=["hybrid_slo"]).validate()  # the seed's spelling
    LLMBenchmarkConfig(policies=["prefix_aware", "slo_aware+cache_aware"]).validate()


def test_the_cli_exits_2_on_an_unknown_policy_and_lists_the_valid_names(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "--policy", "fastest", "--output", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown policy 'fastest'" in result.stderr
    assert "slo_aware" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--policy", "fifo,priority"],
        ["run", "--classes", "interactive:0:2000"],
        ["run", "--sim-profile", "{max_batch"],
        ["compare", "--mode", "hybrid", "--llm-ratio", "2"],
    ],
)
def test_the_cli_exits_2_on_bad_options(args: list[str], tmp_path: Path) -> None:
    result = runner.invoke(app, [*args, "--output", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error:")


def test_endpoint_urls() -> None:
    assert Endpoint.parse("http://localhost:8000").url == "http://127.0.0.1:8000/v1"
    assert Endpoint.parse("https://h:9/api/v1/").path("/embeddings") == "/api/v1/embeddings"
    with pytest.raises(ConfigError):
        Endpoint.parse("ftp://h")


# -- end to end ------------------------------------------------------------------------------


def test_run_against_its_own_simulated_gateway_finishes_without_errors(tmp_path: Path) -> None:
    args = ["run", "--mode", "hybrid", "--policy", "hybrid_slo", "--requests", "20"]
    result = runner.invoke(app, [*args, "--rate", "20", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (report,) = tmp_path.glob("run-hybrid-hybrid_slo-*.json")
    data = json.loads(report.read_text())
    (run,) = data["runs"]
    assert run["active_policy"] == "hybrid"
    assert len(run["requests"]) == 20
    assert run["metrics"]["overall"]["failed"] == 0
    assert set(run["metrics"]["by_kind"]) <= {"llm", "embedding"}
    assert (tmp_path / report.name.replace(".json", ".html")).exists()
    assert "SLO met" in result.output


def test_a_running_gateway_is_measured_with_its_policy_switched(tmp_path: Path) -> None:
    config = LLMBenchmarkConfig(engine="stub", instances=1)
    with LocalCluster(config, "fifo", tmp_path / "logs") as cluster:
        policies = "fifo,priority+session"
        args = ["compare", "--policies", policies, "--requests", "10", "--rate", "50"]
        result = runner.invoke(
            app, [*args, "--control-plane", cluster.url, "--output", str(tmp_path)]
        )
        state = httpx.get(cluster.url + "/management/policy").json()
    assert result.exit_code == 0, result.output
    assert state["routing"] == "session" and state["policy"] == "priority"
    (report,) = tmp_path.glob("compare-llm-*.json")
    data = json.loads(report.read_text())
    assert [r["active_policy"] for r in data["runs"]] == ["fifo", "priority"]
    assert data["models"] == {"llm": "stub-llm"}
    assert all(r["metrics"]["overall"]["failed"] == 0 for r in data["runs"])


def test_kill_sigkills_one_of_its_own_instances(tmp_path: Path) -> None:
    config = LLMBenchmarkConfig(engine="stub", instances=2)
    with LocalCluster(config, "fifo", tmp_path) as cluster:
        pids = [e.pid for e in cluster.engines]
        assert "SIGKILL llm instance" in cluster.kill("llm")
        killed = next(e for e in cluster.engines if e.killed)
        assert psutil.Process(killed.pid).wait(10) == -9
        assert psutil.Process(next(p for p in pids if p != killed.pid)).is_running()
    assert not any(psutil.pid_exists(p) for p in pids)


# -- tenants ---------------------------------------------------------------------------------


def test_a_tenants_requests_are_the_same_whatever_the_other_tenants_send() -> None:
    from sage.benchmark.control_plane.config import TenantLoad

    light = TenantLoad("light")
    alone = LLMBenchmarkConfig(tenants=[light], duration_s=20.0)
    both = LLMBenchmarkConfig(tenants=[light, TenantLoad("heavy", share=10)], duration_s=20.0)
    alone_trace = build_trace(alone, rate=1.0)
    both_trace = build_trace(both, rate=11.0)  # light keeps its 1 req/s

    def light_requests(trace: Any) -> list[tuple[float, int, int]]:
        return [
            (r.at_s, r.prompt_tokens, r.max_tokens) for r in trace.requests if r.tenant == "light"
        ]

    assert light_requests(alone_trace) == light_requests(both_trace)
    heavy = sum(r.tenant == "heavy" for r in both_trace.requests)
    assert 7 < heavy / len(light_requests(both_trace)) < 14
    assert [r.index for r in both_trace.requests] == list(range(len(both_trace.requests)))
    assert all(a.at_s <= b.at_s for a, b in itertools.pairwise(both_trace.requests))


def test_tenants_are_parsed_and_checked_with_the_gateways_rules() -> None:
    from sage.benchmark.control_plane.config import TenantLoad

    assert TenantLoad.parse_list("light:1:1,heavy:2:10")[1] == TenantLoad("heavy", 2.0, 10.0)
    with pytest.raises(ConfigError, match="name:weight:share"):
        TenantLoad.parse_list("light:1")
    with pytest.raises(ConfigError, match=r"tenants\.a\.weight=0"):
        LLMBenchmarkConfig(tenants=[TenantLoad("a", weight=0)]).validate()
    with pytest.raises(ConfigError, match="own gateway"):
        LLMBenchmarkConfig(
            tenants=[TenantLoad("a")], control_plane_url="http://127.0.0.1:1"
        ).validate()


def test_a_run_with_tenants_reports_each_tenant(tmp_path: Path) -> None:
    args = ["run", "--engine", "stub", "--instances", "1", "--requests", "30", "--rate", "60"]
    tenants = ["--tenants", "light:1:1,heavy:2:4", "--no-fair-share"]
    result = runner.invoke(app, [*args, *tenants, "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (report,) = tmp_path.glob("run-llm-*.json")
    data = json.loads(report.read_text())
    (run,) = data["runs"]
    by_tenant = run["metrics"]["by_tenant"]
    assert set(by_tenant) == {"light", "heavy"} and run["metrics"]["overall"]["failed"] == 0
    assert by_tenant["light"]["requests"] + by_tenant["heavy"]["requests"] == 30
    assert {r["tenant"] for r in run["requests"]} == {"light", "heavy"}
    assert data["config"]["fair_share"] is False
    assert "tenant heavy" in result.output and "no fair share" in result.output
