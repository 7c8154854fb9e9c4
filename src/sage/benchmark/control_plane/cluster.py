"""The benchmark's own cluster: engine processes and a gateway over them, one run's worth.

Each engine and the gateway run as their own processes (as ``sage llm serve`` runs them,
through :func:`~sage.inference.deploy.processes.spawn`), so the load generator,
the gateway and the engines do not share an interpreter. A comparison starts a fresh
cluster per policy: no queue, latency history or connection is carried from one policy's
run into the next.

LLM instances get ``max_concurrent_requests`` equal to their engine's batch size, so
requests beyond what the engines run at once wait in the gateway, where the policy orders
them, rather than in an engine's own FIFO. With ``instance_costs`` each instance is
registered with its ``cost_per_1k_tokens``; with ``instance_speeds`` each simulator gets its
own, faster profile (:mod:`.fleet`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sage.benchmark.control_plane import fleet
from sage.benchmark.control_plane.config import (
    BenchmarkConfig,
    EmbeddingBenchmarkConfig,
    HybridBenchmarkConfig,
    Kind,
    LLMBenchmarkConfig,
)
from sage.inference.deploy.processes import spawn_engine, spawn_gateway, terminate

__all__ = ["EngineProcess", "LocalCluster", "default_model", "instance_counts"]

logger = logging.getLogger(__name__)

_MODELS: dict[str, dict[Kind, str]] = {
    "simulated": {"llm": "sim-llm", "embedding": "sim-embedding"},
    "stub": {"llm": "stub-llm", "embedding": "stub-embedding"},
    "cpu": {"llm": "smollm2", "embedding": "all-minilm-l6-v2"},
}
_CPU_MAX_BATCH = 8  # the CPU engine's default batch (serving.py --max-batch)
_STUB_MAX_CONCURRENT = 64


def default_model(config: BenchmarkConfig, kind: Kind) -> str:
    """The model its own instances of ``kind`` serve (as named in ``config`` or the default)."""
    named = None
    if kind == "llm" and isinstance(config, LLMBenchmarkConfig):
        named = config.llm_model
    elif kind == "embedding" and isinstance(config, EmbeddingBenchmarkConfig):
        named = config.embedding_model
    return named or _MODELS[config.engine][kind]


def instance_counts(config: BenchmarkConfig) -> dict[Kind, int]:
    """Own instances per kind: ``instances`` of the mode's kind (hybrid: LLM instances, and
    ``embedding_instances`` or as many embedding instances)."""
    if isinstance(config, HybridBenchmarkConfig):
        return {
            "llm": config.instances,
            "embedding": config.embedding_instances or config.instances,
        }
    return {config.kinds[0]: config.instances}


def max_concurrent(config: BenchmarkConfig, kind: Kind) -> int:
    """``max_concurrent_requests`` of its own instances of ``kind``."""
    if kind == "embedding":
        assert isinstance(config, EmbeddingBenchmarkConfig)
        return config.embedding_max_concurrent
    assert isinstance(config, LLMBenchmarkConfig)
    if config.llm_max_concurrent is not None:
        return config.llm_max_concurrent
    if config.engine == "simulated":
        from sage.inference.engines.simulated import SimulatorProfile

        return SimulatorProfile.from_mapping(config.sim_profile).max_batch
    return _CPU_MAX_BATCH if config.engine == "cpu" else _STUB_MAX_CONCURRENT


@dataclass
class EngineProcess:
    """One engine server process of the cluster."""

    kind: Kind
    pid: int
    port: int
    model: str
    max_concurrent: int
    killed: bool = False
    cost: float | None = None  # cost_per_1k_tokens registered with the gateway
    speed: float = 1.0  # times faster than the simulator profile

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}/v1"

    def describe(self) -> dict[str, Any]:
        """JSON-ready (``cost``, ``speed``: only when set)."""
        described: dict[str, Any] = {
            "kind": self.kind,
            "pid": self.pid,
            "port": self.port,
            "model": self.model,
            "max_concurrent": self.max_concurrent,
            "killed": self.killed,
        }
        if self.cost is not None:
            described["cost_per_1k_tokens"] = self.cost
        if self.speed != 1.0:
            described["speed"] = self.speed
        return described


class LocalCluster:
    """Engine processes and a gateway process for one run; a context manager.

    Args:
        config: Engine kind, instance counts, simulator profile, models.
        policy: The gateway's scheduling policy.
        routing: The gateway's routing policy.
        log_dir: Where each process's log and the gateway's config go.
        start_timeout_s: How long each process may take to listen (``None``: 60 s, or 600 s
            for the CPU engines, which load models).
    """

    def __init__(
        self,
        config: BenchmarkConfig,
        policy: str,
        log_dir: Path,
        start_timeout_s: float | None = None,
        routing: str = "least_loaded",
    ) -> None:
        self.config, self.policy, self.log_dir = config, policy, log_dir
        self.routing = routing
        self.timeout_s = start_timeout_s or (600.0 if config.engine == "cpu" else 60.0)
        self.engines: list[EngineProcess] = []
        self.gateway_pid: int | None = None
        self.gateway_port: int | None = None

    @property
    def url(self) -> str:
        """The gateway's base URL."""
        if self.gateway_port is None:
            raise RuntimeError("the cluster is not running; call start() first")
        return f"http://127.0.0.1:{self.gateway_port}/v1"

    @property
    def models(self) -> dict[str, str]:
        """The model served per kind."""
        return {e.kind: e.model for e in self.engines}

    def _engine_options(self, kind: Kind, speed: float = 1.0) -> list[str]:
        config = self.config
        options: list[str] = []
        profile = fleet.profile_fields(config.sim_profile, speed)
        if config.engine == "simulated" and profile:
            options += ["--sim-profile", json.dumps(profile)]
        if config.engine == "cpu" and kind == "llm":
            # the engines share this machine's cores: oversubscribed compute threads spin
            threads = max(1, (os.cpu_count() or 1) // instance_counts(config)["llm"])
            options += ["--max-batch", str(max_concurrent(config, "llm"))]
            options += ["--threads", str(threads)]
        return options

    def _start_engine(
        self, kind: Kind, number: int, *, port: int = 0, log_name: str | None = None
    ) -> EngineProcess:
        """Start engine ``number`` of ``kind`` (on ``port``; 0: a free one), logging to
        ``log_name`` (default ``{kind}-{number}.log``) in the cluster's log folder."""
        speed = fleet.speed_of(self.config, kind, number)
        pid, port, model = spawn_engine(
            kind,
            default_model(self.config, kind),
            self.config.engine,
            self.log_dir / (log_name or f"{kind}-{number}.log"),
            port=port,
            timeout_s=self.timeout_s,
            extra=self._engine_options(kind, speed),
        )
        cost = fleet.cost_of(self.config, kind, number)
        return EngineProcess(
            kind, pid, port, model, max_concurrent(self.config, kind), cost=cost, speed=speed
        )

    def start(self) -> LocalCluster:
        """Start the engines (in parallel), then the gateway; return when all listen.

        Raises:
            SpawnError: a process exited or did not listen in time (all are stopped).
        """
        self.log_dir.mkdir(parents=True, exist_ok=True)
        wanted = [(k, i) for k, n in instance_counts(self.config).items() for i in range(n)]
        try:
            with ThreadPoolExecutor(max(1, len(wanted))) as pool:
                futures = [pool.submit(self._start_engine, k, i) for k, i in wanted]
            self.engines = [f.result() for f in futures if f.exception() is None]
            for future in futures:  # the engines that did start are stopped below
                if (error := future.exception()) is not None:
                    raise error
            self._start_gateway()
        except BaseException:
            self.stop()
            raise
        logger.info(
            "cluster ready: gateway on %s, %s",
            self.gateway_port,
            ", ".join(f"{e.kind} on {e.port}" for e in self.engines),
        )
        return self

    def _start_gateway(self) -> None:
        def backends(kind: Kind) -> list[dict[str, Any]]:
            return [
                {
                    "host": "127.0.0.1",
                    "port": e.port,
                    "model_name": e.model,
                    "instance_type": kind,
                    "max_concurrent_requests": e.max_concurrent,
                    **({} if e.cost is None else {"cost_per_1k_tokens": e.cost}),
                }
                for e in self.engines
                if e.kind == kind
            ]

        gateway = {
            "host": "127.0.0.1",
            "port": 0,
            "scheduling_policy": self.policy,
            "routing_policy": self.routing,
            "llm_backends": backends("llm"),
            "embedding_backends": backends("embedding"),
        }
        if self.config.tenants:
            gateway["tenants"] = {t.name: t.gateway() for t in self.config.tenants}
            gateway["fair_share"] = self.config.fair_share
        self.gateway_pid, self.gateway_port = spawn_gateway(
            gateway, self.log_dir / "gateway.json", self.log_dir / "gateway.log"
        )

    def kill(self, kind: Kind) -> str:
        """SIGKILL the first live engine of ``kind`` (a crash, not a shutdown); what was done.

        Raises:
            LookupError: no live engine of that kind is left.
        """
        engine = next((e for e in self.engines if e.kind == kind and not e.killed), None)
        if engine is None:
            raise LookupError(f"no live {kind} instance left to kill")
        os.killpg(engine.pid, signal.SIGKILL)
        engine.killed = True
        logger.warning("killed %s instance on port %s (pid %s)", kind, engine.port, engine.pid)
        return f"SIGKILL {kind} instance 127.0.0.1:{engine.port} (pid {engine.pid})"

    def stop(self) -> None:
        """Stop the gateway, then every engine (idempotent; killed ones are reaped)."""
        pids = [self.gateway_pid] if self.gateway_pid is not None else []
        pids += [e.pid for e in self.engines]
        self.gateway_pid = self.gateway_port = None
        self.engines = []
        for pid in pids:
            terminate(pid)

    def describe(self) -> dict[str, Any]:
        """JSON-ready: engine kind, gateway port, each engine process."""
        return {
            "engine": self.config.engine,
            "policy": self.policy,
            "routing": self.routing,
            "gateway_port": self.gateway_port,
            "instances": [e.describe() for e in self.engines],
            "logs": str(self.log_dir),
        }

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
