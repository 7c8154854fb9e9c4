"""A bounded load test of the gateway: one of its instances killed and restarted mid-run.

Three engine processes (:mod:`~sage.benchmark.control_plane.cluster`): GPU-instance
simulators by default, or the real CPU engine serving SmolLM2 (``engine="cpu"``), and a
gateway process over them, all on 127.0.0.1. A closed loop of ``concurrency`` clients
(``httpx.AsyncClient``) sends ``requests`` chat completions, most non-streamed and a share
streamed. When the request at ``kill_at`` of the run is sent, one instance is SIGKILLed (its
process group), and as soon as it is gone it is started again on the same port; the gateway's
health checks bring it back into rotation. Every request must end in one of:

* ``ok``: 200 with a whole answer (a non-streamed completion with text, or a stream that
  reached ``data: [DONE]``);
* ``retryable``: 429 with ``Retry-After``, or 503 (no healthy instance): the client may send
  it again;
* ``stream cut``: a streamed request whose 200 answer had started and then broke, while it was
  in flight at the kill. Once its first byte reached the client the gateway cannot run it
  again elsewhere, so such a request may fail; a broken stream that was not in flight at the
  kill counts as lost.

Anything else is ``lost`` (another status, a connection error, an incomplete answer), or
``hung`` (no end within ``deadline_s``). The gateway's RSS is read (psutil) after a warm-up
and at the end, both with nothing in flight.

Example:
    >>> config = LoadConfig(requests=600, concurrency=32)
    >>> config.validate()
    >>> config.kill_index
    240
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any, Literal

import httpx
import psutil

from sage.benchmark.control_plane.cluster import EngineProcess, LocalCluster, default_model
from sage.benchmark.control_plane.config import LLMBenchmarkConfig
from sage.common.concurrency import run_loop
from sage.common.errors import ConfigError
from sage.common.stats import percentile
from sage.inference.engines.simulated import SimulatorProfile

__all__ = [
    "CATEGORIES",
    "DEFAULT_PROFILE",
    "ENGINES",
    "Failover",
    "LoadCluster",
    "LoadConfig",
    "LoadEngine",
    "LoadResult",
    "Outcome",
    "run_load",
]

DEFAULT_PROFILE: dict[str, Any] = {"decode_base_ms": 8.0, "decode_ms_per_seq": 0.5, "max_batch": 16}
"""16 sequences per batch, a decode step of 8 ms + 0.5 ms per sequence: with ``max_tokens``
24 a request takes about 0.4 s at full batch, so the clients' requests are mostly running on
the instances (or waiting in the gateway) rather than inside the client."""

LoadEngine = Literal["simulated", "cpu"]
ENGINES: tuple[LoadEngine, ...] = ("simulated", "cpu")
"""The engines a load run can put behind the gateway."""

CATEGORIES = ("ok", "retryable", "stream cut", "lost", "hung")
"""How a request ended (see the module docstring)."""

_MB = 2**20


@dataclass
class LoadConfig:
    """One load run.

    Attributes:
        requests: Requests measured (after the warm-up).
        concurrency: Clients sending at once (closed loop: each sends its next request as
            soon as its previous one ended).
        kill_at: Share of the measured requests sent when an instance is killed (``None``:
            no kill).
        stream_share: Share of requests streamed.
        max_tokens: ``max_tokens`` of every request (the simulator generates exactly that).
        warmup: Requests sent before the measured ones (and before the first RSS reading).
        deadline_s: A request not ended after this long counts as hung.
        instances: Engine processes behind the gateway.
        engine: ``"simulated"`` (GPU-instance simulators, :attr:`sim_profile`) or ``"cpu"``
            (the real CPU engine serving the bundled SmolLM2, batches of 8).
        policy: The gateway's scheduling policy.
        health_check_interval_s: The gateway's health-check interval.
        max_queued_requests: The gateway's bound on waiting requests (``None``: its default).
        sim_profile: ``SimulatorProfile`` fields of the engines.
        back_timeout_s: How long after the kill the restarted instance may take to be back in
            the gateway's rotation.
    """

    requests: int = 5000
    concurrency: int = 64
    kill_at: float | None = 0.4
    stream_share: float = 0.1
    max_tokens: int = 24
    warmup: int = 200
    deadline_s: float = 60.0
    instances: int = 3
    engine: LoadEngine = "simulated"
    policy: str = "fifo"
    health_check_interval_s: float = 0.5
    max_queued_requests: int | None = None
    sim_profile: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PROFILE))
    back_timeout_s: float = 30.0

    @property
    def kill_index(self) -> int | None:
        """The measured request whose sending triggers the kill."""
        if self.kill_at is None:
            return None
        return min(self.requests - 1, int(self.kill_at * self.requests))

    def streamed(self, index: int) -> bool:
        """Whether request ``index`` is streamed (spread evenly over the run)."""
        share = self.stream_share
        return math.floor((index + 1) * share) > math.floor(index * share)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad field."""
        for name in ("requests", "concurrency", "max_tokens", "instances"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"LoadConfig.{name}={value!r} must be a whole number >= 1")
        if self.warmup < 0:
            raise ConfigError(f"LoadConfig.warmup={self.warmup!r} must be 0 or more")
        if self.kill_at is not None and not 0 <= self.kill_at < 1:
            raise ConfigError(f"LoadConfig.kill_at={self.kill_at!r} must be in [0, 1), or None")
        if not 0 <= self.stream_share <= 1:
            raise ConfigError(f"LoadConfig.stream_share={self.stream_share!r} must be in [0, 1]")
        for name in ("deadline_s", "health_check_interval_s", "back_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"LoadConfig.{name}={getattr(self, name)!r} must be above 0")
        if self.engine not in ENGINES:
            raise ConfigError(
                f"LoadConfig.engine={self.engine!r} must be one of {', '.join(ENGINES)}"
            )
        if self.kill_at is not None and self.instances < 2:
            raise ConfigError(
                "LoadConfig.instances must be at least 2 with a kill (the others take over)"
            )
        SimulatorProfile.from_mapping(self.sim_profile)


@dataclass
class Outcome:
    """What happened to one request."""

    index: int
    stream: bool
    started: float
    ended: float
    status: int | None = None
    retry_after: str | None = None
    complete: bool = False
    timed_out: bool = False
    error: str = ""

    @property
    def latency_s(self) -> float:
        return self.ended - self.started

    def category(self, kill_time: float | None) -> str:
        """One of :data:`CATEGORIES`; ``kill_time``: when the instance was killed."""
        if self.timed_out:
            return "hung"
        if self.status == 200 and self.complete:
            return "ok"
        if (self.status == 429 and self.retry_after) or self.status == 503:
            return "retryable"
        if (
            self.stream
            and self.status == 200
            and kill_time is not None
            and self.started <= kill_time <= self.ended
        ):
            return "stream cut"
        return "lost"


@dataclass
class Failover:
    """The kill and the restart, in seconds from the start of the measured requests."""

    instance: str
    killed_s: float
    gone_s: float | None = None
    listening_s: float | None = None
    unhealthy_seen_s: float | None = None
    back_s: float | None = None
    requests_at_back: int | None = None
    error: str = ""

    def served_after_back(self, state: dict[str, Any]) -> int | None:
        """Requests the restarted instance finished after it was back, by the gateway's
        ``state`` (``/v1/management/metrics``) taken later."""
        if self.requests_at_back is None:
            return None
        mine = next(i for i in state["instances"] if i["instance_id"] == self.instance)
        return int(mine["requests"]) - self.requests_at_back


@dataclass
class LoadResult:
    """Everything measured in a run."""

    config: LoadConfig
    outcomes: list[Outcome]
    warmup_outcomes: list[Outcome]
    start: float
    seconds: float
    rss_start: int
    rss_warm: int
    rss_peak: int
    rss_end: int
    gateway_warm: dict[str, Any]
    gateway_end: dict[str, Any]
    failover: Failover | None
    kill_time: float | None

    def categories(self, streamed: bool | None = None) -> Counter[str]:
        """Requests per category (``streamed``: only those, or only the others)."""
        return Counter(
            o.category(self.kill_time)
            for o in self.outcomes
            if streamed is None or o.stream == streamed
        )

    def statuses(self) -> Counter[str]:
        """Requests per HTTP status (``error`` where none came)."""
        return Counter(
            str(o.status) if o.status is not None else ("timeout" if o.timed_out else "error")
            for o in self.outcomes
        )

    @property
    def lost(self) -> int:
        counts = self.categories()
        return counts["lost"] + counts["hung"]

    @property
    def accounted(self) -> bool:
        """Every request has exactly one outcome."""
        return len(self.outcomes) == self.config.requests and sorted(
            o.index for o in self.outcomes
        ) == list(range(self.config.requests))

    @property
    def rss_growth_mb(self) -> float:
        return (self.rss_end - self.rss_warm) / _MB

    @property
    def retries(self) -> int:
        """Requests the gateway sent again after their instance failed (measured part)."""
        return int(self.gateway_end.get("retries", 0)) - int(self.gateway_warm.get("retries", 0))

    @property
    def gateway_requests(self) -> int:
        """Requests the gateway received in the measured part."""
        return int(self.gateway_end["total_requests"]) - int(self.gateway_warm["total_requests"])

    def latency_ms(self, q: float) -> float:
        """The ``q`` quantile of the latency of the ``ok`` requests, in ms."""
        ok = sorted(o.latency_s for o in self.outcomes if o.category(self.kill_time) == "ok")
        return percentile(ok, q) * 1000

    @property
    def busy_seconds(self) -> float:
        """From the first measured request to the end of the last one that did not hang."""
        ends = [o.ended for o in self.outcomes if not o.timed_out]
        return max(ends, default=self.start) - self.start

    @property
    def throughput(self) -> float:
        """Requests that did not hang per second of :attr:`busy_seconds`."""
        done = sum(1 for o in self.outcomes if not o.timed_out)
        return done / self.busy_seconds if self.busy_seconds > 0 else 0.0

    def failed_dispatches(self) -> int:
        """Requests the gateway's instances failed in the measured part (each one is retried
        by the gateway unless its answer had started)."""

        def errors(state: dict[str, Any]) -> int:
            return sum(int(i["errors"]) for i in state["instances"])

        return errors(self.gateway_end) - errors(self.gateway_warm)

    def errors(self, limit: int = 5) -> list[str]:
        """A few of the requests that were lost or hung, described."""
        bad = [o for o in self.outcomes if o.category(self.kill_time) in ("lost", "hung")][:limit]
        return [
            f"#{o.index} ({'stream' if o.stream else 'plain'}): status {o.status}, "
            f"{'timed out' if o.timed_out else o.error or 'incomplete answer'}"
            for o in bad
        ]


class LoadCluster(LocalCluster):
    """Engine processes and a gateway over them, with the load test's gateway settings; one
    instance can be killed and started again on its port.

    Args:
        config: The run's settings.
        log_dir: Where each process's log and the gateway's config go.
    """

    def __init__(self, config: LoadConfig, log_dir: Path) -> None:
        bench = LLMBenchmarkConfig(
            policies=[config.policy],
            engine=config.engine,
            instances=config.instances,
            sim_profile=dict(config.sim_profile),
        )
        super().__init__(bench, config.policy, log_dir)
        self.load = config
        self.restarts = 0

    def _start_gateway(self) -> None:
        from sage.inference.deploy.processes import spawn_gateway

        gateway: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "scheduling_policy": self.policy,
            "llm_backends": [
                {
                    "host": "127.0.0.1",
                    "port": e.port,
                    "model_name": e.model,
                    "instance_type": "llm",
                    "max_concurrent_requests": e.max_concurrent,
                }
                for e in self.engines
            ],
            "health_check_interval_s": self.load.health_check_interval_s,
            # a backend that stops answering fails its requests well before a client gives up
            "request_timeout_s": self.load.deadline_s / 2,
        }
        if self.load.max_queued_requests is not None:
            gateway["max_queued_requests"] = self.load.max_queued_requests
        self.gateway_pid, self.gateway_port = spawn_gateway(
            gateway, self.log_dir / "gateway.json", self.log_dir / "gateway.log"
        )

    @property
    def base(self) -> str:
        """The gateway's address, ``http://127.0.0.1:PORT``."""
        return self.url.removesuffix("/v1")

    def kill_one(self) -> EngineProcess:
        """SIGKILL the first live engine's process group; the engine."""
        self.kill("llm")
        return next(e for e in self.engines if e.killed)

    def reap(self, engine: EngineProcess, timeout_s: float = 30.0) -> None:
        """Wait until the killed ``engine`` has exited (its port is free then)."""
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(engine.pid).wait(timeout_s)

    def restart(self, engine: EngineProcess) -> None:
        """Start ``engine`` again on its port; return once it listens."""
        self.restarts += 1
        started = self._start_engine(
            "llm", 0, port=engine.port, log_name=f"llm-restart-{self.restarts}.log"
        )
        engine.pid, engine.killed = started.pid, False

    def rss(self) -> int:
        """The gateway process's resident memory in bytes."""
        assert self.gateway_pid is not None
        return int(psutil.Process(self.gateway_pid).memory_info().rss)


