"""A three-node Ray cluster on loopback (head, a worker, a worker with a GPU) for the suite.

Ray binds to the machine's interface address unless its processes run in a network
namespace whose only interface is loopback; ``make test`` runs the suite in one (as root).
Elsewhere the Ray tests are skipped rather than send traffic off the machine.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jobmanager_helpers import CountingFactory, private_home, running_jobmanager

from sage.kernel.jobmanager.factories import JobFactory, RayJobFactory
from sage.kernel.jobmanager.server import JobManagerServer

LOOPBACK = "127.0.0.1"


def loopback_only() -> bool:
    """Whether this process sees no network interface but loopback."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``$SAGE_HOME`` (so a fresh JobManager token) for one test."""
    return private_home(tmp_path, monkeypatch)


@pytest.fixture
def factory() -> CountingFactory:
    """Runs jobs on this process's threads and remembers what it was given."""
    return CountingFactory()


@pytest.fixture
def server(factory: CountingFactory) -> Iterator[JobManagerServer]:
    """A JobManager on a free loopback port, running jobs through ``factory``."""
    with running_jobmanager(factory) as server:
        yield server


@pytest.fixture(params=["local", pytest.param("ray", marks=pytest.mark.slow)])
def any_server(request: pytest.FixtureRequest, home: Path) -> Iterator[JobManagerServer]:
    """A JobManager running jobs on this process's threads, or on the suite's Ray cluster
    (a test using it runs on both)."""
    if request.param == "ray":
        cluster = request.getfixturevalue("ray_cluster")
        factory: JobFactory = RayJobFactory(cluster.address)
    else:
        factory = CountingFactory()
    with running_jobmanager(factory) as server:
        yield server


@dataclass(frozen=True)
class RayCluster:
    """The running cluster: its address and the node ids by role."""

    address: str
    head: str
    worker: str
    gpu_worker: str


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """Head (2 CPUs), worker (2 CPUs), GPU worker (2 CPUs, 1 GPU), this process connected."""
    if not loopback_only():
        pytest.skip("Ray tests run in a loopback-only network namespace: use `make test`")
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from sage.kernel.runtime.ray.cluster import connect

    # Ray workers import pipeline code by module name, as on a real cluster where it is
    # installed: the test modules and their helpers must be importable there too.
    here = os.path.dirname(os.path.abspath(__file__))
    dirs = [here, os.path.dirname(here)]  # this folder (pytest imports it by basename), tests/
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(dirs + ([path] if path else []))
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "node_ip_address": LOOPBACK, "include_dashboard": False},
    )
    nodes: list[Any] = [cluster.head_node]
    nodes.append(cluster.add_node(num_cpus=2, node_ip_address=LOOPBACK))
    nodes.append(cluster.add_node(num_cpus=2, num_gpus=1, node_ip_address=LOOPBACK))
    cluster.wait_for_nodes()
    try:
        connect(cluster.address)
        yield RayCluster(cluster.address, *(n.node_id for n in nodes))
    finally:
        ray.shutdown()
        cluster.shutdown()
        if path is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = path
