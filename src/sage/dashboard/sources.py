"""What the dashboard polls: JobManagers, gateways, and the SAGE processes on this machine.

Each source is read by the dashboard's sampler thread once per tick; a source that is down
shows as an error on the page and never stops the others. Without explicit addresses the
dashboard finds what ``sage jobmanager start`` and ``sage llm serve`` left in ``$SAGE_HOME``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from sage.common.config.paths import sage_home
from sage.common.errors import ConfigError
from sage.common.processes import is_running
from sage.kernel.jobmanager.client import JobManagerClient

__all__ = ["GatewaySource", "JobManagerSource", "known_processes", "parse_address"]

logger = logging.getLogger(__name__)

MAX_JOBS_POLLED = 20
"""Per JobManager, the most recent jobs whose metrics are read each tick."""


def parse_address(address: str, what: str, option: str) -> tuple[str, int]:
    """``host:port`` (or ``http://host:port``) as a pair.

    Raises:
        ConfigError: not of that form (names ``option``).
    """
    text = address.removeprefix("http://").rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"{option} {address!r} is not a {what} address; use host:port such as 127.0.0.1:19001"
        )
    return host, int(port)


def _llm_state() -> dict[str, Any] | None:
    try:
        return dict(json.loads((sage_home() / "llm" / "state.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def _jobmanager_state() -> dict[str, Any] | None:
    from sage.kernel.jobmanager.daemon import read_state

    return read_state()


@dataclass
class JobManagerSource:
    """One JobManager: its jobs and their metrics, read with its token."""

    host: str
    port: int
    token: str | None = None
    discovered: bool = False

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    def read(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(its status line for the page, its jobs as board rows)."""
        try:
            with JobManagerClient(self.host, self.port, self.token, timeout=2.0) as client:
                runtime = client.health().runtime.split(" ", 1)[0].lower()
                infos = client.list()
                rows = []
                recent = sorted(infos, key=lambda i: (i.ended, -i.submitted_at))
                for i, info in enumerate(recent):
                    metrics = None
                    if i < MAX_JOBS_POLLED:
                        try:
                            metrics = client.metrics(info.job_id)
                        except Exception as exc:  # one job's metrics: keep the others
                            logger.debug("metrics of %s: %s", info.job_id, exc)
                    error = info.error
                    rows.append(
                        {
                            "id": info.job_id,
                            "name": info.name,
                            "source": "jobmanager",
                            "origin": f"jobmanager {self.address}",
                            "runtime": runtime,
                            "status": str(info.status),
                            "pid": None,
                            "error": None if error is None else f"{error.type}: {error.message}",
                            "elapsed_s": info.elapsed_s,
                            "updated_at": info.submitted_at,
                            "memory": None,
                            "metrics": metrics,
                        }
                    )
        except Exception as exc:  # down, refused, wrong token: say so on the page
            return {"address": self.address, "ok": False, "error": _short(exc), "jobs": 0}, []
        return {"address": self.address, "ok": True, "error": "", "jobs": len(rows)}, rows


@dataclass
class GatewaySource:
    """One OpenAI-compatible gateway: its policy, queue, instances and tenants."""

    url: str
    api_key: str | None = None
    discovered: bool = False

    def read(self, client: httpx.Client) -> dict[str, Any]:
        """The gateway's row for the page (``ok`` False with the error when unreachable)."""
        headers = {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            response = client.get(f"{self.url}/v1/management/metrics", headers=headers)
            response.raise_for_status()
            state = response.json()
        except Exception as exc:
            return {"url": self.url, "ok": False, "error": _short(exc), "instances": []}
        queued = {
            (lane.get("kind"), lane.get("model")): lane.get("queued", 0)
            for lane in state.get("lanes") or ()
        }
        instances = []
        for inst in state.get("instances") or ():
            row = dict(inst)
            row.setdefault(
                "queued", queued.get((inst.get("instance_type"), inst.get("model_name")), 0)
            )
            row.setdefault("slo_attainment", None)
            row.pop("api_key", None)
            instances.append(row)
        return {
            "url": self.url,
            "ok": True,
            "error": "",
            "policy": state.get("policy"),
            "active_policy": state.get("active_policy"),
            "queued": state.get("queued", 0),
            "total_requests": state.get("total_requests", 0),
            "instances": instances,
            "tenants": _tenants(state.get("tenants")),
        }


def _tenants(described: Any) -> list[dict[str, Any]]:
    """The gateway's tenants as rows (name first; most requests first)."""
    if not isinstance(described, dict):
        return []
    rows = [{"name": name, **row} for name, row in described.items() if isinstance(row, dict)]
    return sorted(rows, key=lambda row: (-int(row.get("requests") or 0), row["name"]))


def discover_jobmanagers(explicit: Iterable[str]) -> list[JobManagerSource]:
    """The JobManagers given, else the one ``sage jobmanager start`` runs (if any)."""
    sources = [JobManagerSource(*parse_address(a, "JobManager", "--jobmanager")) for a in explicit]
    if not sources:
        state = _jobmanager_state()
        if state is not None and is_running(state.get("pid")):
            host = str(state.get("host", "127.0.0.1"))
            host = "127.0.0.1" if host in ("0.0.0.0", "") else host
            sources.append(JobManagerSource(host, int(state["port"]), discovered=True))
    return sources


def discover_gateways(explicit: Iterable[str]) -> list[GatewaySource]:
    """The gateways given, else the one ``sage llm serve`` runs (if any)."""
    key = os.environ.get("SAGE_API_KEY") or None
    sources = []
    for url in explicit:
        host, port = parse_address(url, "gateway", "--gateway")
        sources.append(GatewaySource(f"http://{host}:{port}", key))
    if not sources:
        state = _llm_state()
        if state is not None and is_running((state.get("pids") or {}).get("gateway")):
            found = (state.get("ports") or {}).get("gateway")
            if found:
                sources.append(GatewaySource(f"http://127.0.0.1:{found}", key, discovered=True))
    return sources


def known_processes() -> dict[int, str]:
    """SAGE's long-running processes on this machine: pid -> role."""
    found: dict[int, str] = {os.getpid(): "dashboard"}
    jm = _jobmanager_state()
    if jm is not None and is_running(jm.get("pid")):
        found[int(jm["pid"])] = "jobmanager"
    llm = _llm_state()
    for name, pid in ((llm or {}).get("pids") or {}).items():
        if is_running(pid):
            found[int(pid)] = f"llm {name}"
    return found


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]
