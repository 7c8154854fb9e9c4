"""The metric names ``docs/OBSERVABILITY.md`` documents, for tests that check the servers'
``/metrics`` output against them."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

DOC = Path(__file__).resolve().parents[1] / "docs" / "OBSERVABILITY.md"


def documented(section: str) -> dict[str, str]:
    """``{name: type}`` from the table under ``### <section>`` of the doc."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"^### {re.escape(section)}\n(.*?)(?=^##)", text, re.S | re.M)
    assert match, f"no section {section!r} in {DOC.name}"
    rows = re.findall(r"^\| `(sage_[a-z0-9_]+)` \| (counter|gauge) \|", match.group(1), re.M)
    assert rows, f"no metrics listed under {section!r}"
    return dict(rows)


def family_names(exposition: str) -> set[str]:
    """Family names in Prometheus text, as its parser reads them (counters lose ``_total``)."""
    return {f.name for f in text_string_to_metric_families(exposition)}


def missing(exposition: str, *sections: str) -> set[str]:
    """Documented names of ``sections`` that ``exposition`` lacks (empty: all there)."""
    found = family_names(exposition)
    expected = {
        name.removesuffix("_total") if kind == "counter" else name
        for section in sections
        for name, kind in documented(section).items()
    }
    return expected - found
