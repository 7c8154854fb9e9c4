"""GPU figures through NVML, and freeing PyTorch's cached CUDA memory.

Both are optional: NVML comes from ``nvidia-ml-py`` (module ``pynvml``) and is imported
only when a :class:`GpuMonitor` first reads; without it, or without an NVIDIA driver, the
reading says ``available=False`` and why, so dashboards show "no GPU" instead of failing.
:func:`clear_gpu_cache` does nothing (and returns ``False``) where PyTorch or CUDA is absent.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sage.common.errors import ConfigError

__all__ = ["GpuDevice", "GpuMonitor", "GpuProcess", "GpuReading", "clear_gpu_cache"]

logger = logging.getLogger(__name__)

_MB = 1024 * 1024  # "MB" here are MiB, as psutil figures are reported elsewhere in SAGE
_NO_NVML = "pynvml is not installed: pip install nvidia-ml-py to see GPU figures"


@dataclass(frozen=True)
class GpuProcess:
    """A process with a compute context on a GPU (``sage llm gpu`` names the stack's).

    Attributes:
        pid: Its process id (as NVML sees it: the host's, in a container).
        memory_used_mb: Device memory it uses, MiB (``None``: not reported).
    """

    pid: int
    memory_used_mb: float | None


@dataclass(frozen=True)
class GpuDevice:
    """One GPU at the time of a reading.

    Attributes:
        index: NVML device index.
        name: Product name (``"NVIDIA H100 80GB HBM3"``).
        utilization_percent: Share of the last sample period a kernel ran (0..100);
            ``None`` where the device does not report it.
        memory_used_mb: Device memory in use, MiB.
        memory_total_mb: Device memory, MiB.
        temperature_c: Core temperature, °C (``None``: not reported).
        power_w: Power draw, watts (``None``: not reported).
        power_limit_w: Enforced power limit, watts (``None``: not reported).
        processes: The processes computing on it (empty where NVML does not say).
    """

    index: int
    name: str
    utilization_percent: float | None
    memory_used_mb: float
    memory_total_mb: float
    temperature_c: float | None
    power_w: float | None
    power_limit_w: float | None
    processes: tuple[GpuProcess, ...] = ()


@dataclass(frozen=True)
class GpuReading:
    """The GPUs of this machine at ``sampled_at``, or why there are none to show.

    Attributes:
        available: Whether NVML answered (``False``: no library, no driver, or it failed).
        reason: Why not available (empty when available).
        devices: One entry per GPU (empty when not available; may be empty when available
            on a machine whose driver sees no device).
        sampled_at: ``time.time()`` of the sample.
    """

    available: bool
    reason: str
    devices: tuple[GpuDevice, ...]
    sampled_at: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``devices`` as a list of dicts)."""
        return {
            "available": self.available,
            "reason": self.reason,
            "devices": [asdict(device) for device in self.devices],
            "sampled_at": self.sampled_at,
        }


class GpuMonitor:
    """NVML sampler for every GPU of this machine.

    :meth:`read` samples at most once per ``interval_s`` and returns the cached
    :class:`GpuReading` in between, so many callers (a status route polled by several
    dashboards) cost one NVML round per interval. NVML is initialised once, lazily, on the
    first read, and shut down by :meth:`close` (a later read initialises it again). A failed
    initialisation (no ``pynvml``, no driver) is remembered until :meth:`close`. Thread-safe.

    Args:
        interval_s: Shortest time between two samples (seconds, >= 1.0).
        clock: Monotonic seconds deciding when the cache expires (tests pass a fake).

    Raises:
        ConfigError: ``interval_s`` below 1.0 or not finite.
    """

    def __init__(
        self, interval_s: float = 1.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not isinstance(interval_s, int | float) or not 1.0 <= interval_s < float("inf"):
            raise ConfigError(
                f"interval_s={interval_s!r} is invalid: GpuMonitor samples at most once a "
                "second; give interval_s >= 1.0"
            )
        self.interval_s = float(interval_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._nvml: Any = None  # the pynvml module once initialised
        self._failure: str | None = None  # why NVML could not be initialised
        self._cached: GpuReading | None = None
        self._cached_at = 0.0

    def read(self) -> GpuReading:
        """The GPUs now, or the reading of less than ``interval_s`` ago. Never raises for
        a missing or failing NVML: the reading says ``available=False`` and why."""
        with self._lock:
            now = self._clock()
            if self._cached is not None and now - self._cached_at < self.interval_s:
                return self._cached
            reading = self._sample()
            self._cached, self._cached_at = reading, now
            return reading

    def close(self) -> None:
        """Shut NVML down (if this monitor initialised it) and drop the cached reading."""
        with self._lock:
            nvml, self._nvml = self._nvml, None
            self._failure = None
            self._cached = None
            if nvml is not None:
                try:
                    nvml.nvmlShutdown()
                except Exception as exc:  # shutting down must not fail the caller
                    logger.debug("nvmlShutdown failed: %r", exc)

    def __enter__(self) -> GpuMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sampling (under the lock) -------------------------------------------------------------

    def _init(self) -> Any:
        """The initialised ``pynvml`` module, or ``None`` with ``self._failure`` set."""
        if self._nvml is not None or self._failure is not None:
            return self._nvml
        try:
            nvml = importlib.import_module("pynvml")  # optional: nvidia-ml-py
        except ImportError:
            self._failure = _NO_NVML
            return None
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, OSError...
            self._failure = f"NVML could not start (no NVIDIA GPU or driver?): {exc}"
            logger.info("no GPU figures: %s", self._failure)
            return None
        self._nvml = nvml
        return nvml

    def _sample(self) -> GpuReading:
        sampled_at = time.time()
        nvml = self._init()
        if nvml is None:
            return GpuReading(False, self._failure or _NO_NVML, (), sampled_at)
        try:
            count = int(nvml.nvmlDeviceGetCount())
            devices = tuple(_device(nvml, index) for index in range(count))
        except Exception as exc:  # a device lost mid-read, a driver error...
            logger.warning("reading the GPUs through NVML failed: %r", exc)
            return GpuReading(False, f"NVML read failed: {exc}", (), sampled_at)
        return GpuReading(True, "", devices, sampled_at)


def _device(nvml: Any, index: int) -> GpuDevice:
    """One device's figures; the optional ones are ``None`` where NVML reports none."""
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = nvml.nvmlDeviceGetName(handle)
    if isinstance(name, bytes):  # nvidia-ml-py before 11.5 returns bytes
        name = name.decode("utf-8", "replace")
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    utilization = _optional(nvml, lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
    temperature = _optional(nvml, lambda: nvml.nvmlDeviceGetTemperature(handle, sensor))
    power_mw = _optional(nvml, lambda: nvml.nvmlDeviceGetPowerUsage(handle))
    limit_mw = _optional(nvml, lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle))
    return GpuDevice(
        index=index,
        name=str(name),
        utilization_percent=utilization,
        memory_used_mb=float(memory.used) / _MB,
        memory_total_mb=float(memory.total) / _MB,
        temperature_c=temperature,
        power_w=None if power_mw is None else power_mw / 1000,
        power_limit_w=None if limit_mw is None else limit_mw / 1000,
        processes=_processes(nvml, handle),
    )


def _processes(nvml: Any, handle: Any) -> tuple[GpuProcess, ...]:
    """The compute processes on ``handle``; none where NVML cannot list them."""
    running = getattr(nvml, "nvmlDeviceGetComputeRunningProcesses", None)
    if running is None:
        return ()
    error: type[BaseException] = getattr(nvml, "NVMLError", Exception)
    try:
        found = running(handle)
    except error as exc:  # NotSupported, NoPermission...: the list is just absent
        logger.debug("NVML process list not available: %r", exc)
        return ()
    processes = []
    for process in found:
        used = getattr(process, "usedGpuMemory", None)  # None: not available
        mb = float(used) / _MB if isinstance(used, int) and used >= 0 else None
        processes.append(GpuProcess(pid=int(process.pid), memory_used_mb=mb))
    return tuple(processes)


def _optional(nvml: Any, read: Callable[[], Any]) -> float | None:
    """``float(read())``, or ``None`` when NVML says the device does not report it."""
    error: type[BaseException] = getattr(nvml, "NVMLError", Exception)
    try:
        return float(read())
    except error as exc:  # NVMLError_NotSupported, and kin: the figure is just absent
        logger.debug("NVML reading not available: %r", exc)
        return None


def clear_gpu_cache() -> bool:
    """Free PyTorch's cached CUDA memory on every visible device.

    ``torch.cuda.empty_cache()`` returns every device's unused cached blocks to the driver,
    then each device this process holds memory on is synchronised, so the memory is free
    when this returns (other processes, and ``nvidia-smi``, see it). Safe anywhere: where
    PyTorch is not installed, or not imported by this process (then it holds no CUDA cache
    and importing it would only cost time), or CUDA is unavailable or unused, it does
    nothing and returns ``False``. Never raises ``ImportError``.

    Returns:
        Whether the cache was cleared.
    """
    if sys.modules.get("torch") is None:  # not imported (or blocked): no CUDA cache here
        return False
    try:
        import torch
    except ImportError:
        return False
    cuda = torch.cuda
    initialized: Callable[[], bool] = cuda.is_initialized  # untyped in some torch versions
    if not cuda.is_available() or not initialized():
        return False
    # Devices this process has memory on: synchronising others would create a context there.
    used = [i for i in range(cuda.device_count()) if cuda.memory_reserved(i) > 0]
    cuda.empty_cache()
    for index in used:
        cuda.synchronize(index)
    logger.debug("freed the CUDA cache of devices %s", used)
    return True
