"""The dashboard server: what jobs publish, the state and its event stream, Prometheus."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from dashboard_helpers import RunningJob

from metric_names import histogram_count, missing, shaped
from sage.common.errors import ConfigError
from sage.common.observability.discovery import find_dashboard
from sage.dashboard.server import DashboardServer
from sage.kernel.jobmanager.factories import LocalJobFactory
from sage.kernel.jobmanager.server import JobManagerServer


def wait_for(read: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll ``read`` (an HTTP read of the server) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = read()
        if value:
            return value
    raise AssertionError(f"nothing after {timeout} s")


def job_row(server: DashboardServer, name: str) -> dict[str, Any] | None:
    state = httpx.get(f"{server.url}/api/state").json()
    return next((j for j in state["jobs"] if j["name"] == name), None)


def samples(text: str) -> dict[str, list[Any]]:
    """Samples by family, once the text passed :func:`metric_names.shaped`'s checks."""
    return {name: f.samples for name, f in shaped(text).items()}


def test_a_job_in_another_process_appears_with_live_rates(
    dashboard: DashboardServer, running_job: RunningJob
) -> None:
    first = wait_for(
        lambda: (row := job_row(dashboard, running_job.name)) and row["records_per_s"] and row
    )
    assert first["status"] == "running" and first["source"] == "local"
    assert first["pid"] == running_job.process.pid
    ops = {op["operator"]: op for op in first["metrics"]["operators"]}
    assert set(ops) == {"source 'Counter'", "map 'Enrich'", "filter 'Even'", "sink 'Discard'"}
    ids = {op["operator"]: op["node_id"] for op in ops.values()}
    assert [ids["source 'Counter'"], ids["map 'Enrich'"]] in first["metrics"]["edges"]
    assert first["metrics"]["services"][0]["service"] == "lookup"
    assert first["memory"]["threshold_mb"] == 100_000 and first["memory"]["rss_mb"] > 0
    assert all(rate > 0 for rate in first["records_per_s"].values())
    # the counts grow from one refresh to the next
    source = str(ids["source 'Counter'"])
    later = wait_for(
        lambda: (
            (row := job_row(dashboard, running_job.name))
            and _processed(row, source) > _processed(first, source)
            and row
        )
    )
    assert later["metrics"]["elapsed_s"] > first["metrics"]["elapsed_s"]
    # the job's process is listed with its memory
    state = httpx.get(f"{dashboard.url}/api/state").json()
    roles = {p["pid"]: p for p in state["host"]["processes"]}
    assert roles[running_job.process.pid]["role"] == f"job {running_job.name}"
    assert roles[running_job.process.pid]["rss_mb"] > 10
    # its end is published at once
    assert running_job.finish() == 0
    ended = wait_for(
        lambda: (
            (row := job_row(dashboard, running_job.name)) and row["status"] == "finished" and row
        )
    )
    assert not ended["stale"] and set(ended["records_per_s"].values()) == {0.0}


def _processed(row: dict[str, Any], node: str) -> int:
    op = next(o for o in row["metrics"]["operators"] if str(o["node_id"]) == node)
    return int(op["records_out"])


