"""``SagePorts``: the well-known ports of SAGE's servers, in one place.

Example:
    >>> SagePorts.GATEWAY_DEFAULT, SagePorts.EMBEDDING_DEFAULT
    (8000, 8090)
"""

from __future__ import annotations

import os
import platform
import random
import socket

from sage.common.errors import ConfigError

__all__ = ["SagePorts"]


class SagePorts:
    """Default ports, and helpers to pick one that works on this machine."""

    GATEWAY_DEFAULT = 8000
    LLM_DEFAULT = 8001
    LLM_SECONDARY = 8002
    LLM_WSL_FALLBACK = 8901
    BENCHMARK_LLM = 8901
    EMBEDDING_DEFAULT = 8090
    EMBEDDING_SECONDARY = 8091
    BENCHMARK_EMBEDDING = 8902
    BENCHMARK_API = 8903
    JOBMANAGER_DEFAULT = 19001
    DASHBOARD_DEFAULT = 8088

    @staticmethod
    def is_wsl() -> bool:
        """Whether this is Windows Subsystem for Linux (where port 8001 is often taken)."""
        if os.environ.get("WSL_DISTRO_NAME") or os.environ.get("WSL_INTEROP"):
            return True
        return "microsoft" in platform.release().lower()

    @classmethod
    def get_recommended_llm_port(cls) -> int:
        """:attr:`LLM_WSL_FALLBACK` (8901) on WSL2, :attr:`LLM_DEFAULT` (8001) elsewhere."""
        return cls.LLM_WSL_FALLBACK if cls.is_wsl() else cls.LLM_DEFAULT

    @classmethod
    def get_recommended_embedding_port(cls) -> int:
        """8902 (:attr:`BENCHMARK_EMBEDDING`) on WSL2, else 8090 (:attr:`EMBEDDING_DEFAULT`)."""
        return cls.BENCHMARK_EMBEDDING if cls.is_wsl() else cls.EMBEDDING_DEFAULT

    @staticmethod
    def is_port_free(port: int, host: str = "127.0.0.1") -> bool:
        """Whether a server could bind ``host:port`` now."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
            return True

    @staticmethod
    def is_port_number(value: object) -> bool:
        """Whether ``value`` is a TCP port number a server can be asked for (1-65535; an
        ``int``, not a ``bool``)."""
        return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535

    @classmethod
    def is_available(cls, port: int, host: str = "127.0.0.1") -> bool:
        """Whether a server could bind ``host:port`` now (the reference's name for
        :meth:`is_port_free`)."""
        return cls.is_port_free(port, host)

    @classmethod
    def find_free_port(cls, start: int, host: str = "127.0.0.1", tries: int = 100) -> int:
        """The first free port from ``start`` upwards.

        Raises:
            OSError: none of ``tries`` ports is free.
        """
        for port in range(start, start + tries):
            if cls.is_port_free(port, host):
                return port
        raise OSError(f"no free port in {start}-{start + tries - 1} on {host}")

    @classmethod
    def find_available_port(cls, start: int, end: int, host: str = "127.0.0.1") -> int:
        """The first free port in ``[start, end]`` (both included), for a server that
        must stay inside a known range (a firewall rule, a benchmark's block).

        Raises:
            ConfigError: ``start`` or ``end`` is not a port number (1-65535), or ``start > end``.
            OSError: every port in the range is taken (the message names the range and the fix).
        """
        for name, value in (("start", start), ("end", end)):
            if not cls.is_port_number(value):
                raise ConfigError(f"{name}={value!r} must be a port number from 1 to 65535")
        if start > end:
            raise ConfigError(f"start={start} is above end={end}; pass start <= end")
        try:
            return cls.find_free_port(start, host, tries=end - start + 1)
        except OSError:
            raise OSError(
                f"no free port in {start}-{end} on {host}: stop what listens there, widen the "
                "range (end=), or use SagePorts.any_free_port() for any free port"
            ) from None

    @classmethod
    def any_free_port(cls, host: str = "127.0.0.1") -> int:
        """A port free now, for a server started a moment later.

        Chosen below the kernel's ephemeral range (``ip_local_port_range``, where outgoing
        connections take their local ports) and above SAGE's defaults, so a connection made
        between the choice and the server's bind (an engine's readiness probe, say) cannot
        be given the same port. Where the range is unknown, or nothing below it is free,
        the kernel picks (a bind to port 0).
        """
        below = _ephemeral_start()
        if below is not None and below > _CHOSEN_FROM:
            for _ in range(64):
                port = random.randrange(_CHOSEN_FROM, below)
                if cls.is_port_free(port, host):
                    return port
        with socket.socket() as sock:
            sock.bind((host, 0))
            return int(sock.getsockname()[1])


_CHOSEN_FROM = 20000  # any_free_port: above every SAGE default (the JobManager's is 19001)


def _ephemeral_start() -> int | None:
    """The first port of the kernel's ephemeral range (``None``: not Linux, or unreadable)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
