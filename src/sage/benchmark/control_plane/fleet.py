"""The benchmark's own instances when they differ: a price and a speed per instance.

Two settings describe a heterogeneous set of own instances, one value per instance of the
mode's kind (hybrid: per LLM instance), in the order they are started:

* ``instance_costs`` — each instance's ``cost_per_1k_tokens``, registered with the gateway
  (:class:`~sage.inference.config.BackendInstanceConfig`): COST_OPTIMIZED places requests by
  it, and the gateway counts the cost served, which the reports show;
* ``instance_speeds`` — simulated instances only: each one runs that many times faster than
  ``sim_profile`` says (every duration of its timing model divided by the speed; its batch
  size is unchanged), so that a dear instance can also be a fast one.

The capacity estimate of simulated instances adds up each instance's own capacity.

Example:
    >>> from sage.benchmark.control_plane.config import LLMBenchmarkConfig
    >>> config = LLMBenchmarkConfig(instances=3, instance_costs=[1, 1, 10],
    ...                             instance_speeds=[1, 1, 4])
    >>> [(cost_of(config, "llm", i), speed_of(config, "llm", i)) for i in range(3)]
    [(1.0, 1.0), (1.0, 1.0), (10.0, 4.0)]
    >>> profile_fields({"max_batch": 8}, 4.0)["decode_base_ms"]
    2.0
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sage.common.errors import ConfigError

if TYPE_CHECKING:
    from sage.benchmark.control_plane.config import BenchmarkConfig, Kind
    from sage.inference.engines.simulated import SimulatorProfile

__all__ = [
    "TIMED_FIELDS",
    "check",
    "cost_of",
    "parse_numbers",
    "priced_kind",
    "profile_fields",
    "scaled_profile",
    "speed_of",
]

TIMED_FIELDS = (
    "prefill_ms_per_token",
    "decode_base_ms",
    "decode_ms_per_seq",
    "embed_call_ms",
    "embed_ms_per_text",
)
"""The durations of a ``SimulatorProfile``: what a speed divides."""


def priced_kind(config: BenchmarkConfig) -> Kind:
    """The kind whose own instances the per-instance settings describe (hybrid: ``llm``)."""
    return "llm" if config.mode == "hybrid" else config.kinds[0]


def cost_of(config: BenchmarkConfig, kind: Kind, number: int) -> float | None:
    """``cost_per_1k_tokens`` of own instance ``number`` of ``kind`` (``None``: none declared)."""
    if config.instance_costs is None or kind != priced_kind(config):
        return None
    return float(config.instance_costs[number])


def speed_of(config: BenchmarkConfig, kind: Kind, number: int) -> float:
    """How many times faster than ``sim_profile`` own instance ``number`` of ``kind`` runs."""
    if config.instance_speeds is None or kind != priced_kind(config):
        return 1.0
    return float(config.instance_speeds[number])


def scaled_profile(profile: SimulatorProfile, speed: float) -> SimulatorProfile:
    """``profile`` running ``speed`` times faster: each of :data:`TIMED_FIELDS` divided by it."""
    return dataclasses.replace(profile, **{f: getattr(profile, f) / speed for f in TIMED_FIELDS})


def profile_fields(sim_profile: dict[str, Any], speed: float) -> dict[str, Any]:
    """The ``--sim-profile`` fields of an instance at ``speed`` (``sim_profile`` itself at 1)."""
    if speed == 1.0:
        return sim_profile
    from sage.inference.engines.simulated import SimulatorProfile

    fast = scaled_profile(SimulatorProfile.from_mapping(sim_profile), speed)
    return {**sim_profile, **{f: getattr(fast, f) for f in TIMED_FIELDS}}


def parse_numbers(option: str, spec: Any) -> list[float] | None:
    """The numbers of a comma-separated option (``--instance-costs 1,1,10``); ``None``: unset.

    Raises:
        ConfigError: a part is not a number (naming the option and the fix).
    """
    if spec is None:
        return None
    flag = "--" + option.replace("_", "-")
    numbers = []
    for part in str(spec).split(","):
        try:
            numbers.append(float(part.strip()))
        except ValueError:
            raise ConfigError(
                f"{flag} {spec!r}: {part.strip()!r} is not a number; give one number per own "
                f"instance, comma-separated, e.g. {flag} 1,1,10"
            ) from None
    return numbers


def _numbers(owner: str, name: str, values: Sequence[float], *, zero_ok: bool) -> None:
    if not values:
        raise ConfigError(f"{owner}.{name} is empty; give one number per own instance or None")
    for i, value in enumerate(values):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not (ok and math.isfinite(value) and (value >= 0 if zero_ok else value > 0)):
            bound = "a number >= 0" if zero_ok else "a number above 0 (1: as sim_profile says)"
            raise ConfigError(f"{owner}.{name}[{i}]={value!r} must be {bound}")


def check(config: BenchmarkConfig, owner: str) -> None:
    """Check ``instance_costs`` and ``instance_speeds`` of ``config``.

    Raises:
        ConfigError: a bad value, a count other than ``instances`` (naming both options), a
            speed for engines other than the simulator, or either with a running gateway.
    """
    given = {
        name: values
        for name in ("instance_costs", "instance_speeds")
        if (values := getattr(config, name)) is not None
    }
    for name, values in given.items():
        flag = "--" + name.replace("_", "-")
        _numbers(owner, name, values, zero_ok=name == "instance_costs")
        if config.control_plane_url is not None:
            raise ConfigError(
                f"{owner}.{name} describes the benchmark's own instances; a running gateway's "
                f"instances declare their own cost_per_1k_tokens: drop control_plane_url or {name}"
            )
        if len(values) != config.instances:
            raise ConfigError(
                f"{owner}.{name} has {len(values)} values but instances={config.instances}: "
                f"give {flag} one value per own instance (as many as --instances), or leave "
                f"--instances out and it follows {flag}"
            )
    if "instance_speeds" in given and config.engine != "simulated":
        raise ConfigError(
            f"{owner}.instance_speeds only applies to engine='simulated' (it scales the "
            f"simulators' timing), not {config.engine!r}; drop it, or use --engine simulated"
        )
