"""The dashboard in a real browser: headless Chromium (Debian's) driven by Playwright.

With a pipeline running in another process, the page must show the job, its operators with
throughput that is non-zero and growing, and the host's figures. A screenshot is left in
``test-artifacts/dashboard.png``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from dashboard_helpers import RunningJob

from sage.dashboard.server import DashboardServer

CHROMIUM = os.environ.get("SAGE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"no Chromium at {CHROMIUM} (`make test` installs Debian's as root)",
    ),
]


@pytest.fixture
def page() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


RATES = '[data-testid="operator-node"] [data-testid="op-rate"]'
RECORDS = '[data-testid="operator-row"] [data-testid="op-records"]'
# every operator node shows a non-zero rate
ALL_RATES_NONZERO = """(sel) => {
    const rates = [...document.querySelectorAll(sel)];
    return rates.length === 4 && rates.every(r => /[1-9]/.test(r.textContent));
}"""
# every operator's processed-records cell shows more than it did before
ALL_RECORDS_GREW = """([sel, before]) => {
    const scale = {'': 1, k: 1e3, M: 1e6, G: 1e9};
    const parse = t => {
        const m = t.replace(/,/g, '').match(/([\\d.]+)\\s*([kMG]?)/);
        return m ? parseFloat(m[1]) * scale[m[2]] : 0;
    };
    const cells = [...document.querySelectorAll(sel)];
    return cells.length === before.length
        && cells.every((c, i) => parse(c.textContent) > before[i]);
}"""


def _number(text: str) -> float:
    """``"12.3k"`` -> 12300.0, ``"1,234"`` -> 1234.0."""
    match = re.search(r"([\d.,]+)\s*([kMG]?)", text)
    assert match, f"no number in {text!r}"
    scale = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}[match.group(2)]
    return float(match.group(1).replace(",", "")) * scale


def test_the_page_shows_a_running_job_its_operators_and_the_host(
    dashboard: DashboardServer, running_job: RunningJob, page: object
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: (
            problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None
        ),
    )
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(dashboard.url + "/")

    expect(page.get_by_test_id("connection")).to_contain_text("live")
    row = page.locator(f'[data-testid="job-row"]:has-text("{running_job.name}")')
    expect(row).to_be_visible()
    row.click()
    expect(page.get_by_test_id("job-detail")).to_contain_text(running_job.name)

    # the operator graph: one node per operator, each with a rate
    nodes = page.get_by_test_id("operator-node")
    expect(nodes).to_have_count(4)
    graph = page.get_by_test_id("operator-graph")
    for name in ("Counter", "Enrich", "Even", "Discard"):
        expect(graph).to_contain_text(name)
    # every operator's rate becomes non-zero
    page.wait_for_function(ALL_RATES_NONZERO, arg=RATES)
    # and the records each has processed grow between two reads
    cells = page.locator(RECORDS)
    expect(cells).to_have_count(4)
    before = [_number(t) for t in cells.all_inner_texts()]
    page.wait_for_function(ALL_RECORDS_GREW, arg=[RECORDS, before])
    after = [_number(t) for t in cells.all_inner_texts()]
    assert all(b > a for a, b in zip(before, after, strict=True)), (before, after)
    assert all(v > 0 for v in after)

    # the service the map calls
    expect(page.get_by_test_id("services")).to_contain_text("lookup")

    # the host: CPU and memory figures, and the job's process with its RSS
    expect(page.get_by_test_id("host-cpu")).to_contain_text(re.compile(r"\d+\s*%"))
    expect(page.get_by_test_id("host-memory")).to_contain_text(re.compile(r"\d"))
    expect(page.get_by_test_id("processes")).to_contain_text(str(running_job.process.pid))
    # GPUs: figures where NVML sees one, else a clear "no GPU" state
    gpus = page.get_by_test_id("gpus")
    if dashboard.gpu_monitor.read().available:
        expect(gpus.get_by_test_id("gpu").first).to_be_visible()
    else:
        expect(gpus.get_by_test_id("no-gpu")).to_be_visible()

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert not problems, problems
    foreign = [url for url in requested if not url.startswith(dashboard.url)]
    assert not foreign, f"the page fetched from elsewhere: {foreign}"


def test_the_page_says_so_when_the_dashboard_goes_away(home: Path, page: object) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    server = DashboardServer(port=0)
    server.start()
    try:
        page.goto(server.url + "/")
        expect(page.get_by_test_id("connection")).to_contain_text("live")
        expect(page.get_by_test_id("no-jobs")).to_be_visible()
    finally:
        server.stop()
    expect(page.get_by_test_id("connection")).to_contain_text("reconnecting")


def test_the_page_shows_a_gateways_tenants(
    home: Path, page: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway with tenants (stub engine): the page lists each tenant with its limits,
    requests and 429s. The dashboard reads the gateway with ``SAGE_API_KEY``, a key of the
    ``default`` tenant here."""
    import httpx
    from playwright.sync_api import Page, expect

    from sage.inference.deploy.stack import LocalStack

    assert isinstance(page, Page)
    monkeypatch.setenv("SAGE_API_KEY", "ops-key")
    tenants = {"acme": {"api_keys": ["sk-acme"], "rpm": 2, "weight": 2}}
    with LocalStack("stub-llm", None, engine="stub", gateway_options={"tenants": tenants}) as stack:
        chat = {"model": "stub-llm", "messages": [{"role": "user", "content": "hi"}]}
        codes = [
            httpx.post(
                stack.gateway_url + "/chat/completions",
                json=chat,
                headers={"authorization": "Bearer sk-acme"},
            ).status_code
            for _ in range(3)
        ]
        assert codes == [200, 200, 429]
        with DashboardServer(
            port=0, gateways=[f"127.0.0.1:{stack.port}"], advertise_to=False
        ) as dashboard:
            page.goto(dashboard.url + "/")
            table = page.get_by_test_id("tenants")
            expect(table).to_be_visible()
            acme = table.locator('[data-testid="tenant-row"][data-tenant="acme"]')
            expect(acme).to_contain_text("2 rpm")
            expect(acme.locator("td").nth(3)).to_have_text("3")  # requests
            expect(acme.locator("td").nth(4)).to_have_text("1")  # refused with 429
            expect(table.locator('[data-tenant="default"]')).to_be_visible()
            ARTIFACTS.mkdir(exist_ok=True)
            page.get_by_test_id("gateways").screenshot(path=str(ARTIFACTS / "tenants.png"))
