"""The dashboard server: one page, its live state over server-sent events, and Prometheus.

Routes:

* ``GET /`` and ``GET /static/<file>``: the page (plain HTML, CSS and JavaScript shipped in
  the package; nothing is fetched from elsewhere).
* ``GET /api/state``: the whole state as JSON; ``GET /events``: the same, pushed as a
  server-sent event each time it is refreshed (once per ``interval_s``).
* ``POST /api/jobs``: where jobs publish their snapshots (JSON, with the token from the
  dashboard's state file; anything else gets 401 before its body is read).
* ``GET /metrics``: Prometheus text (names in ``docs/OBSERVABILITY.md``); ``GET /health``.

A sampler thread refreshes the state: host CPU and memory and the RSS of SAGE's processes
(psutil), GPUs (NVML, at most once a second), the JobManagers' jobs and the gateways'
instances. Everything else runs on the server's event loop, which also owns the job board.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import orjson

import sage
from sage.common.concurrency import BackgroundServer
from sage.common.errors import ConfigError
from sage.common.http.server import HttpError, HttpServer, Request, Response, StreamResponse
from sage.common.observability import prometheus
from sage.common.observability.discovery import advertise
from sage.common.observability.gpu import GpuMonitor
from sage.common.observability.host import HostMonitor
from sage.common.observability.prometheus import MetricFamily
from sage.dashboard.board import JobBoard
from sage.dashboard.sources import (
    GatewaySource,
    JobManagerSource,
    discover_gateways,
    discover_jobmanagers,
    known_processes,
)
from sage.kernel.jobmanager.token import token_matches
from sage.kernel.runtime.exposition import job_families
from sage.kernel.runtime.publisher import INGEST_PATH

__all__ = ["DashboardServer"]

logger = logging.getLogger(__name__)

_STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "index.html": "text/html; charset=utf-8",
}
MAX_SNAPSHOT_BYTES = 4 * 1024 * 1024


class DashboardServer(BackgroundServer):
    """Serves the dashboard; see the module docstring.

    Args:
        host: Address to listen on (loopback unless told otherwise: the page shows jobs,
            processes and errors of this machine).
        port: Port (0: any free one).
        gateways: Gateway URLs to show (default: the one ``sage llm serve`` runs, if any).
        jobmanagers: JobManager ``host:port`` addresses (default: ``sage jobmanager start``'s).
        interval_s: Seconds between refreshes (at least 1: NVML and psutil sampling).
        advertise_to: State file telling job processes where to publish (default
            ``$SAGE_HOME/dashboard/server.json``; ``False``: none, jobs cannot publish).

    Raises:
        ConfigError: ``interval_s`` below 1, or a malformed address.
    """

    thread_name = "sage-dashboard-http"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        gateways: Sequence[str] = (),
        jobmanagers: Sequence[str] = (),
        interval_s: float = 1.0,
        advertise_to: Path | bool | None = None,
    ) -> None:
        if not isinstance(interval_s, int | float) or not 1.0 <= interval_s < float("inf"):
            raise ConfigError(
                f"interval_s={interval_s!r} is invalid; the dashboard refreshes at most once a "
                "second (NVML and CPU sampling need that long): use 1.0 or more"
            )
        self.host = host
        self.port = port
        self.interval_s = float(interval_s)
        self._explicit_gateways = list(gateways)
        self._explicit_jobmanagers = list(jobmanagers)
        # fail now on a malformed address, not in the sampler thread
        self._gateways: list[GatewaySource] = discover_gateways(self._explicit_gateways)
        self._jobmanagers: list[JobManagerSource] = discover_jobmanagers(self._explicit_jobmanagers)
        self._advertise_to = advertise_to
        self.token = ""
        self.board = JobBoard()
        self.host_monitor = HostMonitor()
        self.gpu_monitor = GpuMonitor(interval_s=self.interval_s)
        self.collector = prometheus.Collector(self.families)
        """A ``prometheus_client`` collector of :meth:`families` (``GET /metrics``)."""
        self._parts: dict[str, Any] = {"host": {}, "gpus": {}, "gateways": [], "jobmanagers": []}
        self._state = b"{}"
        self._version = 0
        self._changed: asyncio.Event | None = None
        self._closing = False
        self._http: HttpServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sampler: threading.Thread | None = None
        self._stop_sampling = threading.Event()
        self._sampled = threading.Event()
        self._exit = contextlib.ExitStack()
        self._job_pids: dict[int, str] = {}

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    # -- life cycle -----------------------------------------------------------------------

    async def start_async(self) -> int:
        """Listen on this event loop, start sampling; return the port.

        Raises:
            OSError: the port is taken.
        """
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        http = HttpServer("sage-dashboard", max_body=MAX_SNAPSHOT_BYTES, authorize=self._authorize)
        http.route("GET", "/", self._index)
        http.route("GET", "/static/{name}", self._static_file)
        http.route("GET", "/api/state", self._state_route)
        http.route("GET", "/events", self._events)
        http.route("POST", INGEST_PATH, self._ingest)
        http.route("GET", "/metrics", self._metrics)
        http.route("GET", "/health", self._health)
        self.port = await http.start(self.host, self.port)
        self._http = http
        if self._advertise_to is not False:
            path = None if self._advertise_to in (None, True) else self._advertise_to
            assert not isinstance(path, bool)
            self.token = self._exit.enter_context(advertise(self.host, self.port, path)).token
        self._sampler = threading.Thread(target=self._sample_loop, name="sage-dashboard-sampler")
        self._sampler.daemon = True
        self._sampler.start()
        logger.info("dashboard at %s", self.url)
        return self.port

    async def stop_async(self) -> None:
        """Stop sampling, end the event streams, stop listening."""
        self._closing = True
        self._stop_sampling.set()
        if self._changed is not None:
            self._changed.set()
        self._exit.close()
        if self._http is not None:
            await self._http.close(grace_s=1.0)
            self._http = None
        sampler = self._sampler
        if sampler is not None:
            await asyncio.get_running_loop().run_in_executor(None, sampler.join, 10.0)
        self.gpu_monitor.close()

    def wait_sampled(self, timeout: float | None = None) -> bool:
        """Wait until the first refresh has happened (for tests and the CLI)."""
        return self._sampled.wait(timeout)

    # -- sampling (its own thread) ----------------------------------------------------------

    def _sample_loop(self) -> None:
        with httpx.Client(timeout=2.0) as client:
            while not self._stop_sampling.is_set():
                started = time.monotonic()
                try:
                    self._sample(client)
                except Exception:  # a bug in one refresh must not end the dashboard
                    logger.exception("dashboard refresh failed")
                self._sampled.set()
                self._stop_sampling.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def _sample(self, client: httpx.Client) -> None:
        if not self._explicit_gateways:
            self._gateways = discover_gateways(())
        if not self._explicit_jobmanagers:
            self._jobmanagers = discover_jobmanagers(())
        gateways = [g.read(client) for g in self._gateways]
        jobmanagers, jm_rows = [], {}
        for jm in self._jobmanagers:
            line, rows = jm.read()
            jobmanagers.append(line)
            jm_rows[jm.address] = rows
        processes = {**self._job_pids, **known_processes()}
        parts = {
            "host": self.host_monitor.read(processes),
            "gpus": self.gpu_monitor.read().to_dict(),
            "gateways": gateways,
            "jobmanagers": jobmanagers,
        }
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._refresh, parts, jm_rows)

    # -- on the event loop ------------------------------------------------------------------

    def _refresh(self, parts: dict[str, Any], jm_rows: Mapping[str, list[dict[str, Any]]]) -> None:
        for address, rows in jm_rows.items():
            for row in rows:
                self.board.update(row)
            self.board.drop_missing(f"jobmanager {address}", {row["id"] for row in rows})
        self._parts = parts
        state = self.publish()
        # the sampler reads these next tick: the processes of the local jobs on the board
        self._job_pids = {
            row["pid"]: f"job {row.get('name', '?')}"
            for row in reversed(state["jobs"])  # newest last: a reused pid shows its latest job
            if row.get("source") == "local" and isinstance(row.get("pid"), int)
        }

    def state(self) -> dict[str, Any]:
        """The whole state, as the page gets it."""
        return {
            "time": time.time(),
            "version": sage.__version__,
            **self._parts,
            "jobs": self.board.rows(),
        }

    def publish(self) -> dict[str, Any]:
        """Rebuild the state, wake the event streams with it and return it (call on the
        event loop)."""
        state = self.state()
        self._state = orjson.dumps(state, option=orjson.OPT_SERIALIZE_NUMPY)
        self._version += 1
        changed, self._changed = self._changed, asyncio.Event()
        if changed is not None:
            changed.set()
        return state

    # -- handlers -------------------------------------------------------------------------

    def _authorize(self, method: str, path: str, headers: Mapping[str, str]) -> HttpError | None:
        """Only publishers holding the token may push snapshots (checked before the body)."""
        if method != "POST":
            return None
        header = headers.get("authorization", "")
        given = header[7:].strip() if header[:7].lower() == "bearer " else None
        if self.token and token_matches(given, self.token):
            return None
        return HttpError(
            401,
            "missing or wrong dashboard token: jobs find it in $SAGE_HOME/dashboard/server.json",
        )

    async def _index(self, request: Request) -> Response:
        return _asset("index.html")

    async def _static_file(self, request: Request) -> Response:
        return _asset(request.params["name"])

    async def _state_route(self, request: Request) -> Response:
        body = orjson.dumps(self.state(), option=orjson.OPT_SERIALIZE_NUMPY)
        return Response(body=body, content_type="application/json")

    async def _events(self, request: Request) -> StreamResponse:
        return StreamResponse(
            self._stream(),
            content_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def _stream(self) -> AsyncIterator[bytes]:
        version = -1
        while not self._closing:
            if version == self._version:
                changed = self._changed
                assert changed is not None
                await changed.wait()
                continue
            version = self._version
            yield b"data: " + self._state + b"\n\n"

    async def _ingest(self, request: Request) -> Response:
        try:
            row = request.json()
            if not isinstance(row, dict):
                raise ValueError("a job snapshot is a JSON object")
            row = {**row, "source": "local", "origin": "local", "updated_at": time.time()}
            self.board.update(row)
        except ValueError as exc:
            raise HttpError(400, f"bad job snapshot: {exc}") from None
        return Response(status=204)

    async def _metrics(self, request: Request) -> Response:
        """Prometheus text: the families are read on the loop (where the board changes),
        and written out on a worker thread (tens of ms with many jobs)."""
        families = self.families()
        body = await asyncio.get_running_loop().run_in_executor(None, prometheus.render, families)
        return Response(body=body, content_type=prometheus.CONTENT_TYPE)

    async def _health(self, request: Request) -> Response:
        return Response(body=b'{"status":"ok"}')

    def exposition(self) -> bytes:
        """Prometheus text of everything on the page."""
        return prometheus.exposition(self.collector)

    def families(self) -> list[MetricFamily]:
        """The page's figures as Prometheus families (what :attr:`collector` collects)."""
        state = self.state()
        families = [*job_families(state["jobs"]), *_host_families(state), *_gpu_families(state)]
        rate = MetricFamily(
            "sage_operator_records_per_second",
            "gauge",
            "Records an operator processed per second over the dashboard's last refresh.",
        )
        for job in state["jobs"]:
            names = {
                str(op.get("node_id")): op.get("operator", "")
                for op in (job.get("metrics") or {}).get("operators") or ()
            }
            for node, value in (job.get("records_per_s") or {}).items():
                rate.add(
                    value,
                    job_id=job["id"],
                    job=job.get("name", ""),
                    operator=names.get(node, ""),
                    node=node,
                )
        reachable = MetricFamily("sage_gateway_up", "gauge", "1 when the dashboard reached it.")
        for gateway in state["gateways"]:
            reachable.add(int(bool(gateway.get("ok"))), url=gateway.get("url", ""))
        return [*families, rate, reachable]


def _asset(name: str) -> Response:
    """A file of the page, from the package (only the files it ships: no path walks)."""
    kind = _STATIC.get(name)
    if kind is None:
        raise HttpError(404, f"no file {name!r}")
    body = resources.files("sage.dashboard").joinpath("static", name).read_bytes()
    return Response(body=body, content_type=kind, headers={"cache-control": "no-cache"})


def _host_families(state: Mapping[str, Any]) -> Iterator[MetricFamily]:
    host = state.get("host") or {}
    memory = host.get("memory") or {}
    for name, help_text, value in (
        ("sage_host_cpu_percent", "CPU use of the machine (%).", host.get("cpu_percent")),
        ("sage_host_cpu_count", "Logical CPUs.", host.get("cpu_count")),
        ("sage_host_memory_percent", "Memory in use (%).", memory.get("percent")),
    ):
        family = MetricFamily(name, "gauge", help_text)
        if value is not None:
            family.add(float(value))
        yield family
    for name, help_text, key in (
        ("sage_host_memory_total_bytes", "Physical memory.", "total_mb"),
        ("sage_host_memory_used_bytes", "Memory in use.", "used_mb"),
    ):
        family = MetricFamily(name, "gauge", help_text)
        if memory.get(key) is not None:
            family.add(float(memory[key]) * 2**20)
        yield family
    rss = MetricFamily("sage_process_rss_bytes", "gauge", "Resident memory of a SAGE process.")
    cpu = MetricFamily("sage_process_cpu_percent", "gauge", "CPU use of a SAGE process (%).")
    for proc in host.get("processes") or ():
        if proc.get("alive", True):
            labels = {"pid": proc.get("pid"), "role": proc.get("role", "")}
            rss.add(float(proc.get("rss_mb") or 0.0) * 2**20, **labels)
            cpu.add(float(proc.get("cpu_percent") or 0.0), **labels)
    yield rss
    yield cpu


def _gpu_families(state: Mapping[str, Any]) -> Iterator[MetricFamily]:
    gpus = state.get("gpus") or {}
    available = MetricFamily("sage_gpu_available", "gauge", "1 when NVML reports GPUs.")
    available.add(int(bool(gpus.get("available"))))
    yield available
    for name, help_text, key, scale in (
        ("sage_gpu_utilization_percent", "GPU utilisation (%).", "utilization_percent", 1.0),
        ("sage_gpu_memory_used_bytes", "GPU memory in use.", "memory_used_mb", 2.0**20),
        ("sage_gpu_memory_total_bytes", "GPU memory.", "memory_total_mb", 2.0**20),
        ("sage_gpu_temperature_celsius", "GPU temperature.", "temperature_c", 1.0),
        ("sage_gpu_power_watts", "GPU power draw.", "power_w", 1.0),
        ("sage_gpu_power_limit_watts", "GPU power limit.", "power_limit_w", 1.0),
    ):
        family = MetricFamily(name, "gauge", help_text)
        for device in gpus.get("devices") or ():
            if device.get(key) is not None:
                family.add(
                    float(device[key]) * scale, gpu=device.get("index"), name=device.get("name")
                )
        yield family
