"""``sage llm gpu``: which process of the stack uses which GPU, with each GPU's utilisation
and memory, read through NVML (:class:`~sage.common.observability.gpu.GpuMonitor`).

A GPU's processes are named by the state file of ``sage llm serve``: ``llm``,
``embedding``, ``gateway``, or ``llm (child pid N)`` for a worker a stack process started
(vLLM's tensor-parallel workers); any other is ``other pid N``. Where no GPU can be seen (no
``nvidia-ml-py``, no driver, no device) it says so in one line and exits 0: the CPU engines
need none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table

from sage.cli.llm.app import console, llm_app
from sage.cli.llm.state import alive, load_state
from sage.common.observability.gpu import GpuMonitor, GpuProcess, GpuReading

__all__ = ["gpu", "gpu_table", "no_gpu_line", "process_owner", "stack_processes"]


def stack_processes(state: Mapping[str, Any] | None) -> dict[int, str]:
    """``{pid: name}`` of the stack's processes that still run (none without a state)."""
    if not state:
        return {}
    return {int(pid): name for name, pid in state["pids"].items() if alive(state, name)}


def process_owner(pid: int, stack: Mapping[int, str]) -> str:
    """What ``pid`` is: a stack process's name, ``name (child pid N)`` for a process one of
    them started, else ``other pid N``."""
    import psutil

    if pid in stack:
        return f"{stack[pid]} (pid {pid})"
    try:
        parents = psutil.Process(pid).parents()
    except psutil.Error:  # gone, or another pid namespace's (NVML in a container)
        parents = []
    for parent in parents:
        if parent.pid in stack:
            return f"{stack[parent.pid]} (child pid {pid})"
    return f"other pid {pid}"


def _mib(value: float | None) -> str:
    return "?" if value is None else f"{value:,.0f} MiB"


def _process_line(process: GpuProcess, stack: Mapping[int, str]) -> str:
    return f"{process_owner(process.pid, stack)}: {_mib(process.memory_used_mb)}"


def gpu_table(reading: GpuReading, stack: Mapping[int, str]) -> Table:
    """The table of ``reading``'s GPUs, their processes named by ``stack`` (``{pid:
    name}``, see :func:`stack_processes`); its caption names the stack's processes on no
    GPU."""
    table = Table(title="GPUs")
    for column in ("GPU", "name", "util", "memory used / total", "processes"):
        table.add_column(column)
    on_gpu: set[int] = set()
    for device in reading.devices:
        lines = [_process_line(p, stack) for p in device.processes]
        on_gpu.update(p.pid for p in device.processes)
        util = device.utilization_percent
        table.add_row(
            str(device.index),
            device.name,
            "?" if util is None else f"{util:.0f}%",
            f"{_mib(device.memory_used_mb)} / {_mib(device.memory_total_mb)}",
            "\n".join(lines) or "none",
        )
    off = [f"{name} (pid {pid})" for pid, name in stack.items() if pid not in on_gpu]
    if off:
        table.caption = "on no GPU: " + ", ".join(off)
    return table


def no_gpu_line(reading: GpuReading) -> str | None:
    """The line to print instead of a table when ``reading`` shows no GPU (else ``None``)."""
    if reading.available and reading.devices:
        return None
    why = reading.reason if not reading.available else "NVML sees no device"
    return f"no NVIDIA GPU visible ({why}); the CPU engines do not use one"


@llm_app.command()
def gpu() -> None:
    """Show each GPU's utilisation and memory and which engine process uses it (NVML)."""
    with GpuMonitor() as monitor:
        reading = monitor.read()
    line = no_gpu_line(reading)
    if line is not None:
        console.print(line, highlight=False, markup=False, soft_wrap=True)
        return
    console.print(gpu_table(reading, stack_processes(load_state())))
