"""Observability primitives: the Prometheus writer, host, GPU and memory monitors.

No GPU is needed: NVML is replaced by a fake ``pynvml`` module put in ``sys.modules``, and
the real "no GPU" path is checked where no NVIDIA driver (or no ``pynvml``) is present.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import threading
import types
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sage.common.errors import ConfigError
from sage.common.observability import (
    CONTENT_TYPE,
    GpuMonitor,
    HostMonitor,
    MemoryMonitor,
    MetricFamily,
    clear_gpu_cache,
    render,
)
from sage.common.observability.prometheus import Collector, exposition
from sage.common.stats import LATENCY_BUCKETS, Histogram, LatencyRing

# -- prometheus ----------------------------------------------------------------------------------


def parse(body: bytes) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def test_render_is_read_back_by_prometheus_client_with_escaped_labels() -> None:
    requests = MetricFamily("sage_requests_total", "counter", "Requests served.\nPer model.")
    tricky = 'a "quoted" \\ back\nslash'
    requests.add(3, model=tricky, kind="llm")
    requests.add(True, model="plain", kind="llm")
    latency = MetricFamily("sage_latency_ms", "gauge", "Latency (ms).")
    latency.add(12.5)
    latency.add(math.nan, **{"class": "nan"})
    latency.add(math.inf, **{"class": "inf"})
    latency.add(-math.inf, **{"class": "neg"})
    latency.add(2.5e-7, **{"class": "tiny"})
    empty = MetricFamily("sage_unused", "gauge", "Nothing yet.")
    body = render([requests, latency, empty])
    assert body.endswith(b"\n") and CONTENT_TYPE.startswith("text/plain; version=0.0.4")
    assert b"# HELP sage_unused Nothing yet.\n# TYPE sage_unused gauge\n" in body
    families = parse(body)
    # prometheus_client names a counter family without its _total suffix
    samples = {s.labels["model"]: s for s in families["sage_requests"].samples}
    assert samples[tricky].value == 3 and samples[tricky].labels["kind"] == "llm"
    assert samples["plain"].value == 1
    assert families["sage_requests"].documentation == "Requests served.\nPer model."
    by_class = {s.labels.get("class"): s.value for s in families["sage_latency_ms"].samples}
    assert by_class[None] == 12.5 and math.isnan(by_class["nan"])
    assert by_class["inf"] == math.inf and by_class["neg"] == -math.inf
    assert by_class["tiny"] == 2.5e-7
    assert families["sage_unused"].samples == []
    assert render([]) == b""


def test_histograms_render_cumulative_buckets_in_seconds_that_prometheus_reads_back() -> None:
    histogram = Histogram((0.001, 0.01, 0.1))
    for seconds in (0.0005, 0.001, 0.002, 0.05, 3.0):  # 0.001 is "le" its own bound
        histogram.observe(seconds)
    family = MetricFamily("sage_request_duration_seconds", "histogram", "Latency (s).")
    family.add_histogram(histogram, model="m", **{"class": "gold"})
    family.add_histogram(Histogram((0.001, 0.01, 0.1)), model="idle", **{"class": "gold"})
    (parsed,) = text_string_to_metric_families(render([family]).decode())
    assert parsed.type == "histogram" and len(family) == 2
    samples = [s for s in parsed.samples if s.labels["model"] == "m"]
    buckets = {s.labels["le"]: s.value for s in samples if s.name.endswith("_bucket")}
    assert buckets == {"0.001": 2, "0.01": 3, "0.1": 4, "+Inf": 5}
    by_name = {s.name: s.value for s in samples}
    assert by_name["sage_request_duration_seconds_count"] == 5
    assert by_name["sage_request_duration_seconds_sum"] == pytest.approx(3.0535)
    with pytest.raises(ConfigError, match="add_histogram"):
        family.add(1.0)
    with pytest.raises(ConfigError, match="reserved"):
        family.add_histogram(histogram, le="1")
    with pytest.raises(ConfigError, match="add\\(\\)"):
        MetricFamily("sage_g", "gauge", "g").add_histogram(histogram)


def test_histogram_counts_merge_and_latency_rings_feed_them() -> None:
    ring = LatencyRing(4, buckets=LATENCY_BUCKETS)
    ring.add(2e-6)
    ring.extend([0.2] * 10)  # more than the ring keeps: the histogram keeps counting
    assert ring.histogram is not None and ring.histogram.count == 11 == ring.count
    assert len(ring.values()) == 4
    other = Histogram.of(LATENCY_BUCKETS, [1] * (len(LATENCY_BUCKETS) + 1), 1.5)
    ring.histogram.merge(other)
    assert ring.histogram.count == 11 + len(LATENCY_BUCKETS) + 1
    assert LatencyRing(4).histogram is None  # opt-in
    with pytest.raises(ValueError, match="increase"):
        Histogram((0.1, 0.01))
    with pytest.raises(ValueError, match="counts"):
        Histogram.of((0.1,), [1], 0.0)
    with pytest.raises(ValueError, match="different bounds"):
        Histogram((1.0,)).merge(Histogram((2.0,)))


def test_a_collector_is_a_prometheus_client_collector_built_at_each_scrape() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    served = [0]

    def build() -> list[MetricFamily]:
        family = MetricFamily("sage_served_total", "counter", "Served.")
        family.add(served[0])
        return [family]

    collector = Collector(build)
    registry = CollectorRegistry()
    registry.register(collector)  # type: ignore[arg-type]
    served[0] = 4
    assert b"sage_served_total 4.0" in generate_latest(registry)
    served[0] = 5
    assert b"sage_served_total 5.0" in exposition(collector)


@pytest.mark.parametrize(
    ("name", "kind", "fix"),
    [
        ("9lives", "gauge", "not starting with a digit"),
        ("has-dash", "gauge", "letters, digits"),
        ("", "gauge", "letters, digits"),
        ("sage_requests", "counter", "'sage_requests_total'"),
        ("sage_x", "summary", "'counter', 'gauge' or 'histogram'"),
        ("sage_x_bucket", "histogram", "must not end in"),
    ],
)
def test_invalid_metric_names_and_kinds_are_refused_with_the_fix(
    name: str, kind: Any, fix: str
) -> None:
    with pytest.raises(ValueError, match=fix) as caught:
        MetricFamily(name, kind, "help")
    assert isinstance(caught.value, ConfigError)


def test_invalid_label_names_and_values_are_refused() -> None:
    family = MetricFamily("sage_x", "gauge", "x")
    for bad in ("1st", "__reserved", "with-dash"):
        with pytest.raises(ConfigError, match="label name"):
            family.add(1, **{bad: "v"})
    with pytest.raises(TypeError, match="float"):
        family.add("12", model="m")  # type: ignore[arg-type]
    assert len(family) == 0


# -- host ----------------------------------------------------------------------------------------


def test_host_monitor_reads_the_machine_this_process_and_a_dead_one() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: the pid is gone
    monitor = HostMonitor()
    first = monitor.read({os.getpid(): "test", dead.pid: "gone"})
    assert first["cpu_count"] >= 1 and first["hostname"]
    assert len(first["per_cpu"]) >= 1 and len(first["load_avg"]) == 3
    assert 0 <= first["cpu_percent"] <= 100
    memory = first["memory"]
    assert 0 <= memory["percent"] <= 100 and memory["total_mb"] > memory["available_mb"] > 0
    me, gone = first["processes"]
    assert me["pid"] == os.getpid() and me["role"] == "test" and me["alive"] is True
    assert me["rss_mb"] > 0 and me["name"]
    assert gone == {
        "pid": dead.pid,
        "role": "gone",
        "name": "",
        "rss_mb": 0.0,
        "cpu_percent": 0.0,
        "alive": False,
    }
    second = monitor.read({os.getpid(): "test"})  # cpu over the interval since the first
    assert [row["pid"] for row in second["processes"]] == [os.getpid()]
    assert second["processes"][0]["cpu_percent"] >= 0
    assert monitor.read()["processes"] == []


# -- gpu -----------------------------------------------------------------------------------------


class FakeNVMLError(Exception):
    """Stands for ``pynvml.NVMLError``."""


class FakeNVMLErrorNotSupported(FakeNVMLError):
    """Stands for ``pynvml.NVMLError_NotSupported``."""


def fake_pynvml(*, fail_init: bool = False) -> types.ModuleType:
    """A FAKE ``pynvml`` module (not the real NVML): two GPUs, the second without power
    readings (NotSupported), device names as bytes like old nvidia-ml-py versions."""
    fake = types.ModuleType("pynvml")
    calls: dict[str, int] = {"init": 0, "shutdown": 0, "count": 0}
    devices: list[dict[str, Any]] = [
        {"name": "Fake H100", "gpu": 37, "used": 10 * 2**30, "total": 80 * 2**30, "temp": 54},
        {"name": b"Fake T4", "gpu": 0, "used": 2**29, "total": 16 * 2**30, "temp": 41},
    ]

    def init() -> None:
        calls["init"] += 1
        if fail_init:
            raise FakeNVMLError("Driver Not Loaded")

    def shutdown() -> None:
        calls["shutdown"] += 1

    def count() -> int:
        calls["count"] += 1
        return len(devices)

    def power(handle: int) -> int:
        if handle == 1:
            raise FakeNVMLErrorNotSupported("Not Supported")
        return 312_500  # milliwatts

    def limit(handle: int) -> int:
        if handle == 1:
            raise FakeNVMLErrorNotSupported("Not Supported")
        return 700_000

    def temperature(handle: int, sensor: int) -> int:
        assert sensor == fake.NVML_TEMPERATURE_GPU
        return int(devices[handle]["temp"])

    fake.__dict__.update(
        calls=calls,
        NVMLError=FakeNVMLError,
        NVMLError_NotSupported=FakeNVMLErrorNotSupported,
        NVML_TEMPERATURE_GPU=0,
        nvmlInit=init,
        nvmlShutdown=shutdown,
        nvmlDeviceGetCount=count,
        nvmlDeviceGetHandleByIndex=lambda index: index,
        nvmlDeviceGetName=lambda handle: devices[handle]["name"],
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=devices[h]["gpu"]),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(
            used=devices[h]["used"], total=devices[h]["total"]
        ),
        nvmlDeviceGetTemperature=temperature,
        nvmlDeviceGetPowerUsage=power,
        nvmlDeviceGetEnforcedPowerLimit=limit,
    )
    return fake


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_gpu_monitor_without_nvml_or_driver_says_no_gpu_and_why() -> None:
    with GpuMonitor() as monitor:
        reading = monitor.read()
    if reading.available:
        pytest.skip("this machine has an NVIDIA GPU and driver")
    assert reading.devices == () and reading.reason
    assert reading.to_dict()["available"] is False


def test_gpu_monitor_without_pynvml_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    reading = GpuMonitor().read()
    assert not reading.available and "nvidia-ml-py" in reading.reason


def test_gpu_monitor_parses_nvml_figures_of_a_fake_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    clock = FakeClock()
    monitor = GpuMonitor(interval_s=2.0, clock=clock)
    reading = monitor.read()
    assert reading.available and reading.reason == ""
    h100, t4 = reading.devices
    assert (h100.index, h100.name, h100.utilization_percent) == (0, "Fake H100", 37.0)
    assert (h100.memory_used_mb, h100.memory_total_mb) == (10240.0, 81920.0)
    assert (h100.temperature_c, h100.power_w, h100.power_limit_w) == (54.0, 312.5, 700.0)
    assert (t4.index, t4.name, t4.memory_used_mb, t4.temperature_c) == (1, "Fake T4", 512.0, 41)
    assert t4.power_w is None and t4.power_limit_w is None  # NotSupported
    as_dict = reading.to_dict()
    assert as_dict["devices"][1]["power_w"] is None and len(as_dict["devices"]) == 2

    clock.now += 1.9  # within the interval: the cached reading, no NVML call
    assert monitor.read() is reading and fake.calls["count"] == 1
    clock.now += 0.1
    fresh = monitor.read()
    assert fresh is not reading and fake.calls["count"] == 2
    assert fake.calls["init"] == 1  # initialised once
    monitor.close()
    assert fake.calls["shutdown"] == 1


def test_gpu_monitor_reports_a_failed_nvml_init(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_pynvml(fail_init=True)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    clock = FakeClock()
    monitor = GpuMonitor(clock=clock)
    reading = monitor.read()
    assert not reading.available and "Driver Not Loaded" in reading.reason
    clock.now += 5
    assert monitor.read().reason == reading.reason and fake.calls["init"] == 1
    monitor.close()
    assert fake.calls["shutdown"] == 0


@pytest.mark.parametrize("interval", [0.5, 0, -1, math.inf, math.nan])
def test_gpu_monitor_refuses_a_short_interval(interval: float) -> None:
    with pytest.raises(ConfigError, match="interval_s"):
        GpuMonitor(interval_s=interval)


def test_clear_gpu_cache_is_a_no_op_without_cuda_or_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert clear_gpu_cache() is False  # torch imported, CPU only
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails
    assert clear_gpu_cache() is False


# -- memory --------------------------------------------------------------------------------------


class FakeRss:
    def __init__(self, value: float) -> None:
        self.value = value
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.value


def test_memory_monitor_warns_once_per_upward_crossing(caplog: pytest.LogCaptureFixture) -> None:
    rss = FakeRss(50.0)
    exceeded: list[float] = []
    monitor = MemoryMonitor(100.0, on_exceed=exceeded.append, pid=4242, reader=rss)
    caplog.set_level(logging.WARNING, logger="sage.memory")

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "sage.memory"]

    assert monitor.sample() == 50.0 and exceeded == [] and warnings() == []
    rss.value = 150.0
    monitor.sample()
    assert exceeded == [150.0] and monitor.crossings == 1
    (message,) = warnings()
    assert "150.0" in message and "100.0" in message and "4242" in message
    rss.value = 180.0
    monitor.sample()  # still above: no repeat
    assert exceeded == [150.0] and len(warnings()) == 1
    rss.value = 100.0
    monitor.sample()  # back to the threshold: re-armed
    rss.value = 120.0
    monitor.sample()
    assert exceeded == [150.0, 120.0] and len(warnings()) == 2
    assert monitor.to_dict() == {
        "rss_mb": 120.0,
        "peak_mb": 180.0,
        "threshold_mb": 100.0,
        "crossings": 2,
        "pid": 4242,
    }


def test_memory_monitor_check_samples_every_nth_call() -> None:
    rss = FakeRss(10.0)
    monitor = MemoryMonitor(every=3, reader=rss)
    assert monitor.check() == 10.0 and rss.reads == 1  # the first call samples
    rss.value = 20.0
    assert [monitor.check(), monitor.check()] == [10.0, 10.0] and rss.reads == 1
    assert monitor.check() == 20.0 and rss.reads == 2


def test_memory_monitor_reads_this_process_by_default() -> None:
    monitor = MemoryMonitor()
    assert monitor.sample() > 0 and monitor.pid == os.getpid()
    assert monitor.to_dict()["threshold_mb"] is None


class SignallingRss(FakeRss):
    """A fake RSS reader that sets ``sampled`` once it has been read twice."""

    def __init__(self, value: float) -> None:
        super().__init__(value)
        self.sampled = threading.Event()

    def __call__(self) -> float:
        value = super().__call__()
        if self.reads >= 2:
            self.sampled.set()
        return value


def test_memory_monitor_background_thread_samples_and_stops_promptly() -> None:
    rss = SignallingRss(500.0)
    exceeded = threading.Event()
    monitor = MemoryMonitor(100.0, interval_s=0.01, reader=rss, on_exceed=lambda _: exceeded.set())
    with monitor:
        assert monitor.start() is monitor  # already running: no second thread
        assert rss.sampled.wait(10) and exceeded.wait(10)
    assert not any(t.name.startswith("sage-memory-monitor") for t in threading.enumerate())
    assert monitor.crossings == 1 and rss.reads >= 2

    slow = MemoryMonitor(interval_s=3600, reader=FakeRss(1.0)).start()
    stopper = threading.Thread(target=slow.stop)
    stopper.start()
    stopper.join(10)  # the thread waits on an event, not a sleep: stop does not wait an hour
    assert not stopper.is_alive()


@pytest.mark.parametrize(
    ("options", "argument"),
    [
        ({"threshold_mb": 0}, "threshold_mb"),
        ({"threshold_mb": -5.0}, "threshold_mb"),
        ({"threshold_mb": math.inf}, "threshold_mb"),
        ({"threshold_mb": "1GB"}, "threshold_mb"),
        ({"interval_s": 0}, "interval_s"),
        ({"interval_s": math.nan}, "interval_s"),
        ({"every": 0}, "every"),
        ({"every": 1.5}, "every"),
    ],
)
def test_memory_monitor_refuses_bad_arguments(options: dict[str, Any], argument: str) -> None:
    with pytest.raises(ConfigError, match=argument):
        MemoryMonitor(**options)
