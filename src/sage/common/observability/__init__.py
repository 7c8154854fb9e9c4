"""Observability primitives shared by SAGE's servers, operators and dashboards.

* :mod:`.prometheus` — :class:`MetricFamily`, :class:`~.prometheus.Collector` and
  :func:`render` on ``prometheus_client``: what every ``GET /metrics`` route serves.
* :mod:`.host` — :class:`HostMonitor`: CPU, memory and per-process RSS of this machine.
* :mod:`.gpu` — :class:`GpuMonitor` (NVML, optional) and :func:`clear_gpu_cache`.
* :mod:`.memory` — :class:`MemoryMonitor`: a process's RSS against a threshold.

Optional dependencies (``pynvml``, ``torch``) are imported only when used.
"""

from __future__ import annotations

from sage.common.observability.gpu import GpuDevice, GpuMonitor, GpuReading, clear_gpu_cache
from sage.common.observability.host import HostMonitor
from sage.common.observability.memory import MemoryMonitor
from sage.common.observability.prometheus import CONTENT_TYPE, MetricFamily, render

__all__ = [
    "CONTENT_TYPE",
    "GpuDevice",
    "GpuMonitor",
    "GpuReading",
    "HostMonitor",
    "MemoryMonitor",
    "MetricFamily",
    "clear_gpu_cache",
    "render",
]
