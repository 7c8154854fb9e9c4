"""Network region hints: never blocks, never touches the network unless asked.

``detect_china_mainland()`` decides from local hints (an explicit ``SAGE_REGION``, a mirror
already configured, the time zone, the locale). Only ``probe=True`` opens a connection, with
a short timeout, so an offline machine always answers at once.
"""

from __future__ import annotations

import os
import socket
import time

__all__ = ["HF_MIRROR", "detect_china_mainland", "ensure_hf_mirror_configured"]

HF_MIRROR = "https://hf-mirror.com"
_CN_ZONES = (
    "Asia/Shanghai",
    "Asia/Chongqing",
    "Asia/Chungking",
    "Asia/Harbin",
    "Asia/Urumqi",
    "PRC",
)


def _timezone_name() -> str:
    tz = os.environ.get("TZ", "")
    if tz:
        return tz
    try:
        return os.path.realpath("/etc/localtime").split("zoneinfo/", 1)[-1]
    except OSError:  # pragma: no cover - no /etc/localtime
        return ""


def detect_china_mainland(probe: bool = False, timeout: float = 0.5) -> bool:
    """Whether this machine is probably in mainland China (where the HF hub is slow).

    Args:
        probe: Also time a TCP connection to huggingface.co against hf-mirror.com (the
            only case that uses the network; bounded by ``timeout``).
        timeout: Seconds each probe may take.
    """
    region = os.environ.get("SAGE_REGION", "").strip().lower()
    if region:
        return region in ("cn", "china", "mainland")
    if os.environ.get("HF_ENDPOINT", "").rstrip("/") == HF_MIRROR:
        return True
    if _timezone_name() in _CN_ZONES or (time.tzname[0] == "CST" and time.timezone == -8 * 3600):
        return True
    locale = os.environ.get("LC_ALL") or os.environ.get("LANG") or ""
    if locale.startswith("zh_CN"):
        return True
    if not probe:
        return False

    def connect_s(host: str) -> float:
        start = time.perf_counter()
        try:
            with socket.create_connection((host, 443), timeout=timeout):
                return time.perf_counter() - start
        except OSError:
            return float("inf")

    hub, mirror = connect_s("huggingface.co"), connect_s("hf-mirror.com")
    return hub == float("inf") and mirror < float("inf")


def ensure_hf_mirror_configured(probe: bool = False) -> str | None:
    """Set ``HF_ENDPOINT`` to the mirror when in mainland China and none is set.

    Returns:
        The endpoint in effect afterwards (``None``: the default hub).
    """
    current = os.environ.get("HF_ENDPOINT")
    if current:
        return current
    if detect_china_mainland(probe=probe):
        os.environ["HF_ENDPOINT"] = HF_MIRROR
        return HF_MIRROR
    return None
