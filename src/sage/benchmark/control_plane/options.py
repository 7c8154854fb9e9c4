"""The command line's options as a benchmark configuration.

``sage-cp-bench run``, ``compare`` and ``sweep`` share one set of options (their values come
from the command line, a ``--config`` file, or the defaults, in that order). This module
turns those values, keyed by option name (``requests``, ``rate``, ``llm_ratio``...), into the
mode's :class:`~.config.BenchmarkConfig`: the one place that knows which option sets which
field, so the CLI, the config file's checks and its writer agree.

Example:
    >>> config = config_from_options("run", {"mode": "llm", "policies": "fifo", "rate": "20"})
    >>> config.policies, config.request_rate
    (['fifo'], 20.0)
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, Literal

from sage.benchmark.control_plane.config import (
    BenchmarkConfig,
    LengthDistribution,
    LLMBenchmarkConfig,
    RequestClass,
    TenantLoad,
    config_for_mode,
)
from sage.benchmark.control_plane.fleet import parse_numbers
from sage.common.errors import ConfigError

__all__ = [
    "DEFAULT_POLICIES",
    "EXAMPLES",
    "FIELD_OF",
    "IMPLIED",
    "Command",
    "applies",
    "config_from_options",
    "parse_rates",
]

Command = Literal["run", "compare", "sweep"]

DEFAULT_POLICIES: dict[str, list[str]] = {
    "run": ["fifo"],
    "compare": ["fifo", "priority", "slo_aware"],
    "sweep": ["fifo"],
}
"""The policies each command runs when none is given."""

FIELD_OF: dict[str, str] = {
    "policies": "policies",
    "requests": "num_requests",
    "duration": "duration_s",
    "rate": "request_rate",
    "load": "load",
    "llm_ratio": "llm_ratio",
    "arrival": "arrival_pattern",
    "burst_on": "burst_on_s",
    "burst_off": "burst_off_s",
    "classes": "classes",
    "prompt_tokens": "prompt_tokens",
    "output_tokens": "output_tokens",
    "length_shape": "prompt_tokens",
    "texts_per_request": "texts_per_request",
    "text_tokens": "text_tokens",
    "stream": "stream",
    "seed": "seed",
    "warmup": "warmup_requests",
    "instances": "instances",
    "embedding_instances": "embedding_instances",
    "engine": "engine",
    "sim_profile": "sim_profile",
    "instance_costs": "instance_costs",
    "instance_speeds": "instance_speeds",
    "max_concurrent": "llm_max_concurrent",
    "control_plane": "control_plane_url",
    "llm_model": "llm_model",
    "embedding_model": "embedding_model",
    "timeout": "timeout_seconds",
    "kill_instance_at": "kill_instance_at",
    "kill_kind": "kill_kind",
    "tenants": "tenants",
    "fair_share": "fair_share",
    "output": "output_dir",
}
"""The config field each option sets (options that are not here, such as ``visualize``, are
about presentation and apply to every mode)."""

EXAMPLES: dict[str, Any] = {
    "policies": "fifo",
    "duration": 60.0,
    "rate": 20.0,
    "classes": "interactive:0:2000:0.3,batch:5:30000:0.7",
    "prompt_tokens": 256,
    "output_tokens": 64,
    "length_shape": "lognormal",
    "texts_per_request": 4,
    "text_tokens": 32,
    "embedding_instances": 2,
    "sim_profile": {"max_batch": 8},
    "instance_costs": [1, 1, 10],
    "instance_speeds": [1, 1, 4],
    "max_concurrent": 8,
    "control_plane": "http://127.0.0.1:8000",
    "llm_model": "sim-llm",
    "embedding_model": "sim-embedding",
    "kill_instance_at": 5.0,
    "kill_kind": "llm",
    "tenants": "light:1:1,heavy:1:10",
}
"""A value to show for each option that is unset by default (the config file's writer puts
it in a commented-out line, for the user to uncomment)."""

IMPLIED: dict[str, tuple[str, ...]] = {"instances": ("instance_costs", "instance_speeds")}
"""Options whose value, when not given, follows from others: ``instances`` is the number of
``instance_costs`` (or ``instance_speeds``), else its default. A front end passes such an
option as ``None`` when the user did not give it."""

_LENGTHS: dict[str, tuple[Any, float]] = {
    "prompt_tokens": ("lognormal", 0.5),
    "output_tokens": ("lognormal", 0.5),
    "texts_per_request": ("uniform", 0.75),
    "text_tokens": ("lognormal", 0.5),
}


def applies(mode: str, option: str) -> bool:
    """Whether ``option`` means anything in ``mode`` (``llm_ratio`` only in hybrid mode, the
    prompt lengths not in embedding mode...); an unknown mode: every option applies."""
    if option not in FIELD_OF:
        return True
    try:
        cls = type(config_for_mode(mode))
    except ConfigError:
        return True
    return FIELD_OF[option] in {f.name for f in fields(cls)}


def parse_rates(spec: str | None, command: Command) -> list[float]:
    """The offered rates of ``--rate``: none or one (``run``, ``compare``), one or more
    comma-separated (``sweep``).

    Raises:
        ConfigError: a rate is not a number above 0, ``run``/``compare`` got several, or
            ``sweep`` got none.
    """
    parts = [p.strip() for p in (spec or "").split(",") if p.strip()]
    rates = []
    for part in parts:
        try:
            rate = float(part)
        except ValueError:
            rate = math.nan
        if not (math.isfinite(rate) and rate > 0):
            raise ConfigError(
                f"--rate {part!r} is not a number above 0; give requests per second, "
                "e.g. --rate 20 (sweep: -r 5,10,20,40)"
            )
        rates.append(rate)
    if command == "sweep" and not rates:
        raise ConfigError("sweep needs --rate with the offered rates to run, e.g. -r 5,10,20,40")
    if command != "sweep" and len(rates) > 1:
        raise ConfigError(
            f"{command} takes one --rate; to run several offered rates use: "
            f"sage-cp-bench sweep -r {','.join(parts)}"
        )
    return rates


def _policies(command: Command, spec: Any) -> list[str]:
    names = [p.strip() for p in str(spec or "").split(",") if p.strip()]
    if command == "run" and len(names) > 1:
        raise ConfigError("run takes one --policy; to compare several use: compare --policies a,b")
    return names or list(DEFAULT_POLICIES[command])


def config_from_options(command: Command, options: Mapping[str, Any]) -> BenchmarkConfig:
    """The benchmark configuration the options describe (not yet validated).

    Args:
        command: ``run`` (one policy, at most one rate), ``compare`` or ``sweep`` (a list of
            rates; ``request_rate`` is the first, each run of the sweep replaces it).
        options: Values by option name, as the CLI parses them (strings for ``policies``,
            ``rate``, ``classes``, ``tenants``, ``sim_profile``, ``instance_costs``,
            ``instance_speeds``); a missing option keeps the config's default, and one of
            :data:`IMPLIED` that is missing or ``None`` follows its sources.

    Raises:
        ConfigError: a value that does not parse, naming its option and the fix.
    """
    values: dict[str, Any] = {"policies": _policies(command, options.get("policies"))}
    rates = parse_rates(options.get("rate"), command)
    values["request_rate"] = rates[0] if rates else None
    special = {"policies", "rate", "classes", "tenants", "sim_profile", "length_shape"}
    special |= {"instance_costs", "instance_speeds"}
    for option, name in FIELD_OF.items():
        if option in options and option not in special and option not in _LENGTHS:
            values[name] = options[option]
    for option in ("instance_costs", "instance_speeds"):
        values[option] = parse_numbers(option, options.get(option))
    for option, sources in IMPLIED.items():
        if values.get(option) is None:  # not given: follows its sources, else the default
            values.pop(option, None)
            given = [len(values[s]) for s in sources if values.get(s) is not None]
            if given:
                values[option] = given[0]
    if options.get("classes") is not None:
        values["classes"] = RequestClass.parse_list(str(options["classes"]))
    if options.get("tenants") is not None:
        values["tenants"] = TenantLoad.parse_list(str(options["tenants"]))
    if options.get("sim_profile") is not None:
        try:
            profile = json.loads(str(options["sim_profile"]))
        except ValueError as exc:
            raise ConfigError(
                f"--sim-profile is not valid JSON ({exc}); e.g. '{{\"max_batch\": 8}}'"
            ) from None
        if not isinstance(profile, dict):
            raise ConfigError("--sim-profile must be a JSON object, e.g. '{\"max_batch\": 8}'")
        values["sim_profile"] = profile
    for option, (shape, spread) in _LENGTHS.items():
        if options.get(option) is not None:
            values[option] = LengthDistribution.around(float(options[option]), shape, spread)
    config = config_for_mode(str(options.get("mode", "llm")), **values)
    shape = options.get("length_shape")
    if shape is not None and isinstance(config, LLMBenchmarkConfig):
        config.prompt_tokens = dataclasses.replace(config.prompt_tokens, shape=shape)
        config.output_tokens = dataclasses.replace(config.output_tokens, shape=shape)
    return config
