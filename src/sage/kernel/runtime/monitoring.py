"""The ``memory_monitor`` section of a job's config: a :class:`MemoryMonitor` for its run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sage.common.errors import ConfigError
from sage.common.observability.memory import MemoryMonitor

__all__ = ["memory_monitor"]

_KEYS = ("threshold_mb", "interval_s")


def memory_monitor(config: Mapping[str, Any] | None) -> MemoryMonitor | None:
    """The monitor ``config["memory_monitor"]`` asks for (``None`` when it asks for none).

    ``{"memory_monitor": {"threshold_mb": 1000, "interval_s": 1.0}}`` samples the process's
    RSS every ``interval_s`` while the job runs, logs a warning each time it crosses
    ``threshold_mb``, and reports ``rss_mb``/``peak_mb`` on the dashboard.

    Raises:
        ConfigError: the section is not a dict, has an unknown key or a bad value.
    """
    section = (config or {}).get("memory_monitor")
    if section is None or section is False:
        return None
    if section is True:
        section = {}
    if not isinstance(section, Mapping):
        raise ConfigError(
            f"config['memory_monitor']={section!r} is invalid; use a dict such as "
            '{"threshold_mb": 1000, "interval_s": 1.0}, or True for the defaults'
        )
    unknown = sorted(str(k) for k in section if k not in _KEYS)
    if unknown:
        raise ConfigError(
            f"config['memory_monitor'] has unknown key(s) {', '.join(unknown)}; "
            f"it takes {', '.join(_KEYS)}"
        )
    return MemoryMonitor(**dict(section))
