"""Where a running dashboard can be found: ``$SAGE_HOME/dashboard/server.json``.

``sage dashboard`` writes the file when it starts listening (its pid, address and a random
ingest token; mode 0600 in a 0700 directory, so only its owner can push metrics to it) and
removes it when it stops. Job processes read it to publish their metrics without being told
where the dashboard is; a file left by a dashboard that died is ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sage.common.config.paths import sage_home
from sage.common.processes import is_running

__all__ = ["DashboardAddress", "advertise", "dashboard_state_file", "find_dashboard"]


@dataclass(frozen=True)
class DashboardAddress:
    """A running dashboard: where it listens and the token its ingest route wants."""

    host: str
    port: int
    token: str
    pid: int

    @property
    def url(self) -> str:
        """``http://127.0.0.1:8080``."""
        return f"http://{self.host}:{self.port}"


def dashboard_state_file() -> Path:
    """``$SAGE_HOME/dashboard/server.json``."""
    return sage_home() / "dashboard" / "server.json"


def find_dashboard(path: Path | None = None) -> DashboardAddress | None:
    """The dashboard whose state file is at ``path`` (default: this user's), if it runs."""
    path = path or dashboard_state_file()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        address = DashboardAddress(
            host=str(data["host"]),
            port=int(data["port"]),
            token=str(data["token"]),
            pid=int(data["pid"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return address if is_running(address.pid) else None


@contextlib.contextmanager
def advertise(host: str, port: int, path: Path | None = None) -> Iterator[DashboardAddress]:
    """Write the state file for a dashboard listening on ``host:port`` while the block runs.

    Yields the address, whose fresh ``token`` the dashboard must require on its ingest route.
    """
    path = path or dashboard_state_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    address = DashboardAddress(host, port, secrets.token_urlsafe(24), os.getpid())
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"host": host, "port": port, "token": address.token, "pid": address.pid}, fh)
    os.replace(path.with_suffix(".tmp"), path)
    try:
        yield address
    finally:
        current = find_dashboard(path)
        if current is not None and current.pid == os.getpid() and current.port == port:
            path.unlink(missing_ok=True)
