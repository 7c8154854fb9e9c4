"""Connecting to a Ray cluster, describing it, and the ``"ray"`` section of a job's config.

The JobManager (or a test) connects once per process: to the cluster at an address, or to
a local cluster Ray starts for this process. Jobs then run on whatever cluster is connected.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sage.common.errors import ConfigError

__all__ = ["ClusterInfo", "RayOptions", "cluster_info", "connect", "disconnect"]

logger = logging.getLogger(__name__)

_RAY_KEYS = ("address", "num_cpus", "num_gpus")


@dataclass(frozen=True)
class RayOptions:
    """A job's ``config["ray"]`` section, validated.

    Attributes:
        address: The cluster the job was written for (the JobManager's decides; a different
            one is reported in the job's log).
        num_cpus: CPUs the job's tasks reserve together (``None``: a small share each, so a
            job never waits for free CPUs).
        num_gpus: GPUs the job may use for its services (``None``: no limit).
    """

    address: str | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None

    @staticmethod
    def from_config(section: Any) -> RayOptions:
        """Validate ``config["ray"]`` (absent: defaults).

        Raises:
            ConfigError: a key is unknown or a value is invalid (the message says the fix).
        """
        if section is None:
            return RayOptions()
        if not isinstance(section, Mapping):
            raise ConfigError(
                f"config['ray'] must be a dict such as {{'address': 'ray://host:10001', "
                f"'num_cpus': 8}}, got {type(section).__name__}"
            )
        for key in section:
            if key not in _RAY_KEYS:
                close = difflib.get_close_matches(str(key), _RAY_KEYS, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; use {', '.join(_RAY_KEYS)}"
                raise ConfigError(f"config['ray'][{key!r}] is unknown{hint}")
        address = section.get("address")
        if address is not None and (not isinstance(address, str) or not address):
            raise ConfigError(
                f"config['ray']['address']={address!r} is invalid; use a string such as "
                "'ray://127.0.0.1:10001' or '127.0.0.1:6379'"
            )
        amounts: dict[str, float | None] = {}
        for key in ("num_cpus", "num_gpus"):
            value = section.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value < 0
            ):
                raise ConfigError(f"config['ray'][{key!r}]={value!r} is invalid; use a number >= 0")
            amounts[key] = None if value is None else float(value)
        return RayOptions(address, amounts["num_cpus"], amounts["num_gpus"])


@dataclass(frozen=True)
class ClusterInfo:
    """The connected cluster: where it is and what it has."""

    address: str
    nodes: int
    cpus: float
    gpus: float
    max_node_gpus: float

    def __str__(self) -> str:
        return (
            f"Ray cluster at {self.address}: {self.nodes} node(s), {self.cpus:g} CPU(s), "
            f"{self.gpus:g} GPU(s)"
        )


def connect(address: str | None = None, *, num_cpus: int | None = None) -> ClusterInfo:
    """Connect this process to a Ray cluster (once; later calls describe it).

    Args:
        address: A running cluster (``"127.0.0.1:6379"``, ``"ray://host:10001"``, ``"auto"``);
            ``None`` starts a local cluster owned by this process.
        num_cpus: CPUs of that local cluster (``None``: every CPU of the machine).

    Raises:
        JobError: no cluster answers at ``address``.
    """
    import ray

    from sage.common.errors import JobError

    if not ray.is_initialized():
        options: dict[str, Any] = {
            "namespace": "sage",
            "configure_logging": False,
            "log_to_driver": False,
        }
        try:
            if address is None:
                # "local": a new cluster, never one that happens to run on this machine
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **options)
            else:
                ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise JobError(
                f"cannot connect to the Ray cluster at {address!r}: {exc}; start one with "
                "`ray start --head` or omit the address to run a local cluster"
            ) from exc
        info = cluster_info()
        logger.info("connected to %s", info)
        return info
    return cluster_info()


def cluster_info() -> ClusterInfo:
    """Describe the connected cluster (live nodes and their resources)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    resources = [n.get("Resources", {}) for n in nodes]
    context = ray.get_runtime_context()
    address = getattr(context, "gcs_address", None) or "local"
    return ClusterInfo(
        address=str(address),
        nodes=len(nodes),
        cpus=sum(r.get("CPU", 0.0) for r in resources),
        gpus=sum(r.get("GPU", 0.0) for r in resources),
        max_node_gpus=max((r.get("GPU", 0.0) for r in resources), default=0.0),
    )


def disconnect() -> None:
    """Disconnect (and stop a local cluster this process started)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
