"""``MemoryMonitor``: a process's resident memory against a threshold, with one warning per
crossing — the hook the performance guide's ``MemoryMonitorOperator`` writes by hand."""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable
from typing import Any

import psutil

from sage.common.errors import ConfigError

__all__ = ["MemoryMonitor"]

logger = logging.getLogger("sage.memory")

_MB = 1024 * 1024


def _positive(name: str, value: object, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name}={value!r} is invalid: give a number ({hint})")
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name}={value!r} is invalid: give a finite number > 0 ({hint})")
    return float(value)


class MemoryMonitor:
    """Watches a process's RSS (default: this process) against ``threshold_mb``.

    Two ways to drive it:

    * :meth:`check` from an operator's hot path: cheap, it samples only on every
      ``every``-th call and otherwise returns the last sample;
    * :meth:`start`/:meth:`stop` (or ``with``): a background thread samples every
      ``interval_s`` (it waits on an event, so ``stop`` returns promptly).

    When a sample crosses the threshold upward (RSS > threshold after being at or below
    it), the logger ``sage.memory`` warns once, naming RSS, threshold and pid, and
    ``on_exceed(rss_mb)`` is called once: once per crossing, not once per sample above.
    Falling back to or below the threshold re-arms it. Without a threshold it only tracks
    ``rss_mb`` and ``peak_mb``. Thread-safe.

    Args:
        threshold_mb: RSS in MiB above which to warn (``None``: never warn).
        interval_s: Seconds between the background thread's samples.
        every: :meth:`check` samples on every ``every``-th call.
        on_exceed: Called with the RSS (MiB) on each upward crossing, on the sampling
            thread. An exception from it propagates from :meth:`sample`/:meth:`check`, and
            ends the background thread (logged).
        pid: The process to watch (default: this one).
        reader: Returns the RSS in MiB (default: psutil's RSS of ``pid``; tests pass a fake).

    Raises:
        ConfigError: ``threshold_mb`` or ``interval_s`` not a finite number > 0, ``every``
            not an integer >= 1.
        psutil.NoSuchProcess: no process has ``pid``.

    Attributes:
        rss_mb: The last sample (MiB; 0.0 before the first).
        peak_mb: The largest sample so far.
        crossings: Upward crossings of the threshold so far.
    """

    def __init__(
        self,
        threshold_mb: float | None = None,
        *,
        interval_s: float = 1.0,
        every: int = 1,
        on_exceed: Callable[[float], None] | None = None,
        pid: int | None = None,
        reader: Callable[[], float] | None = None,
    ) -> None:
        self.threshold_mb = (
            None
            if threshold_mb is None
            else _positive("threshold_mb", threshold_mb, "the RSS in MiB to warn above, or None")
        )
        self.interval_s = _positive("interval_s", interval_s, "seconds between samples")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(
                f"every={every!r} is invalid: give an integer >= 1 (check() samples on every "
                "every-th call; 1 samples on each)"
            )
        self.every = every
        self.on_exceed = on_exceed
        self.pid = os.getpid() if pid is None else pid
        if reader is None:
            process = psutil.Process(self.pid)

            def reader() -> float:
                return float(process.memory_info().rss) / _MB

        self._reader = reader
        self.rss_mb = 0.0
        self.peak_mb = 0.0
        self.crossings = 0
        self._armed = True
        self._calls = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- sampling -------------------------------------------------------------------------------

    def sample(self) -> float:
        """Sample now; the RSS in MiB (warns and calls ``on_exceed`` on an upward crossing)."""
        rss = float(self._reader())
        threshold = self.threshold_mb
        with self._lock:
            self.rss_mb = rss
            self.peak_mb = max(self.peak_mb, rss)
            crossed = False
            if threshold is not None:
                if rss > threshold and self._armed:
                    self._armed = False
                    self.crossings += 1
                    crossed = True
                elif rss <= threshold:
                    self._armed = True
        if crossed:
            logger.warning(
                "process %d uses %.1f MB of memory (RSS), above its threshold of %.1f MB",
                self.pid,
                rss,
                threshold,
            )
            if self.on_exceed is not None:
                self.on_exceed(rss)
        return rss

    def check(self) -> float:
        """Count a call; sample on every ``every``-th one, else return the last sample.

        The first call samples, so the figure is real from the start.
        """
        with self._lock:
            self._calls += 1
            due = (self._calls - 1) % self.every == 0  # calls 1, 1 + every, 1 + 2 * every...
        return self.sample() if due else self.rss_mb

    # -- background sampler ---------------------------------------------------------------------

    def start(self) -> MemoryMonitor:
        """Start the background sampler (no-op when it runs); returns ``self``."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return self
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name=f"sage-memory-monitor-{self.pid}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the background sampler and wait for it (returns at once if none runs)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._thread = None

    def __enter__(self) -> MemoryMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:
                logger.exception(
                    "memory monitor of process %d stopped: sampling failed (is the process "
                    "gone, or did on_exceed raise?)",
                    self.pid,
                )
                return
            self._stop.wait(self.interval_s)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures: ``rss_mb``, ``peak_mb``, ``threshold_mb``, ``crossings``, ``pid``."""
        with self._lock:
            return {
                "rss_mb": self.rss_mb,
                "peak_mb": self.peak_mb,
                "threshold_mb": self.threshold_mb,
                "crossings": self.crossings,
                "pid": self.pid,
            }
