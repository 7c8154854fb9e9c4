"""One Prometheus text exposition writer (format 0.0.4) for every SAGE server.

Servers build :class:`MetricFamily` objects, add one sample per label set, and answer
``GET /metrics`` with :func:`render`'s bytes and :data:`CONTENT_TYPE`. Names are checked
when a family is made and label values are escaped when a sample is added, so no request
field (a client-chosen class name, a model name) can break the text.

Example:
    >>> requests = MetricFamily("sage_requests_total", "counter", "Requests served.")
    >>> requests.add(3, model="m")
    >>> render([requests]).decode().splitlines()[-1]
    'sage_requests_total{model="m"} 3'
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from sage.common.errors import ConfigError

__all__ = ["CONTENT_TYPE", "Column", "Kind", "MetricFamily", "columns", "label_value", "render"]

Kind = Literal["counter", "gauge"]
Column = tuple[str, Kind, str, str]
"""A family built from rows of figures: (name, kind, help, the row's key holding its value)."""

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The ``content-type`` of :func:`render`'s output."""

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_KINDS = ("counter", "gauge")


def label_value(value: object) -> str:
    """``str(value)`` escaped for a label value: backslash, double quote and newline."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _help_text(text: str) -> str:
    """HELP text escaped: backslash and newline (quotes are legal there)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    """A sample value the way Prometheus parsers read it.

    Integers (and bools) print as integers, floats by ``repr`` (``1.0``, ``2.5e-05``), and
    the non-finite ones as ``NaN``, ``+Inf`` and ``-Inf``.
    """
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    number = float(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    return repr(number)


class MetricFamily:
    """One metric: its name, type, help text and samples (one per label set).

    Args:
        name: Metric name, ``[a-zA-Z_:][a-zA-Z0-9_:]*``; a counter's ends in ``_total``.
        kind: ``"counter"`` (only goes up) or ``"gauge"``.
        help: One line saying what it measures (and its unit).

    Raises:
        ConfigError: (a ``ValueError``) an invalid name or kind; the message says the fix.
    """

    def __init__(self, name: str, kind: Kind, help: str) -> None:
        if not isinstance(name, str) or not _METRIC_NAME.fullmatch(name):
            raise ConfigError(
                f"metric name {name!r} is invalid: use letters, digits, '_' and ':' only, "
                "not starting with a digit (e.g. 'sage_requests_total')"
            )
        if kind not in _KINDS:
            raise ConfigError(
                f"metric kind {kind!r} of {name!r} is invalid: use 'counter' or 'gauge'"
            )
        if kind == "counter" and not name.endswith("_total"):
            raise ConfigError(
                f"counter name {name!r} must end in '_total': name it {name + '_total'!r} "
                "(or make it a gauge)"
            )
        self.name = name
        self.kind: Kind = kind
        self.help = help
        self._samples: list[str] = []

    def add(self, value: float, **labels: object) -> None:
        """Add one sample; labels keep the order given, values are ``str()``-ed and escaped.

        A label named by a Python keyword goes in through a dict:
        ``family.add(1, **{"class": "gold"})``.

        Raises:
            ConfigError: an invalid label name (letters, digits, '_'; no leading ``__``).
            TypeError: ``value`` is not a number.
        """
        for label in labels:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
                raise ConfigError(
                    f"label name {label!r} of metric {self.name!r} is invalid: use letters, "
                    "digits and '_', not starting with a digit or '__'"
                )
        if not isinstance(value, int | float):
            raise TypeError(
                f"metric {self.name!r} takes a number, not {type(value).__name__} "
                f"({value!r}); convert it with float()"
            )
        text = _number(value)
        if labels:
            pairs = ",".join(f'{key}="{label_value(val)}"' for key, val in labels.items())
            self._samples.append(f"{self.name}{{{pairs}}} {text}")
        else:
            self._samples.append(f"{self.name} {text}")

    def __len__(self) -> int:
        """Samples added so far."""
        return len(self._samples)

    def lines(self) -> list[str]:
        """The family's text lines: HELP, TYPE, then its samples."""
        return [
            f"# HELP {self.name} {_help_text(self.help)}",
            f"# TYPE {self.name} {self.kind}",
            *self._samples,
        ]


def render(families: Iterable[MetricFamily]) -> bytes:
    """The exposition text of ``families`` (UTF-8, newline-terminated; empty: no families).

    A family without samples still prints its HELP and TYPE lines, so scrapers see every
    metric the server defines even before it has anything to count.
    """
    lines = [line for family in families for line in family.lines()]
    return ("\n".join(lines) + "\n").encode() if lines else b""


def columns(
    specs: Iterable[Column], rows: Iterable[tuple[Mapping[str, object], Mapping[str, Any]]]
) -> list[MetricFamily]:
    """One family per column of ``specs``, with a sample per ``(labels, figures)`` row.

    A row whose figure is missing or not a number (``None``: nothing measured yet) has no
    sample in that family; booleans count as 0/1.
    """
    rows = list(rows)
    families = []
    for name, kind, help_text, key in specs:
        family = MetricFamily(name, kind, help_text)
        for labels, figures in rows:
            value = figures.get(key)
            if isinstance(value, int | float):
                family.add(float(value), **labels)
        families.append(family)
    return families
