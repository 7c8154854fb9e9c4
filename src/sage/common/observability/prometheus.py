"""SAGE's Prometheus metrics, built on ``prometheus_client``: one family type and one
collector for every server's ``GET /metrics``.

Servers build :class:`MetricFamily` objects at scrape time from the figures they keep
(counters, gauges and :class:`~sage.common.stats.Histogram` buckets), and answer with
:func:`exposition` of a :class:`Collector` (or :func:`render` of a list of families) and
:data:`CONTENT_TYPE`. A collector is a ``prometheus_client`` collector: register it in a
``CollectorRegistry`` to expose an in-process gateway beside an application's own metrics.
Names are checked when a family is made and labels when a sample is added;
``prometheus_client`` escapes label values, so no client-chosen class or model name can
break the text.

Example:
    >>> requests = MetricFamily("sage_requests_total", "counter", "Requests served.")
    >>> requests.add(3, model="m")
    >>> render([requests]).decode().splitlines()[-1]
    'sage_requests_total{model="m"} 3.0'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric

from sage.common.errors import ConfigError
from sage.common.stats import Histogram

__all__ = [
    "CONTENT_TYPE",
    "Collector",
    "Column",
    "Kind",
    "MetricFamily",
    "columns",
    "exposition",
    "render",
]

Kind = Literal["counter", "gauge", "histogram"]
Column = tuple[str, Kind, str, str]
"""A family built from rows of figures: (name, kind, help, the row's key holding its value).
A histogram column's value is a :class:`~sage.common.stats.Histogram`."""

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The ``content-type`` of :func:`render`'s output (Prometheus' text format 0.0.4)."""

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_KINDS = ("counter", "gauge", "histogram")
_HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def _check_name(name: str, kind: str) -> None:
    if not isinstance(name, str) or not _METRIC_NAME.fullmatch(name):
        raise ConfigError(
            f"metric name {name!r} is invalid: use letters, digits, '_' and ':' only, "
            "not starting with a digit (e.g. 'sage_requests_total')"
        )
    if kind not in _KINDS:
        raise ConfigError(
            f"metric kind {kind!r} of {name!r} is invalid: use 'counter', 'gauge' or 'histogram'"
        )
    if kind == "counter" and not name.endswith("_total"):
        raise ConfigError(
            f"counter name {name!r} must end in '_total': name it {name + '_total'!r} "
            "(or make it a gauge)"
        )
    if kind == "histogram" and name.endswith(_HISTOGRAM_SUFFIXES):
        raise ConfigError(
            f"histogram name {name!r} must not end in {', '.join(_HISTOGRAM_SUFFIXES)}: "
            "its samples add those; name it by what it measures and its unit "
            "(e.g. 'sage_request_duration_seconds')"
        )


class MetricFamily:
    """One metric: its name, type, help text and samples (one per label set).

    Args:
        name: Metric name, ``[a-zA-Z_:][a-zA-Z0-9_:]*``; a counter's ends in ``_total``, a
            histogram's names its unit (``_seconds``).
        kind: ``"counter"`` (only goes up), ``"gauge"`` or ``"histogram"``.
        help: One line saying what it measures (and its unit).

    Raises:
        ConfigError: (a ``ValueError``) an invalid name or kind; the message says the fix.
    """

    def __init__(self, name: str, kind: Kind, help: str) -> None:
        _check_name(name, kind)
        self.name = name
        self.kind: Kind = kind
        self.help = help
        # prometheus_client names a counter family without its ``_total`` (OpenMetrics)
        self.metric = Metric(name.removesuffix("_total") if kind == "counter" else name, help, kind)
        self._samples = 0

    def _labels(self, labels: Mapping[str, object]) -> dict[str, str]:
        for label in labels:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
                raise ConfigError(
                    f"label name {label!r} of metric {self.name!r} is invalid: use letters, "
                    "digits and '_', not starting with a digit or '__'"
                )
        return {key: str(value) for key, value in labels.items()}

    def add(self, value: float, **labels: object) -> None:
        """Add one sample of a counter or gauge; label values are ``str()``-ed.

        A label named by a Python keyword goes in through a dict:
        ``family.add(1, **{"class": "gold"})``.

        Raises:
            ConfigError: an invalid label name (letters, digits, '_'; no leading ``__``), or
                a histogram family (use :meth:`add_histogram`).
            TypeError: ``value`` is not a number.
        """
        if self.kind == "histogram":
            raise ConfigError(f"{self.name!r} is a histogram: add samples with add_histogram()")
        strings = self._labels(labels)
        if not isinstance(value, int | float):
            raise TypeError(
                f"metric {self.name!r} takes a number, not {type(value).__name__} "
                f"({value!r}); convert it with float()"
            )
        self.metric.add_sample(self.name, strings, float(value))
        self._samples += 1

    def add_histogram(self, histogram: Histogram, **labels: object) -> None:
        """Add one histogram (its cumulative ``_bucket`` samples, ``_count`` and ``_sum``).

        Raises:
            ConfigError: an invalid label name, or a family that is not a histogram.
        """
        if self.kind != "histogram":
            raise ConfigError(f"{self.name!r} is a {self.kind}: add samples with add()")
        if "le" in labels:
            raise ConfigError(f"label 'le' of {self.name!r} is reserved for histogram buckets")
        strings = self._labels(labels)
        bucket = self.name + "_bucket"
        total = 0
        for bound, count in zip(histogram.bounds, histogram.counts, strict=False):
            total += count
            self.metric.add_sample(bucket, {**strings, "le": repr(bound)}, total)
        total += histogram.counts[-1]
        self.metric.add_sample(bucket, {**strings, "le": "+Inf"}, total)
        self.metric.add_sample(self.name + "_count", strings, total)
        self.metric.add_sample(self.name + "_sum", strings, histogram.sum)
        self._samples += 1

    def __len__(self) -> int:
        """Samples (histograms) added so far."""
        return self._samples


class Collector:
    """A ``prometheus_client`` collector whose families ``build`` makes at each scrape.

    Args:
        build: Returns the families as of now (called once per scrape).
    """

    def __init__(self, build: Callable[[], Iterable[MetricFamily]]) -> None:
        self._build = build

    def collect(self) -> Iterator[Metric]:
        """The families' ``prometheus_client`` metrics (the collector protocol)."""
        for family in self._build():
            yield family.metric


def exposition(collector: Collector) -> bytes:
    """The text exposition of ``collector`` (UTF-8; empty: no families)."""
    return generate_latest(collector)


def render(families: Iterable[MetricFamily]) -> bytes:
    """The exposition text of ``families`` (UTF-8, newline-terminated; empty: no families).

    A family without samples still prints its HELP and TYPE lines, so scrapers see every
    metric the server defines even before it has anything to count.
    """
    families = list(families)
    return exposition(Collector(lambda: families))


def columns(
    specs: Iterable[Column], rows: Iterable[tuple[Mapping[str, object], Mapping[str, Any]]]
) -> list[MetricFamily]:
    """One family per column of ``specs``, with a sample per ``(labels, figures)`` row.

    A row whose figure is missing or not a number (``None``: nothing measured yet) has no
    sample in that family; booleans count as 0/1. A histogram column takes a
    :class:`~sage.common.stats.Histogram`.
    """
    rows = list(rows)
    families = []
    for name, kind, help_text, key in specs:
        family = MetricFamily(name, kind, help_text)
        for labels, figures in rows:
            value = figures.get(key)
            if kind == "histogram":
                if isinstance(value, Histogram):
                    family.add_histogram(value, **labels)
            elif isinstance(value, int | float):
                family.add(float(value), **labels)
        families.append(family)
    return families
