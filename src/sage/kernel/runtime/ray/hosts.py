"""The pool of :class:`~.task_actor.TaskHost` actors that jobs borrow their tasks' hosts from.

Starting a Ray actor starts a Python process (about a second of CPU), so a job of 14 tasks
on a 2-core machine would spend seconds before its first record. Hosts outlive jobs instead:
a job borrows idle hosts (taking them from the nodes in turn, so its tasks spread over the
cluster), creates more with Ray's ``SPREAD`` strategy when there are too few, and returns
them when its tasks have run. A host whose task did not end cleanly is killed, not returned.

The pool belongs to this process's connection to the cluster: a new connection (after
``ray.shutdown``) starts a new pool.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Host", "HostPool", "host_pool"]

MAX_IDLE_HOSTS = 64  # idle hosts kept per pool; more are ended when returned


@dataclass(eq=False)
class Host:
    """A task host: its actor handle, the CPUs it reserves, and its node once known."""

    handle: Any
    num_cpus: float
    node_id: str | None = None


@dataclass
class HostPool:
    """Idle hosts by CPU reservation (see the module docstring)."""

    connection: str
    _idle: dict[float, list[Host]] = field(default_factory=lambda: defaultdict(list))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def acquire(self, n: int, num_cpus: float) -> list[Host]:
        """``n`` hosts reserving ``num_cpus`` each: idle ones first, spread over nodes."""
        with self._lock:
            idle = self._idle[num_cpus]
            by_node: dict[str | None, list[Host]] = defaultdict(list)
            for host in idle:
                by_node[host.node_id].append(host)
            taken: list[Host] = []
            while len(taken) < n and any(by_node.values()):
                for hosts in by_node.values():  # one from each node in turn
                    if hosts and len(taken) < n:
                        taken.append(hosts.pop())
            for host in taken:
                idle.remove(host)
        return taken + [self._create(num_cpus) for _ in range(n - len(taken))]

    def acquire_new(self, num_cpus: float) -> Host:
        """A newly started host (to replace one that died)."""
        return self._create(num_cpus)

    @staticmethod
    def _create(num_cpus: float) -> Host:
        import ray

        from sage.kernel.runtime.ray.task_actor import CONCURRENCY_GROUPS, DATA_THREADS, TaskHost

        actor_class: Any = ray.remote(concurrency_groups=CONCURRENCY_GROUPS)(TaskHost)
        handle = actor_class.options(
            num_cpus=num_cpus,
            scheduling_strategy="SPREAD",
            max_concurrency=DATA_THREADS,
            namespace="sage",
        ).remote()
        return Host(handle, num_cpus)

    def idle_count(self) -> int:
        """Hosts waiting for a task now."""
        with self._lock:
            return sum(len(hosts) for hosts in self._idle.values())

    def give_back(self, hosts: list[Host]) -> None:
        """Return idle hosts to the pool (beyond :data:`MAX_IDLE_HOSTS`, end them)."""
        extra: list[Host] = []
        with self._lock:
            count = sum(len(v) for v in self._idle.values())
            for host in hosts:
                if count < MAX_IDLE_HOSTS:
                    self._idle[host.num_cpus].append(host)
                    count += 1
                else:
                    extra.append(host)
        self.kill(extra)

    @staticmethod
    def kill(hosts: list[Host]) -> None:
        """End hosts now (their processes exit)."""
        import ray

        for host in hosts:
            ray.kill(host.handle, no_restart=True)


_pools: dict[str, HostPool] = {}
_pools_lock = threading.Lock()


def host_pool() -> HostPool:
    """The pool of this process's current connection to the cluster."""
    import ray

    context = ray.get_runtime_context()
    connection = f"{getattr(context, 'gcs_address', '')}/{context.get_job_id()}"
    with _pools_lock:
        pool = _pools.get(connection)
        if pool is None:
            _pools.clear()  # hosts of an earlier connection died with it
            pool = _pools[connection] = HostPool(connection)
        return pool
