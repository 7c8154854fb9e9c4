"""The web dashboard: ``sage dashboard`` serves :class:`DashboardServer`."""

from __future__ import annotations

__all__ = ["DashboardServer"]


def __getattr__(name: str) -> object:
    if name == "DashboardServer":  # the server loads httpx and psutil: only when asked
        from sage.dashboard.server import DashboardServer

        return DashboardServer
    raise AttributeError(name)
