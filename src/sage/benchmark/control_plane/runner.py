"""One benchmark, start to end: capacity, trace, a run per policy, figures.

How the offered rate is chosen (unless ``request_rate`` is given): ``load`` times the
estimated capacity of the instances for the configured mix.

* Each kind's capacity, in requests per second, for its own **simulated** instances comes
  from the simulator's timing model (``SimulatorProfile``): LLM, ``capacity_rps(mean prompt
  tokens, mean output tokens)`` (every instance running a full batch) per instance;
  embeddings, the texts per second of full ``embed_max_batch`` passes divided by the mean
  texts per request (what the hardware can do when requests are batched; one request per
  call does much less, and the report says how much). Instances of different speeds
  (``instance_speeds``) each count with their own profile: the kind's capacity is the sum.
* For the **CPU** or **stub** engines, and for a **running gateway** (``--control-plane``),
  it is measured by a short calibration: every LLM instance gets a full batch of mean-sized
  requests at once (``max_concurrent_requests`` of them), every embedding instance one
  request of 64 texts, and capacity = requests completed / seconds until the last answer.
  Own instances are calibrated directly (bypassing the gateway, so its latency history
  starts clean); a running gateway, through itself.
* The mix saturates when its first kind does: capacity = ``min(capacity_k / share_k)`` over
  the kinds (hybrid shares: ``llm_ratio`` and ``1 - llm_ratio``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar

from sage.benchmark.control_plane import fleet
from sage.benchmark.control_plane.cluster import LocalCluster, instance_counts
from sage.benchmark.control_plane.config import (
    BenchmarkConfig,
    EmbeddingBenchmarkConfig,
    HybridBenchmarkConfig,
    Kind,
    LLMBenchmarkConfig,
    tenant_key,
)
from sage.benchmark.control_plane.cost_served import RunCost, cost_served, gateway_metrics
from sage.benchmark.control_plane.driver import (
    RequestRecord,
    TimedAction,
    drive,
    management,
    measure_capacity,
)
from sage.benchmark.control_plane.metrics import RunMetrics, summarize
from sage.benchmark.control_plane.workload import (
    Trace,
    TraceRequest,
    build_trace,
    warmup_requests,
)
from sage.common.concurrency import run_loop
from sage.common.errors import ConfigError, GatewayError
from sage.inference.config import parse_policies

__all__ = [
    "BenchmarkResult",
    "Capacity",
    "Observer",
    "PolicyRun",
    "run_benchmark",
    "simulated_capacity",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_CALIBRATION_TEXTS = 64


class Observer(Protocol):
    """What a front end (the CLI's progress bar) is told while a benchmark runs."""

    def status(self, message: str) -> None:
        """A step begins (starting processes, calibrating...)."""

    def policy_started(self, policy: str, total: int) -> None:
        """The trace starts for ``policy``: ``total`` requests."""

    def request_done(self, record: RequestRecord) -> None:
        """A request ended."""

    def policy_finished(self, run: PolicyRun) -> None:
        """A policy's run ended."""


class _Silent:
    def status(self, message: str) -> None:
        logger.info("%s", message)

    def policy_started(self, policy: str, total: int) -> None:
        pass

    def request_done(self, record: RequestRecord) -> None:
        pass

    def policy_finished(self, run: PolicyRun) -> None:
        pass


@dataclass
class Capacity:
    """Estimated capacity of the instances, in requests per second.

    Attributes:
        per_kind: What each kind's instances complete per second at most.
        total_rps: Requests per second of the configured mix at which a kind saturates.
        source: ``simulator profile`` or ``calibration``.
        notes: Further figures (the unbatched embedding ceiling, say).
        inputs: What the estimate was computed from (the simulator's whole profile, the
            mean lengths), for the JSON report.
    """

    per_kind: dict[str, float]
    total_rps: float
    source: str
    notes: list[str] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class PolicyRun:
    """One policy's run.

    Attributes:
        policy: The name as given (``hybrid_slo``).
        active_policy: What the gateway said it uses.
        records: Every measured request.
        metrics: The figures.
        events: Timed actions that ran (``{"at_s", "event"}``).
        instances: The gateway's instance states after the run.
        cluster: Its own processes (empty for a running gateway).
        cost: The cost served during the trace (``None``: no instance declares a cost).
    """

    policy: str
    active_policy: str
    records: list[RequestRecord]
    metrics: RunMetrics
    events: list[dict[str, Any]] = field(default_factory=list)
    instances: list[dict[str, Any]] = field(default_factory=list)
    cluster: dict[str, Any] = field(default_factory=dict)
    cost: RunCost | None = None


@dataclass
class BenchmarkResult:
    """A whole benchmark: its configuration, the offered load and every policy's run."""

    command: Literal["run", "compare"]
    config: BenchmarkConfig
    rate: float
    capacity: Capacity | None
    trace_requests: int
    runs: list[PolicyRun]
    started_at: str
    models: dict[str, str]

    @property
    def load(self) -> float | None:
        """Offered rate over estimated capacity (``None`` without an estimate)."""
        return self.rate / self.capacity.total_rps if self.capacity else None

    @property
    def name(self) -> str:
        """Base name of its output files."""
        stamp = self.started_at.replace(":", "").replace("-", "")[:15]
        policies = "-".join(run.policy for run in self.runs) or "none"
        return f"{self.command}-{self.config.mode}-{policies}-{stamp}"


def _shares(config: BenchmarkConfig) -> dict[Kind, float]:
    if isinstance(config, HybridBenchmarkConfig):
        return {"llm": config.llm_ratio, "embedding": 1.0 - config.llm_ratio}
    return {config.kinds[0]: 1.0}


def _mix(config: BenchmarkConfig, per_kind: dict[str, float]) -> float:
    """Requests/s of the mix at which its first kind saturates."""
    limits = [per_kind[k] / share for k, share in _shares(config).items() if share > 0]
    return min(limits) if limits else math.inf


def simulated_capacity(config: BenchmarkConfig) -> Capacity:
    """The capacity of its own simulated instances, from the simulator's timing model."""
    from sage.inference.engines.simulated import SimulatorProfile

    profile = SimulatorProfile.from_mapping(config.sim_profile)
    counts = instance_counts(config)
    per_kind: dict[str, float] = {}
    notes: list[str] = []
    inputs: dict[str, Any] = {"profile": dataclasses.asdict(profile), "instances": counts}
    if config.instance_speeds is not None:
        inputs["instance_speeds"] = config.instance_speeds

    def each(kind: Kind) -> list[SimulatorProfile]:  # every own instance's own profile
        speeds = [fleet.speed_of(config, kind, i) for i in range(counts[kind])]
        return [fleet.scaled_profile(profile, s) if s != 1 else profile for s in speeds]

    if "llm" in counts:
        assert isinstance(config, LLMBenchmarkConfig)
        prompt, output = config.prompt_tokens.expected(), config.output_tokens.expected()
        inputs.update(mean_prompt_tokens=prompt, mean_output_tokens=output)
        per_kind["llm"] = sum(p.capacity_rps(prompt, output) for p in each("llm"))
    if "embedding" in counts:
        assert isinstance(config, EmbeddingBenchmarkConfig)
        texts = config.texts_per_request.expected()
        inputs["mean_texts_per_request"] = texts
        batch = profile.embed_max_batch
        per_kind["embedding"] = sum(batch / p.embed_s(batch) / texts for p in each("embedding"))
        unbatched = sum(p.embed_capacity_rps(texts) for p in each("embedding"))
        notes.append(
            f"embedding instances answer at most {unbatched:,.1f} req/s when each request is its "
            f"own call (unbatched), {per_kind['embedding']:,.1f} req/s in full passes of "
            f"{batch} texts"
        )
    return Capacity(per_kind, _mix(config, per_kind), "simulator profile", notes, inputs)


def _calibration_requests(config: BenchmarkConfig, kind: Kind, count: int) -> list[TraceRequest]:
    cls = config.classes[-1]
    head = (0, 0.0, kind, cls.name, cls.priority, cls.slo_ms)
    if kind == "llm":
        assert isinstance(config, LLMBenchmarkConfig)
        prompt = round(config.prompt_tokens.expected())
        out = max(1, round(config.output_tokens.expected()))
        return [TraceRequest(*head, prompt, max_tokens=out) for _ in range(count)]
    assert isinstance(config, EmbeddingBenchmarkConfig)
    words = round(config.text_tokens.expected())
    return [TraceRequest(*head, words, texts=_CALIBRATION_TEXTS) for _ in range(count)]


async def _calibrate(
    config: BenchmarkConfig, targets: dict[Kind, list[tuple[str, int]]], models: dict[str, str]
) -> Capacity:
    """Measure each kind's capacity: ``targets[kind]`` = (URL, slots) per instance."""
    per_kind: dict[str, float] = {}
    for kind, urls in targets.items():
        if kind == "llm":
            jobs = [(url, _calibration_requests(config, kind, slots)) for url, slots in urls]
            per_kind[kind] = await measure_capacity(jobs, models, config.timeout_seconds)
        else:
            assert isinstance(config, EmbeddingBenchmarkConfig)
            jobs = [(url, _calibration_requests(config, kind, 1)) for url, _ in urls]
            calls = await measure_capacity(jobs, models, config.timeout_seconds)
            per_kind[kind] = calls * _CALIBRATION_TEXTS / config.texts_per_request.expected()
    return Capacity(per_kind, _mix(config, per_kind), "calibration")


async def _gateway_instances(url: str) -> list[dict[str, Any]]:
    """A running gateway's instances (``--control-plane``: never with tenants, so no key)."""
    try:
        answer = await management(url, "GET", "/management/instances")
    except GatewayError as exc:
        logger.warning("could not read the gateway's instances: %s", exc)
        return []
    return list(answer.get("instances", []))


async def _discover(config: BenchmarkConfig, url: str) -> tuple[dict[str, str], dict[Kind, int]]:
    """A running gateway's model per kind (unless configured) and request slots per kind.

    Raises:
        ConfigError: it serves no healthy instance of a kind the mode needs.
    """
    instances = [i for i in await _gateway_instances(url) if i.get("healthy", True)]
    models: dict[str, str] = {}
    slots: dict[Kind, int] = {}
    for kind in config.kinds:
        if _shares(config)[kind] == 0:
            continue
        of_kind = [i for i in instances if i.get("instance_type") == kind]
        named = getattr(config, f"{kind}_model", None)
        model = named or (of_kind[0]["model_name"] if of_kind else None)
        if model is None:
            raise ConfigError(
                f"the gateway at {url} has no healthy {kind} instance; register one, or run "
                f"without --control-plane to start the benchmark's own"
            )
        models[kind] = model
        chosen = [i for i in of_kind if i["model_name"] == model]
        slots[kind] = sum(int(i.get("max_concurrent_requests", 1)) for i in chosen) or 1
    return models, slots


class _Benchmark:
    """The state shared by the policies' runs of one benchmark."""

    def __init__(self, config: BenchmarkConfig, observer: Observer, started: datetime) -> None:
        self.config, self.observer = config, observer
        self.stamp = started.strftime("%Y%m%d-%H%M%S")
        self.trace: Trace | None = None
        self.capacity: Capacity | None = None
        self.models: dict[str, str] = {}
        # with tenants, the gateway wants a key for its management routes too
        self.api_key = tenant_key(config.tenants[0].name) if config.tenants else None
        if config.engine == "simulated" and config.control_plane_url is None:
            self.capacity = simulated_capacity(config)

    def rate(self) -> float:
        config = self.config
        if config.request_rate is not None:
            return config.request_rate
        assert self.capacity is not None
        return config.load * self.capacity.total_rps

    async def prepare(self, url: str, cluster: LocalCluster | None) -> None:
        """Models, capacity (calibrated if need be) and the trace, once per benchmark."""
        if cluster is not None:
            self.models = cluster.models
            engines = [e for e in cluster.engines if not e.killed]
            targets: dict[Kind, list[tuple[str, int]]] = {}
            for e in engines:
                targets.setdefault(e.kind, []).append((e.url, e.max_concurrent))
        else:
            self.models, slots = await _discover(self.config, url)
            targets = {kind: [(url, n)] for kind, n in slots.items()}
        if self.capacity is None and self.config.request_rate is None:
            self.observer.status("calibrating: one full batch per instance")
            self.capacity = await _calibrate(self.config, targets, self.models)
        rate = self.rate()
        self.trace = build_trace(self.config, rate)
        if not self.trace.requests:
            raise ConfigError(
                f"the trace is empty: duration_s={self.config.duration_s} at {rate:.3g} req/s; "
                "run longer or faster"
            )

    async def run_policy(self, policy: str, url: str, cluster: LocalCluster | None) -> PolicyRun:
        """Set the policy (a running gateway), warm up, send the trace, read the state."""
        config = self.config
        scheduling, routing = parse_policies(policy)
        if cluster is None:
            await management(
                url,
                "PUT",
                "/management/policy",
                {"policy": scheduling.value, "routing": routing.value},
            )
        if self.trace is None:
            await self.prepare(url, cluster)
        assert self.trace is not None
        active = await management(url, "GET", "/management/policy", api_key=self.api_key)
        actions = []
        if cluster is not None and config.kill_instance_at is not None:
            kind: Kind = config.kill_kind or ("embedding" if config.mode == "embedding" else "llm")
            actions.append(
                TimedAction(
                    config.kill_instance_at, f"kill a {kind} instance", lambda: cluster.kill(kind)
                )
            )
        self.observer.policy_started(policy, len(self.trace.requests))
        warmed: dict[str, Any] = {}  # the gateway's figures the trace's cost counts from

        async def after_warmup() -> None:
            warmed.update(await gateway_metrics(url, self.api_key))

        result = await drive(
            url,
            self.trace.requests,
            self.models,
            stream=isinstance(config, LLMBenchmarkConfig) and config.stream,
            timeout_s=config.timeout_seconds,
            warmup=warmup_requests(config),
            on_done=self.observer.request_done,
            actions=actions,
            after_warmup=after_warmup,
        )
        metrics = summarize(result.records)
        served = await gateway_metrics(url, self.api_key)  # its instances' states too
        return PolicyRun(
            policy=policy,
            active_policy=str(active.get("active_policy") or active.get("policy")),
            records=result.records,
            metrics=metrics,
            events=result.events,
            instances=list(served.get("instances") or ()),
            cluster=cluster.describe() if cluster is not None else {},
            cost=cost_served(warmed, served, metrics.overall.completed),
        )

    def one(self, policy: str) -> PolicyRun:
        """A policy's run: on a fresh cluster of its own, or on the running gateway."""
        config = self.config
        if config.control_plane_url is not None:
            return run_loop(self.run_policy(policy, config.control_plane_url, None))
        log_dir = config.output_dir / "logs" / f"{self.stamp}-{policy}"
        self.observer.status(f"{policy}: starting the gateway and {config.engine} instances")
        scheduling, routing = parse_policies(policy)
        with LocalCluster(config, scheduling.value, log_dir, routing=routing.value) as cluster:
            return run_loop(self.run_policy(policy, cluster.url, cluster))


def run_benchmark(
    config: BenchmarkConfig,
    command: Literal["run", "compare"] = "run",
    observer: Observer | None = None,
) -> BenchmarkResult:
    """Run every policy of ``config`` on the same trace; the figures of each.

    Raises:
        ConfigError: the configuration is invalid (see :meth:`BenchmarkConfig.validate`).
        GatewayError: the gateway failed the warm-up or a management call.
        SpawnError: an own process did not start.
    """
    config.validate()
    observer = observer or _Silent()
    started = datetime.now().astimezone()
    bench = _Benchmark(config, observer, started)
    runs: list[PolicyRun] = []
    for policy in config.policies:
        run = bench.one(policy)
        observer.policy_finished(run)
        runs.append(run)
    assert bench.trace is not None
    return BenchmarkResult(
        command=command,
        config=config,
        rate=bench.trace.rate,
        capacity=bench.capacity,
        trace_requests=len(bench.trace.requests),
        runs=runs,
        started_at=started.isoformat(timespec="seconds"),
        models=bench.models,
    )
