"""The README's and the docs' code runs as written and prints what its comments say."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import re
import tomllib
from pathlib import Path

import pytest
import typer.main

from metric_names import documented, every_documented

ROOT = Path(__file__).resolve().parents[1]
# every page of the documentation site (docs/, with api/ and any other folder) and the README
DOCS = ["README.md", *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").rglob("*.md")))]


@pytest.mark.parametrize("doc", DOCS)
def test_doc_examples_run_and_print_what_they_claim(doc: str) -> None:
    text = (ROOT / doc).read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    if doc == "README.md":
        assert blocks, "the README has no Python example"
    for block in blocks:
        claimed = re.findall(r"print\((.*)\)\s+# (.*)", block)
        out = io.StringIO()
        logging.disable(logging.WARNING)  # a handler writing to stdout must not add lines
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(block, doc, "exec"), {"__name__": "doc"})
        finally:
            logging.disable(logging.NOTSET)
        printed = out.getvalue().splitlines()
        assert printed == [comment.strip() for _, comment in claimed]
    # The embedded engines (an example's LLMService in this process) are process-wide by
    # design, kept until shut down or the interpreter exits: this test is their end.
    from sage.inference.client.unified import UnifiedInferenceClient

    UnifiedInferenceClient.shutdown_embedded()


def test_the_cli_page_documents_every_installed_program() -> None:
    """docs/cli.md is generated from sage.cli.docs: one block per [project.scripts] entry,
    each naming the click command built from that program's own Typer app."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
        "scripts"
    ]
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    blocks = re.findall(
        r"::: mkdocs-click\n\s+:module: (\S+)\n\s+:command: (\S+)\n\s+:prog_name: (\S+)\n", page
    )
    assert sorted(prog for _, _, prog in blocks) == sorted(scripts)
    for module, command, prog in blocks:
        on_page = getattr(importlib.import_module(module), command)
        app_module, app_name = scripts[prog].split(":")
        app = getattr(importlib.import_module(app_module), app_name)
        installed = typer.main.get_command(app)
        assert on_page.help == installed.help, prog
        assert [p.name for p in on_page.params] == [p.name for p in installed.params], prog
        assert sorted(getattr(on_page, "commands", {})) == sorted(
            getattr(installed, "commands", {})
        ), prog


def test_the_grafana_dashboard_queries_only_documented_current_metrics() -> None:
    dashboard = json.loads((ROOT / "docs" / "grafana" / "sage.json").read_text(encoding="utf-8"))
    assert "docs/grafana/sage.json" in (ROOT / "docs" / "OBSERVABILITY.md").read_text()
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    queries = [t["expr"] for p in panels for t in p["targets"]]
    queries += [v["definition"] for v in dashboard["templating"]["list"]]
    current = every_documented().items() - documented("Deprecated aliases").items()
    kinds = dict(current)
    used = set()
    for query in queries:
        assert query.count("(") == query.count(")"), query
        for name in re.findall(r"\bsage_[a-z0-9_]+", query):
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            family = base if base in kinds else name
            assert family in kinds, f"{name} in {query!r} is not a documented, current metric"
            if family != name:
                assert kinds[family] == "histogram", name
            used.add(family)
        if "histogram_quantile" in query:
            assert "_bucket" in query and re.search(r"by \(le\b", query), query
    # every panel reads the data source chosen at import, and every family is on a panel
    assert all(p["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in panels)
    assert dashboard["__inputs"][0]["name"] == "DS_PROMETHEUS"
    latencies = {n for n, k in kinds.items() if k == "histogram"}
    assert latencies <= used, f"no panel for {latencies - used}"
    cells = set()  # panels do not overlap on the 24-column grid
    for p in dashboard["panels"]:
        g = p["gridPos"]
        area = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert g["x"] + g["w"] <= 24 and not cells & area, p["title"]
        cells |= area