class _Sender:
    """Sends requests over one ``httpx.AsyncClient`` and records their outcomes."""

    def __init__(self, client: httpx.AsyncClient, config: LoadConfig, model: str) -> None:
        self.client, self.config, self.model = client, config, model

    async def send(self, index: int, stream: bool, tag: str) -> Outcome:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": f"{tag} request {index}: tell me a story"}],
            "max_tokens": self.config.max_tokens,
            "stream": stream,
        }
        outcome = Outcome(index, stream, perf_counter(), 0.0)
        try:
            async with asyncio.timeout(self.config.deadline_s):
                if stream:
                    await self._stream(body, outcome)
                else:
                    response = await self.client.post("/v1/chat/completions", json=body)
                    self._head(response, outcome)
                    if response.status_code == 200:
                        answer = response.json()
                        text = answer["choices"][0]["message"]["content"]
                        outcome.complete = isinstance(text, str) and bool(text)
        except (TimeoutError, httpx.TimeoutException):
            outcome.timed_out = True
        except (httpx.HTTPError, ValueError, LookupError, TypeError) as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"
        outcome.ended = perf_counter()
        return outcome

    async def _stream(self, body: dict[str, Any], outcome: Outcome) -> None:
        async with self.client.stream("POST", "/v1/chat/completions", json=body) as response:
            self._head(response, outcome)
            if response.status_code != 200:
                await response.aread()
                return
            async for line in response.aiter_lines():
                if line.strip() == "data: [DONE]":
                    outcome.complete = True

    @staticmethod
    def _head(response: httpx.Response, outcome: Outcome) -> None:
        outcome.status = response.status_code
        outcome.retry_after = response.headers.get("retry-after")