def test_the_event_stream_pushes_each_refresh(dashboard: DashboardServer) -> None:
    seen: list[dict[str, Any]] = []
    with httpx.stream("GET", f"{dashboard.url}/events", timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen.append(orjson.loads(line[6:]))
                if len(seen) == 2:
                    break
    assert seen[1]["time"] > seen[0]["time"]
    assert {"host", "gpus", "jobs", "gateways", "jobmanagers"} <= set(seen[0])


def test_the_page_and_its_assets_are_served_locally(dashboard: DashboardServer) -> None:
    page = httpx.get(f"{dashboard.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    for name in ("app.js", "style.css"):
        asset = httpx.get(f"{dashboard.url}/static/{name}")
        assert asset.status_code == 200 and "https://" not in asset.text
    assert httpx.get(f"{dashboard.url}/static/%2e%2e/server.py").status_code == 404
    assert httpx.get(f"{dashboard.url}/server.py").status_code == 404


def test_only_holders_of_the_token_can_publish(dashboard: DashboardServer, home: Path) -> None:
    address = find_dashboard()
    assert address is not None and address.port == dashboard.port
    assert (home / "dashboard" / "server.json").stat().st_mode & 0o077 == 0
    row = {"id": "x-1", "name": "fake", "status": "running", "metrics": {}}
    refused = httpx.post(f"{dashboard.url}/api/jobs", json=row)
    assert refused.status_code == 401
    wrong = httpx.post(
        f"{dashboard.url}/api/jobs", json=row, headers={"authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401
    auth = {"authorization": f"Bearer {address.token}"}
    bad = httpx.post(f"{dashboard.url}/api/jobs", content=b"[1, 2", headers=auth)
    assert bad.status_code == 400 and "not valid JSON" in bad.text
    bad = httpx.post(f"{dashboard.url}/api/jobs", json=[1, 2], headers=auth)
    assert bad.status_code == 400 and "bad job snapshot" in bad.text
    assert httpx.post(f"{dashboard.url}/api/jobs", json=row, headers=auth).status_code == 204
    assert job_row(dashboard, "fake") is not None


def test_prometheus_output_parses_and_carries_the_documented_names(
    dashboard: DashboardServer, running_job: RunningJob
) -> None:
    wait_for(lambda: (row := job_row(dashboard, running_job.name)) and row["records_per_s"])
    text = httpx.get(f"{dashboard.url}/metrics").text
    assert not missing(text, "Jobs (dashboard and JobManager)", "Dashboard only")
    found = samples(text)
    records = [s for s in found["sage_operator_records_in"] if s.labels["job"] == running_job.name]
    assert {s.labels["operator"] for s in records} >= {"map 'Enrich'", "sink 'Discard'"}
    assert all(s.value > 0 for s in records if s.labels["operator"] != "source 'Counter'")
    assert found["sage_host_cpu_percent"][0].value >= 0
    assert found["sage_gpu_available"][0].value in (0, 1)


def test_jobmanager_jobs_and_its_prometheus_output(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sage.core.api.remote_environment import RemoteEnvironment

    monkeypatch.setenv("SAGE_JOBMANAGER_TOKEN", "t0ken")
    with JobManagerServer(job_factory=LocalJobFactory(), port=0) as jm:
        env = RemoteEnvironment("remote-count", port=jm.port)
        env.from_collection(list(range(5000))).map(lambda x: x + 1).sink(lambda x: None)
        env.submit(autostop=True)
        with DashboardServer(port=0, jobmanagers=[f"127.0.0.1:{jm.port}"]) as dash:
            row = wait_for(lambda: job_row(dash, "remote-count"))
            assert row["source"] == "jobmanager" and row["status"] == "finished"
            assert row["runtime"] == "local"
            assert {op["records_in"] for op in row["metrics"]["operators"][1:]} == {5000}
        unauthorized = httpx.get(f"http://127.0.0.1:{jm.port}/metrics")
        assert unauthorized.status_code == 401
        text = httpx.get(
            f"http://127.0.0.1:{jm.port}/metrics", headers={"authorization": "Bearer t0ken"}
        ).text
    assert not missing(text, "Jobs (dashboard and JobManager)", "JobManager only")
    found = samples(text)
    assert {s.labels["status"]: s.value for s in found["sage_jobmanager_jobs"]}["finished"] == 1
    assert any(s.value == 5000 for s in found["sage_operator_records_in"])
    assert {"sage_job_info", "sage_operator_latency_p95_ms", "sage_service_calls"} <= set(found)
    # the map's timed records, as a histogram in seconds, from the job through the JobManager
    family = shaped(text)["sage_operator_latency_seconds"]
    (mapper,) = {s.labels["operator"] for s in family.samples if s.labels["operator"][:3] == "map"}
    assert histogram_count(family, operator=mapper) > 0


def test_an_unreachable_gateway_is_shown_as_such(home: Path) -> None:
    from sage.common.config.ports import SagePorts

    port = SagePorts.any_free_port()
    with DashboardServer(port=0, gateways=[f"127.0.0.1:{port}"], advertise_to=False) as dash:
        assert dash.wait_sampled(30)
        state = httpx.get(f"{dash.url}/api/state").json()
    [gateway] = state["gateways"]
    assert gateway["url"] == f"http://127.0.0.1:{port}" and not gateway["ok"]
    assert "ConnectError" in gateway["error"]


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(ConfigError, match="interval_s"):
        DashboardServer(interval_s=0.1)
    with pytest.raises(ConfigError, match="--gateway"):
        DashboardServer(gateways=["not an address"])
    with pytest.raises(ConfigError, match="--jobmanager"):
        DashboardServer(jobmanagers=["localhost"])
