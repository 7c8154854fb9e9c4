"""CPU, memory and per-process figures of this machine, for status routes and dashboards."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import psutil

__all__ = ["HostMonitor"]

_MB = 1024 * 1024  # MiB, as every "_mb" figure of SAGE
_NO_PROCESSES: Mapping[int, str] = MappingProxyType({})


def _busy_and_total(times: Any) -> tuple[float, float]:
    """Busy and total CPU seconds of a ``psutil.cpu_times()`` row (as psutil counts them)."""
    total = sum(times)
    # Linux counts guest time inside user/nice too: do not count it twice.
    total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


def _percent(before: Any, after: Any) -> float:
    """Busy share (0..100) of the CPU time between two ``cpu_times`` rows."""
    busy_before, total_before = _busy_and_total(before)
    busy_after, total_after = _busy_and_total(after)
    elapsed = total_after - total_before
    if elapsed <= 0:
        return 0.0
    return round(min(100.0, max(0.0, (busy_after - busy_before) / elapsed * 100)), 1)


class HostMonitor:
    """CPU, memory and per-process RSS of this machine (psutil).

    It keeps the CPU times of its last read and the ``psutil.Process`` objects of the
    processes it was asked about, so every CPU percentage is over the interval between two
    reads of *this* monitor (the first read: since it was made), undisturbed by other code
    calling ``psutil.cpu_percent``. Thread-safe (reads take turns).
    """

    def __init__(self) -> None:
        self._hostname = socket.gethostname()
        self._cpu_count = psutil.cpu_count() or os.cpu_count() or 1
        self._times = psutil.cpu_times()
        self._per_cpu = psutil.cpu_times(percpu=True)
        self._processes: dict[int, psutil.Process] = {}
        self._lock = threading.Lock()

    def read(self, processes: Mapping[int, str] = _NO_PROCESSES) -> dict[str, Any]:
        """The machine now, and one row per process asked for.

        Args:
            processes: pid -> role (``"gateway"``, ``"engine:llm"``...) of the processes
                to report on. A process seen for the first time reports 0 % CPU (its
                interval starts now).

        Returns:
            JSON-ready: ``hostname``, ``cpu_count``, ``cpu_percent`` (all CPUs, 0..100),
            ``per_cpu`` (one percentage per CPU), ``load_avg`` (1, 5, 15 min), ``memory``
            (``total_mb``, ``used_mb``, ``available_mb``, ``percent``) and ``processes``
            (``pid``, ``role``, ``name``, ``rss_mb``, ``cpu_percent`` — of one CPU, so a
            busy multi-threaded process may pass 100 — and ``alive``; a process that is
            gone, or a zombie, is ``alive=False`` with ``rss_mb`` 0).
        """
        with self._lock:
            times = psutil.cpu_times()
            per_cpu = psutil.cpu_times(percpu=True)
            cpu_percent = _percent(self._times, times)
            per_cpu_percent = [_percent(a, b) for a, b in zip(self._per_cpu, per_cpu, strict=False)]
            self._times, self._per_cpu = times, per_cpu
            rows = [self._process(pid, role) for pid, role in processes.items()]
            for pid in set(self._processes) - set(processes):  # no longer asked about
                del self._processes[pid]
        memory = psutil.virtual_memory()
        return {
            "hostname": self._hostname,
            "cpu_count": self._cpu_count,
            "cpu_percent": cpu_percent,
            "per_cpu": per_cpu_percent,
            "load_avg": [round(load, 2) for load in psutil.getloadavg()],
            "memory": {
                "total_mb": memory.total / _MB,
                "used_mb": memory.used / _MB,
                "available_mb": memory.available / _MB,
                "percent": float(memory.percent),
            },
            "processes": rows,
        }

    def _process(self, pid: int, role: str) -> dict[str, Any]:
        row: dict[str, Any] = {
            "pid": pid,
            "role": role,
            "name": "",
            "rss_mb": 0.0,
            "cpu_percent": 0.0,
            "alive": False,
        }
        process = self._processes.get(pid)
        try:
            if process is None or not process.is_running():  # new, or its pid was reused
                process = self._processes[pid] = psutil.Process(pid)
                process.cpu_percent(None)  # starts its interval
                cpu = 0.0
            else:
                cpu = process.cpu_percent(None)
            with process.oneshot():
                if process.status() == psutil.STATUS_ZOMBIE:
                    row["name"] = process.name()
                    return row
                row["name"] = process.name()
                row["rss_mb"] = process.memory_info().rss / _MB
            row["cpu_percent"] = round(cpu, 1)
            row["alive"] = True
        except psutil.NoSuchProcess:  # gone (ZombieProcess is one too)
            self._processes.pop(pid, None)
        except psutil.AccessDenied:  # another user's process: it runs, figures unknown
            row["alive"] = True
        return row