async def _gateway_state(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/v1/management/metrics")
    response.raise_for_status()
    state: dict[str, Any] = response.json()
    return state


async def _failover(
    cluster: LoadCluster,
    engine: EngineProcess,
    client: httpx.AsyncClient,
    config: LoadConfig,
    failover: Failover,
    start: float,
) -> Failover:
    """Start the killed ``engine`` again on its port and watch the gateway take it back.

    The gateway's view is read in a loop of management requests, one at a time (no pause:
    each waits for the gateway's answer), until the restarted instance is healthy there or
    ``back_timeout_s`` passed.
    """
    restarted = asyncio.create_task(_restart(cluster, engine, failover, start))
    deadline = perf_counter() + config.back_timeout_s
    try:
        while perf_counter() < deadline:
            restarted_before = restarted.done()  # a state asked for after the restart
            state = await _gateway_state(client)
            mine = next(i for i in state["instances"] if i["instance_id"] == failover.instance)
            now = perf_counter() - start
            if not mine["healthy"] and failover.unhealthy_seen_s is None:
                failover.unhealthy_seen_s = now
            if restarted_before and mine["healthy"]:
                failover.back_s = now
                failover.requests_at_back = int(mine["requests"])
                break
            if restarted.done() and restarted.exception() is not None:
                break
        else:
            failover.error = f"not back in the gateway's rotation within {config.back_timeout_s} s"
    finally:
        await asyncio.wait([restarted])
    if (error := restarted.exception()) is not None:
        failover.error = f"restart failed: {error}"
    return failover


async def _restart(
    cluster: LoadCluster, engine: EngineProcess, failover: Failover, start: float
) -> None:
    await asyncio.to_thread(cluster.reap, engine)
    failover.gone_s = perf_counter() - start
    await asyncio.to_thread(cluster.restart, engine)
    failover.listening_s = perf_counter() - start


async def _drive(cluster: LoadCluster, config: LoadConfig) -> LoadResult:
    model = default_model(cluster.config, "llm")
    limits = httpx.Limits(
        max_connections=config.concurrency, max_keepalive_connections=config.concurrency
    )
    timeout = httpx.Timeout(config.deadline_s + 5)  # the deadline (asyncio) comes first
    async with (
        httpx.AsyncClient(base_url=cluster.base, limits=limits, timeout=timeout) as client,
        httpx.AsyncClient(base_url=cluster.base, timeout=timeout) as management,
    ):
        sender = _Sender(client, config, model)
        rss_start = cluster.rss()

        async def closed_loop(
            count: int,
            tag: str,
            on_send: Callable[[int], None] | None = None,
            on_done: Callable[[int], None] | None = None,
        ) -> list[Outcome]:
            outcomes: list[Outcome] = []
            next_index = 0

            async def client_loop() -> None:
                nonlocal next_index
                while next_index < count:
                    index, next_index = next_index, next_index + 1
                    if on_send is not None:
                        on_send(index)
                    outcomes.append(await sender.send(index, config.streamed(index), tag))
                    if on_done is not None:
                        on_done(len(outcomes))

            await asyncio.gather(*(client_loop() for _ in range(config.concurrency)))
            return outcomes

        warmup_outcomes = await closed_loop(config.warmup, "warm-up")
        rss_warm = cluster.rss()
        gateway_warm = await _gateway_state(management)

        start = perf_counter()
        kill_time: float | None = None
        failover_task: asyncio.Task[Failover] | None = None
        rss_peak = rss_warm
        sample_every = max(1, config.requests // 50)

        def on_send(index: int) -> None:
            nonlocal kill_time, failover_task
            if index == config.kill_index:  # no await from here to the kill: nothing ends
                engine = cluster.kill_one()
                kill_time = perf_counter()
                failover = Failover(f"127.0.0.1:{engine.port}", kill_time - start)
                failover_task = asyncio.create_task(
                    _failover(cluster, engine, management, config, failover, start)
                )

        def on_done(done: int) -> None:
            nonlocal rss_peak
            if done % sample_every == 0:
                rss_peak = max(rss_peak, cluster.rss())

        outcomes = await closed_loop(config.requests, "load", on_send, on_done)
        seconds = perf_counter() - start
        failover = await failover_task if failover_task is not None else None
        rss_end = cluster.rss()
        gateway_end = await _gateway_state(management)
    return LoadResult(
        config=config,
        outcomes=sorted(outcomes, key=lambda o: o.index),
        warmup_outcomes=warmup_outcomes,
        start=start,
        seconds=seconds,
        rss_start=rss_start,
        rss_warm=rss_warm,
        rss_peak=max(rss_peak, rss_end),
        rss_end=rss_end,
        gateway_warm=gateway_warm,
        gateway_end=gateway_end,
        failover=failover,
        kill_time=kill_time,
    )


def run_load(config: LoadConfig, log_dir: Path | None = None) -> LoadResult:
    """Start the cluster, run the load (warm-up, then the measured requests with the kill),
    stop the cluster; what was measured.

    Args:
        config: The run's settings.
        log_dir: Where the processes' logs go (``None``: a new temporary folder).

    Raises:
        ConfigError: a bad setting.
        SpawnError: a process did not start.
    """
    config.validate()
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="sage-gateway-load-"))
    cluster = LoadCluster(config, log_dir)
    cluster.start()
    try:
        return run_loop(_drive(cluster, config))
    finally:
        cluster.stop()
