"""What a control-plane benchmark runs: the workload, the load, the cluster, the outputs.

One dataclass per mode, all validated the same way (:meth:`BenchmarkConfig.validate` raises a
:class:`~sage.common.errors.ConfigError` naming the field and the fix):

* :class:`LLMBenchmarkConfig` — chat requests (prompt and output lengths, streaming for TTFT);
* :class:`EmbeddingBenchmarkConfig` — embedding requests of one or more texts;
* :class:`HybridBenchmarkConfig` — both, ``llm_ratio`` of them chat requests.

Example:
    >>> config = LLMBenchmarkConfig(policies=["fifo", "slo_aware"], num_requests=200)
    >>> config.validate()
    >>> [c.name for c in config.classes]
    ['interactive', 'batch']
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

from sage.benchmark.control_plane import fleet
from sage.common.errors import ConfigError
from sage.inference.config import parse_policies

__all__ = [
    "ARRIVAL_PATTERNS",
    "DEFAULT_CLASSES",
    "ENGINES",
    "MODES",
    "BenchmarkConfig",
    "EmbeddingBenchmarkConfig",
    "HybridBenchmarkConfig",
    "LLMBenchmarkConfig",
    "LengthDistribution",
    "RequestClass",
    "TenantLoad",
    "config_for_mode",
    "tenant_key",
]

Mode = Literal["llm", "embedding", "hybrid"]
Kind = Literal["llm", "embedding"]
ArrivalPattern = Literal["poisson", "bursty", "uniform"]
Engine = Literal["simulated", "cpu", "stub"]
Shape = Literal["fixed", "uniform", "lognormal", "exponential"]

MODES: tuple[Mode, ...] = ("llm", "embedding", "hybrid")
ARRIVAL_PATTERNS: tuple[ArrivalPattern, ...] = ("poisson", "bursty", "uniform")
ENGINES: tuple[Engine, ...] = ("simulated", "cpu", "stub")
SHAPES: tuple[Shape, ...] = ("fixed", "uniform", "lognormal", "exponential")


@dataclass(frozen=True)
class RequestClass:
    """A class of requests: how urgent they are and what latency they are promised.

    Attributes:
        name: Shown in reports (``interactive``, ``batch``).
        priority: Sent as the request's ``priority`` (lower is more urgent, 0 the most).
        slo_ms: Sent as ``slo_ms``; a request meets its SLO when it completes within it
            (end to end, from its scheduled arrival).
        share: Relative frequency in the workload (shares are normalised to sum to 1).
    """

    name: str
    priority: int = 0
    slo_ms: float = 2000.0
    share: float = 1.0

    @classmethod
    def parse_list(cls, spec: str) -> list[RequestClass]:
        """Classes from ``"name:priority:slo_ms:share,..."`` (the CLI's ``--classes``).

        Raises:
            ConfigError: a part is not ``name:priority:slo_ms:share`` with numbers.
        """
        classes = []
        for part in spec.split(","):
            pieces = part.strip().split(":")
            try:
                name, priority, slo_ms, share = pieces
                classes.append(cls(name.strip(), int(priority), float(slo_ms), float(share)))
            except ValueError:
                raise ConfigError(
                    f"request class {part.strip()!r} is invalid; write name:priority:slo_ms:share, "
                    "e.g. --classes interactive:0:2000:0.3,batch:5:30000:0.7"
                ) from None
        return classes


DEFAULT_CLASSES: tuple[RequestClass, ...] = (
    RequestClass("interactive", priority=0, slo_ms=2_000.0, share=0.3),
    RequestClass("batch", priority=5, slo_ms=30_000.0, share=0.7),
)
"""Two classes: 30% interactive (priority 0, SLO 2 s), 70% batch (priority 5, SLO 30 s)."""


def tenant_key(name: str) -> str:
    """The API key the benchmark gives tenant ``name`` in its gateway (and sends as it)."""
    return f"sage-cp-bench-{name}"


@dataclass(frozen=True)
class TenantLoad:
    """A tenant of the workload: its share of the offered load, and its settings in the
    benchmark's gateway (``UnifiedServerConfig.tenants``).

    Each tenant's requests are drawn from their own random streams (seeded by the seed and
    the tenant's name) at its share of the offered rate, so a tenant's requests are the same
    whatever the other tenants send: "light alone" and "light beside heavy" are comparable.

    Attributes:
        name: The tenant (its requests carry the key :func:`tenant_key` of it).
        weight: Its fair-share weight in the gateway.
        share: Its relative share of the offered rate (shares need not add up to 1).
        rpm: Its requests-per-minute limit in the gateway (``None``: none).
        tpm: Its tokens-per-minute limit (``None``: none).
    """

    name: str
    weight: float = 1.0
    share: float = 1.0
    rpm: int | None = None
    tpm: int | None = None

    @classmethod
    def parse_list(cls, spec: str) -> list[TenantLoad]:
        """Tenants from ``"name:weight:share,..."`` (the CLI's ``--tenants``).

        Raises:
            ConfigError: a part is not ``name:weight:share`` with numbers.
        """
        tenants = []
        for part in spec.split(","):
            try:
                name, weight, share = part.strip().split(":")
                tenants.append(cls(name.strip(), float(weight), float(share)))
            except ValueError:
                raise ConfigError(
                    f"tenant {part.strip()!r} is invalid; write name:weight:share, e.g. "
                    "--tenants light:1:1,heavy:1:10 (heavy offers 10x light's load)"
                ) from None
        return tenants

    def gateway(self) -> dict[str, Any]:
        """Its entry in the gateway's ``tenants``."""
        return {
            "api_keys": [tenant_key(self.name)],
            "weight": self.weight,
            "rpm": self.rpm,
            "tpm": self.tpm,
        }


@dataclass(frozen=True)
class LengthDistribution:
    """A distribution of whole numbers (token counts, texts per request) around a mean.

    Every shape is given by its mean and a relative spread, then clipped to
    ``[minimum, maximum]``:

    * ``fixed`` — always ``round(mean)``;
    * ``uniform`` — uniform on ``mean * (1 ± spread)``;
    * ``lognormal`` — log-normal with that mean and ``sigma = spread`` (long right tail, as
      prompt and answer lengths of chat traffic have);
    * ``exponential`` — exponential with that mean (``spread`` unused).

    Attributes:
        mean: Mean before clipping.
        shape: One of the shapes above.
        spread: Relative spread (see the shapes).
        minimum: Smallest value (at least 1).
        maximum: Largest value (``None``: twice the mean).
    """

    mean: float
    shape: Shape = "lognormal"
    spread: float = 0.5
    minimum: int = 1
    maximum: int | None = None

    @classmethod
    def around(
        cls, mean: float, shape: Shape = "lognormal", spread: float = 0.5
    ) -> LengthDistribution:
        """``mean`` with the usual bounds: from an eighth of the mean (at least 1) to twice it."""
        return cls(mean, shape, spread, max(1, round(mean / 8)), max(1, round(2 * mean)))

    @property
    def upper(self) -> int:
        """The largest value drawn."""
        return self.maximum if self.maximum is not None else max(self.minimum, round(2 * self.mean))

    def _clip(self, value: float) -> int:
        return min(self.upper, max(self.minimum, round(value)))

    def _quantile(self, q: float) -> float:
        """The unclipped distribution's ``q`` quantile (0 < q < 1)."""
        if self.shape == "fixed":
            return self.mean
        if self.shape == "uniform":
            return self.mean * (1 - self.spread + 2 * self.spread * q)
        if self.shape == "exponential":
            return -self.mean * math.log1p(-q)
        mu = math.log(self.mean) - self.spread**2 / 2  # lognormal: E[X] = exp(mu + s^2 / 2)
        return math.exp(statistics.NormalDist(mu, self.spread).inv_cdf(q))

    def sample(self, rng: random.Random) -> int:
        """One value, drawn with ``rng`` (so a seeded ``rng`` gives the same sequence)."""
        return self._clip(self._quantile(min(max(rng.random(), 1e-12), 1 - 1e-12)))

    def expected(self) -> float:
        """The mean of the clipped, rounded values (what the workload averages).

        Computed over 2,000 evenly spaced quantiles: deterministic, no random draws.
        """
        n = 2000
        return sum(self._clip(self._quantile((i + 0.5) / n)) for i in range(n)) / n

    def check(self, owner: str) -> None:
        """Raise :class:`ConfigError` naming ``owner`` (``Config.field``) if out of range."""
        if self.shape not in SHAPES:
            raise ConfigError(f"{owner}.shape={self.shape!r} is unknown; use one of {SHAPES}")
        if not (math.isfinite(self.mean) and self.mean >= 1):
            raise ConfigError(f"{owner}.mean={self.mean!r} must be a number of at least 1")
        if not (math.isfinite(self.spread) and self.spread >= 0) or (
            self.shape == "lognormal" and self.spread == 0
        ):
            raise ConfigError(
                f"{owner}.spread={self.spread!r} must be more than 0 (0 is allowed for "
                "uniform); use e.g. 0.5, or shape='fixed' for no spread"
            )
        if self.minimum < 1 or self.upper < self.minimum:
            raise ConfigError(
                f"{owner}: minimum={self.minimum} and maximum={self.upper} must satisfy "
                "1 <= minimum <= maximum"
            )


def _positive(owner: str, name: str, value: float | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{owner}.{name}={value!r} must be a number above 0")


@dataclass
class BenchmarkConfig:
    """What every mode shares: policies, load, arrivals, classes, cluster, outputs.

    Attributes:
        policies: Policies to run (``run``: one; ``compare``: several): a scheduling policy
            (``fifo``, ``priority``, ``slo_aware``, ``hybrid``, ``adaptive``,
            ``cost_optimized``), a routing policy (``prefix_aware``), or both
            (``slo_aware+prefix_aware``), by the names
            :func:`~sage.inference.config.parse_policies` accepts. Under
            ``cost_optimized`` own instances without ``instance_costs`` are placed on the
            least loaded instance expected to meet the SLO.
        num_requests: Requests in the measured trace (unless ``duration_s`` is set).
        duration_s: Length of the trace in seconds instead of a request count.
        request_rate: Offered requests per second (all kinds together); ``None``: ``load``
            times the estimated capacity.
        load: Offered load as a multiple of the estimated capacity (used without
            ``request_rate``; above 1 the queues grow and the policy decides who waits).
        arrival_pattern: ``poisson`` (exponential gaps), ``bursty`` (Poisson during "on"
            periods of ``burst_on_s``, nothing during "off" periods of ``burst_off_s``, same
            mean rate) or ``uniform`` (evenly spaced).
        burst_on_s: Length of a burst (``bursty``).
        burst_off_s: Quiet time between bursts (``bursty``).
        classes: Request classes (priority, SLO, share).
        seed: Seed of the trace: equal seeds give equal traces, for every policy.
        warmup_requests: Requests sent (and awaited) before the trace, not measured.
        timeout_seconds: Longest a request may take before it counts as failed.
        control_plane_url: A running gateway to measure; ``None`` starts one of its own
            over ``instances`` engine processes (fresh for each policy).
        engine: Engines of its own instances: ``simulated`` (GPU-instance simulators timed by
            ``sim_profile``), ``cpu`` (the real CPU models) or ``stub`` (answers at once).
        instances: Instances of the mode's kind (hybrid: LLM instances).
        sim_profile: ``SimulatorProfile`` fields that differ from its defaults.
        instance_costs: ``cost_per_1k_tokens`` of each own instance of the mode's kind
            (hybrid: LLM instances), as many as ``instances``; ``None``: none declared
            (:mod:`.fleet`). The reports then show the cost served.
        instance_speeds: How many times faster than ``sim_profile`` each own simulated
            instance runs, as many as ``instances``; ``None``: all as ``sim_profile``.
        kill_instance_at: Seconds into the trace at which one of its own instances is
            killed (SIGKILL), to measure failover.
        kill_kind: Which kind of instance to kill (default: the mode's; hybrid: ``llm``).
        tenants: Tenants sending the trace (:class:`TenantLoad`), each its share of the
            offered rate with its own API key; empty: one anonymous client. Needs the
            benchmark's own gateway.
        fair_share: With ``tenants``: the gateway serves them by weighted fair share (off:
            the policy's order across all of them, for comparison).
        output_dir: Where JSON, PNG and HTML reports go.
    """

    mode: ClassVar[Mode] = "llm"

    policies: list[str] = field(default_factory=lambda: ["fifo"])
    num_requests: int = 100
    duration_s: float | None = None
    request_rate: float | None = None
    load: float = 1.2
    arrival_pattern: ArrivalPattern = "poisson"
    burst_on_s: float = 2.0
    burst_off_s: float = 2.0
    classes: list[RequestClass] = field(default_factory=lambda: list(DEFAULT_CLASSES))
    seed: int = 42
    warmup_requests: int = 4
    timeout_seconds: float = 600.0
    control_plane_url: str | None = None
    engine: Engine = "simulated"
    instances: int = 2
    sim_profile: dict[str, Any] = field(default_factory=dict)
    instance_costs: list[float] | None = None
    instance_speeds: list[float] | None = None
    kill_instance_at: float | None = None
    kill_kind: Kind | None = None
    tenants: list[TenantLoad] = field(default_factory=list)
    fair_share: bool = True
    output_dir: Path = field(default_factory=lambda: Path("cp_bench_results"))

    @property
    def kinds(self) -> tuple[Kind, ...]:
        """The request kinds this mode sends."""
        return ("llm",) if self.mode == "llm" else ("embedding",)

    def validate(self) -> None:
        """Check every field.

        Raises:
            ConfigError: the first bad field, named with its value and what to use instead
                (an unknown policy lists the valid names).
        """
        owner = type(self).__name__
        if not self.policies:
            raise ConfigError(f"{owner}.policies is empty; name at least one, e.g. ['fifo']")
        for name in self.policies:
            parse_policies(name)
        if self.duration_s is None and (
            isinstance(self.num_requests, bool) or self.num_requests < 1
        ):
            raise ConfigError(f"{owner}.num_requests={self.num_requests!r} must be at least 1")
        _positive(owner, "duration_s", self.duration_s, allow_none=True)
        _positive(owner, "request_rate", self.request_rate, allow_none=True)
        _positive(owner, "load", self.load)
        _positive(owner, "timeout_seconds", self.timeout_seconds)
        if self.arrival_pattern not in ARRIVAL_PATTERNS:
            raise ConfigError(
                f"{owner}.arrival_pattern={self.arrival_pattern!r} is unknown; "
                f"use one of {', '.join(ARRIVAL_PATTERNS)}"
            )
        if self.arrival_pattern == "bursty":
            _positive(owner, "burst_on_s", self.burst_on_s)
            if not (math.isfinite(self.burst_off_s) and self.burst_off_s >= 0):
                raise ConfigError(f"{owner}.burst_off_s={self.burst_off_s!r} must be 0 or more")
        self._check_classes(owner)
        self._check_tenants(owner)
        if self.warmup_requests < 0:
            raise ConfigError(f"{owner}.warmup_requests={self.warmup_requests} must be 0 or more")
        if self.engine not in ENGINES:
            raise ConfigError(
                f"{owner}.engine={self.engine!r} is unknown; use one of {', '.join(ENGINES)}"
            )
        if self.instances < 1:
            raise ConfigError(f"{owner}.instances={self.instances} must be at least 1")
        if self.control_plane_url is not None:
            if not self.control_plane_url.startswith(("http://", "https://")):
                raise ConfigError(
                    f"{owner}.control_plane_url={self.control_plane_url!r} must be an http(s) "
                    "URL, e.g. http://127.0.0.1:8000"
                )
            if self.kill_instance_at is not None:
                raise ConfigError(
                    f"{owner}.kill_instance_at only works on the benchmark's own instances; "
                    "drop control_plane_url (or kill_instance_at)"
                )
        if self.kill_instance_at is not None and not (
            math.isfinite(self.kill_instance_at) and self.kill_instance_at >= 0
        ):
            raise ConfigError(f"{owner}.kill_instance_at={self.kill_instance_at!r} must be >= 0")
        if self.kill_kind is not None and self.kill_kind not in self.kinds:
            raise ConfigError(
                f"{owner}.kill_kind={self.kill_kind!r} has no instances in {self.mode} mode; "
                f"use one of {', '.join(self.kinds)}"
            )
        if self.engine == "simulated" and self.control_plane_url is None:
            from sage.inference.engines.simulated import SimulatorProfile

            SimulatorProfile.from_mapping(self.sim_profile)  # raises naming the bad field
        fleet.check(self, owner)
        self._validate_mode(owner)

    def _check_tenants(self, owner: str) -> None:
        if not self.tenants:
            return
        if self.control_plane_url is not None:
            raise ConfigError(
                f"{owner}.tenants need the benchmark's own gateway (it gives each tenant its "
                "key); drop control_plane_url, or the tenants"
            )
        names = [t.name for t in self.tenants]
        if len(set(names)) != len(names):
            raise ConfigError(f"{owner}.tenants: names must be unique, got {names}")
        from sage.inference.config import TenantConfig

        for t in self.tenants:
            try:  # the gateway's own check: name, weight, limits
                TenantConfig.of(t.name, t.gateway())
            except ConfigError as exc:
                raise ConfigError(f"{owner}: {exc}") from None
        for t in self.tenants:
            if not (math.isfinite(t.share) and t.share > 0):
                raise ConfigError(f"{owner}.tenants[{t.name!r}].share={t.share!r} must be > 0")

    def _check_classes(self, owner: str) -> None:
        if not self.classes:
            raise ConfigError(f"{owner}.classes is empty; give at least one RequestClass")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names) or not all(names):
            raise ConfigError(f"{owner}.classes: names must be unique and non-empty, got {names}")
        for c in self.classes:
            _positive(owner, f"classes[{c.name!r}].slo_ms", c.slo_ms)
            if not (math.isfinite(c.share) and c.share >= 0):
                raise ConfigError(f"{owner}.classes[{c.name!r}].share={c.share!r} must be >= 0")
        if sum(c.share for c in self.classes) <= 0:
            raise ConfigError(f"{owner}.classes: the shares add up to 0; give one a share > 0")

    def _validate_mode(self, owner: str) -> None:
        """The mode's own fields (subclasses)."""

    def to_dict(self) -> dict[str, Any]:
        """The configuration as JSON-ready data (for reports)."""
        out: dict[str, Any] = {"mode": self.mode}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif f.name in ("classes", "tenants"):
                value = [vars(c) for c in value]
            elif isinstance(value, LengthDistribution):
                value = {**vars(value), "maximum": value.upper}
            out[f.name] = value
        return out


@dataclass
class LLMBenchmarkConfig(BenchmarkConfig):
    """Chat requests (``/v1/chat/completions``).

    Attributes:
        llm_model: Model to request (``None``: the one its own instances serve, or the first
            LLM model the gateway lists).
        prompt_tokens: Prompt length distribution (prompts are words of about one token).
        output_tokens: ``max_tokens`` distribution (the simulator generates exactly that).
        stream: Stream answers (measures TTFT); without it requests are idempotent (the
            gateway may retry them on another instance).
        llm_max_concurrent: ``max_concurrent_requests`` of its own LLM instances (``None``:
            the engine's batch size, so requests wait in the gateway, where the policy acts).
    """

    mode: ClassVar[Mode] = "llm"

    llm_model: str | None = None
    prompt_tokens: LengthDistribution = field(
        default_factory=lambda: LengthDistribution.around(256)
    )
    output_tokens: LengthDistribution = field(default_factory=lambda: LengthDistribution.around(64))
    stream: bool = True
    llm_max_concurrent: int | None = None

    def _validate_mode(self, owner: str) -> None:
        super()._validate_mode(owner)
        self.prompt_tokens.check(f"{owner}.prompt_tokens")
        self.output_tokens.check(f"{owner}.output_tokens")
        if self.llm_max_concurrent is not None and self.llm_max_concurrent < 1:
            raise ConfigError(
                f"{owner}.llm_max_concurrent={self.llm_max_concurrent} must be at least 1"
            )


@dataclass
class EmbeddingBenchmarkConfig(BenchmarkConfig):
    """Embedding requests (``/v1/embeddings``), each of one or more texts.

    Attributes:
        embedding_model: Model to request (``None``: as for ``llm_model``).
        texts_per_request: Distribution of the number of texts in one request's ``input``.
        text_tokens: Length distribution of each text.
        embedding_max_concurrent: ``max_concurrent_requests`` of its own embedding instances.
    """

    mode: ClassVar[Mode] = "embedding"

    embedding_model: str | None = None
    texts_per_request: LengthDistribution = field(
        default_factory=lambda: LengthDistribution.around(4, "uniform", 0.75)
    )
    text_tokens: LengthDistribution = field(default_factory=lambda: LengthDistribution.around(32))
    embedding_max_concurrent: int = 4

    def _validate_mode(self, owner: str) -> None:
        super()._validate_mode(owner)
        self.texts_per_request.check(f"{owner}.texts_per_request")
        self.text_tokens.check(f"{owner}.text_tokens")
        if self.embedding_max_concurrent < 1:
            raise ConfigError(
                f"{owner}.embedding_max_concurrent={self.embedding_max_concurrent} must be >= 1"
            )


@dataclass
class HybridBenchmarkConfig(LLMBenchmarkConfig, EmbeddingBenchmarkConfig):
    """Chat and embedding requests mixed in one trace.

    Attributes:
        llm_ratio: Share of chat requests (the rest are embedding requests).
        embedding_instances: Embedding instances of its own (``None``: as many as
            ``instances``, the LLM instances).
    """

    mode: ClassVar[Mode] = "hybrid"

    llm_ratio: float = 0.7
    embedding_instances: int | None = None

    @property
    def kinds(self) -> tuple[Kind, ...]:
        """Both kinds (a kind with a share of 0 sends nothing)."""
        return ("llm", "embedding")

    def _validate_mode(self, owner: str) -> None:
        super()._validate_mode(owner)
        if not (math.isfinite(self.llm_ratio) and 0 <= self.llm_ratio <= 1):
            raise ConfigError(
                f"{owner}.llm_ratio={self.llm_ratio!r} must be between 0 and 1 (the share of "
                "chat requests), e.g. 0.7"
            )
        if self.embedding_instances is not None and self.embedding_instances < 1:
            raise ConfigError(
                f"{owner}.embedding_instances={self.embedding_instances} must be at least 1"
            )


_CONFIGS: dict[str, type[BenchmarkConfig]] = {
    "llm": LLMBenchmarkConfig,
    "embedding": EmbeddingBenchmarkConfig,
    "hybrid": HybridBenchmarkConfig,
}


def config_for_mode(mode: str, **values: Any) -> BenchmarkConfig:
    """The config class of ``mode`` built from ``values`` (fields another mode has are dropped).

    Raises:
        ConfigError: an unknown mode.
    """
    try:
        cls = _CONFIGS[mode]
    except KeyError:
        raise ConfigError(f"mode {mode!r} is unknown; use one of {', '.join(MODES)}") from None
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})
