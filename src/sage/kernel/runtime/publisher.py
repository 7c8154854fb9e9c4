"""Jobs publish their metrics to a running dashboard, with nothing for the user to wire.

Every local job registers with this process's :class:`MetricsPublisher` when it starts. While
any registered job runs, one daemon thread looks for a dashboard (``find_dashboard``: a state
file in ``$SAGE_HOME``) once per ``interval_s`` and, when there is one, POSTs each job's
snapshot (JSON, with the dashboard's token) to ``/api/jobs``. A job's final snapshot is sent
when it ends, also at interpreter exit. Without a dashboard the cost is one file read per
second; a dashboard that is slow or gone costs a failed connection on loopback, never a
stalled job: publishing runs on its own thread and gives up after ``timeout_s``.

Set ``SAGE_DASHBOARD_PUBLISH=0`` to turn it off for a process.
"""

from __future__ import annotations

import atexit
import http.client
import itertools
import logging
import os
import socket
import threading
import time
import weakref
from typing import Any, Protocol

import orjson

from sage.common.observability.discovery import DashboardAddress, find_dashboard

__all__ = ["INGEST_PATH", "MetricsPublisher", "PublishedJob", "publisher"]

logger = logging.getLogger(__name__)

INGEST_PATH = "/api/jobs"
"""Where the dashboard takes job snapshots (POST, JSON, ``Authorization: Bearer <token>``)."""


class PublishedJob(Protocol):
    """What the publisher reads from a job."""

    name: str

    @property
    def status(self) -> Any: ...

    @property
    def error(self) -> BaseException | None: ...

    def metrics(self) -> Any: ...


class MetricsPublisher:
    """Pushes the snapshots of this process's jobs to the dashboard; see the module docstring."""

    def __init__(self, interval_s: float = 1.0, timeout_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.enabled = os.environ.get("SAGE_DASHBOARD_PUBLISH", "1") not in ("0", "false", "no")
        self._jobs: dict[str, weakref.ref[Any]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._conn_to: DashboardAddress | None = None
        self._send_lock = threading.Lock()
        self._host = socket.gethostname()
        self.sent = 0
        atexit.register(self.flush)

    def track(self, job: PublishedJob) -> str:
        """Publish ``job`` from now until it ends; its id on the dashboard."""
        job_id = f"{self._host}-{os.getpid()}-{next(self._ids)}"
        if not self.enabled:
            return job_id
        with self._lock:
            self._jobs[job_id] = weakref.ref(job)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="sage-metrics-publisher", daemon=True
                )
                self._thread.start()
        return job_id

    def ended(self, job_id: str | None) -> None:
        """The job ``job_id`` has ended: publish its final snapshot now and stop tracking it.

        Called by the job as it ends, so a script that exits right after still shows its
        final figures; the publishing thread stops (and is joined) with the last job.
        """
        if job_id is None:
            return
        with self._lock:
            ref = self._jobs.pop(job_id, None)
            last = not self._jobs
            thread = self._thread if last else None
            if last:
                self._thread = None
        job = None if ref is None else ref()
        if job is not None:
            address = find_dashboard()
            if address is not None:
                self._send(address, self.payload(job_id, job))
        if thread is not None:
            self._wake.set()
            thread.join()

    def flush(self) -> None:
        """Publish every tracked job once, now (at exit: the final snapshots)."""
        with self._lock:
            jobs = list(self._jobs.items())
        address = find_dashboard() if jobs else None
        for job_id, ref in jobs:
            job = ref()
            if job is not None and address is not None:
                self._send(address, self.payload(job_id, job))

    # -- the thread -----------------------------------------------------------------------

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            with self._lock:
                if self._thread is not me:  # the last job ended: ended() joins us
                    break
                jobs = list(self._jobs.items())
                if not jobs:
                    self._thread = None
                    break
            address = find_dashboard()
            for job_id, ref in jobs:
                job = ref()
                if job is None:  # collected without ending through ended()
                    with self._lock:
                        self._jobs.pop(job_id, None)
                elif address is not None:
                    self._send(address, self.payload(job_id, job))
        with self._send_lock:
            self._close()

    def payload(self, job_id: str, job: PublishedJob) -> dict[str, Any]:
        """The JSON the dashboard takes for ``job``."""
        error = job.error
        monitor = getattr(job, "memory_monitor", None)
        return {
            "id": job_id,
            "name": job.name,
            "source": "local",
            "runtime": "local",
            "status": str(job.status),
            "pid": os.getpid(),
            "host": self._host,
            "error": None if error is None else f"{type(error).__name__}: {error}",
            "memory": None if monitor is None else monitor.to_dict(),
            "metrics": job.metrics().to_dict(),
            "sent_at": time.time(),
        }

    def _send(self, address: DashboardAddress, payload: dict[str, Any]) -> None:
        with self._send_lock:
            self._post(address, orjson.dumps(payload))

    def _post(self, address: DashboardAddress, body: bytes) -> None:
        headers = {
            "content-type": "application/json",
            "authorization": f"Bearer {address.token}",
        }
        for attempt in range(2):  # a kept-alive connection the server closed: one retry
            try:
                if self._conn is None or self._conn_to != address:
                    self._close()
                    self._conn = http.client.HTTPConnection(
                        address.host, address.port, timeout=self.timeout_s
                    )
                    self._conn_to = address
                self._conn.request("POST", INGEST_PATH, body, headers)
                response = self._conn.getresponse()
                response.read()
                if response.status >= 400:
                    logger.debug("dashboard refused a snapshot: HTTP %s", response.status)
                else:
                    self.sent += 1
                return
            except (OSError, http.client.HTTPException) as exc:
                self._close()
                if attempt:
                    logger.debug("could not publish to the dashboard at %s: %s", address.url, exc)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._conn_to = None


_publisher: MetricsPublisher | None = None
_publisher_lock = threading.Lock()


def publisher() -> MetricsPublisher:
    """This process's publisher (created on first use)."""
    global _publisher
    with _publisher_lock:
        if _publisher is None:
            _publisher = MetricsPublisher()
        return _publisher
