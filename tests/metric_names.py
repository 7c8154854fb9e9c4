"""The metric names ``docs/OBSERVABILITY.md`` documents, and the shape every server's
``/metrics`` output must have, for the tests that scrape them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

DOC = Path(__file__).resolve().parents[1] / "docs" / "OBSERVABILITY.md"
LATENCY = re.compile(r"latency|duration|ttft|time_to_first|time_per|queue_time")
"""Names of families that measure a latency."""


def documented(section: str) -> dict[str, str]:
    """``{name: type}`` from the table under ``### <section>`` of the doc."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"^### {re.escape(section)}\n(.*?)(?=^##)", text, re.S | re.M)
    assert match, f"no section {section!r} in {DOC.name}"
    rows = re.findall(
        r"^\| `(sage_[a-z0-9_]+)` \| (counter|gauge|histogram) \|", match.group(1), re.M
    )
    assert rows, f"no metrics listed under {section!r}"
    return dict(rows)


def every_documented() -> dict[str, str]:
    """``{name: type}`` of every table in the doc (the deprecated aliases included)."""
    text = DOC.read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(sage_[a-z0-9_]+)` \| (counter|gauge|histogram) \|", text, re.M)
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


def shaped(exposition: str) -> dict[str, Any]:
    """The families of ``exposition`` by name, once checked: it parses, every latency family
    is a histogram in seconds with samples for each bucket, and a family in milliseconds is
    a deprecated alias (its help says so)."""
    families = {f.name: f for f in text_string_to_metric_families(exposition)}
    assert families, "no metric families"
    for name, family in families.items():
        if name.endswith("_ms"):
            assert family.documentation.startswith("Deprecated"), name
        elif LATENCY.search(name):
            assert family.type == "histogram" and name.endswith("_seconds"), name
            suffixes = {s.name.removeprefix(name) for s in family.samples}
            assert not family.samples or suffixes == {"_bucket", "_count", "_sum"}, name
    return families


def histogram_count(family: Any, **labels: str) -> float:
    """The ``_count`` of ``family``'s series whose labels include ``labels`` (summed)."""
    return sum(
        s.value
        for s in family.samples
        if s.name.endswith("_count") and labels.items() <= s.labels.items()
    )
