"""The job configuration: the ``config`` mapping given to an environment, validated once.

Unknown keys are kept (later layers read their own sections, such as ``"ray"``) but a key
that looks like a misspelling of a known one is an error naming the right spelling.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sage.common.core.scheduling import SCHEDULING_KEYS, Scheduling, scheduling_problem
from sage.common.errors import ConfigError

__all__ = ["ErrorMode", "JobConfig"]

logger = logging.getLogger(__name__)


class ErrorMode(StrEnum):
    """What happens when user code raises on a record (``config["on_error"]``).

    * ``fail`` (default): the job stops and ``submit`` raises an ``OperatorError``.
    * ``skip``: the record is dropped and counted in the operator's ``errors`` metric.
    * ``dead_letter``: the record, the operator and the error are kept in
      ``env.dead_letters`` (and appended to ``dead_letter_path`` as JSON lines if set).
    """

    FAIL = "fail"
    SKIP = "skip"
    DEAD_LETTER = "dead_letter"


# Sections owned by other layers; accepted here and validated where they are used.
_OTHER_SECTIONS = frozenset(
    {"ray", "services", "fault_tolerance", "dashboard", "jobmanager", "memory_monitor"}
)


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"config[{key!r}]={value!r} is invalid; use an integer >= 1")
    return value


def _positive_float(key: str, value: Any) -> float:
    """A finite number of seconds > 0.

    NaN fails every comparison, and infinity (or an int too large for a float) would make a
    task wait forever or overflow the thread-wait call, so they are refused here.
    """
    seconds = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        with contextlib.suppress(OverflowError):  # stays NaN: refused below
            seconds = float(value)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(
            f"config[{key!r}]={value!r} is invalid; use a finite number of seconds > 0"
        )
    return seconds


def _cpu_set(value: Any) -> frozenset[int]:
    """The CPU numbers of ``value``, a list of ints.

    Each item must be an int already: ``int()`` would quietly turn ``"01"`` into two CPUs,
    ``0.7`` into CPU 0 and ``True`` into CPU 1.
    """
    if not hasattr(os, "sched_setaffinity"):
        raise ConfigError("config['cpu_affinity'] needs Linux (os.sched_setaffinity); remove it")
    available = os.sched_getaffinity(0)
    items = (
        None
        if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable)
        else list(value)
    )
    if items is None or any(isinstance(c, bool) or not isinstance(c, int) for c in items):
        raise ConfigError(
            f"config['cpu_affinity']={value!r} is invalid; use a list of CPU numbers, e.g. [0]"
        )
    cpus = frozenset(items)
    if not cpus or not cpus <= available:
        raise ConfigError(
            f"config['cpu_affinity']={sorted(cpus)} is invalid; this process may use CPUs "
            f"{sorted(available)}"
        )
    return cpus


@dataclass(frozen=True)
class JobConfig:
    """Validated runtime settings of a job.

    Attributes:
        on_error: Error mode (see :class:`ErrorMode`).
        dead_letter_path: File to append dead letters to (JSON lines), if any.
        parallelism: Default parallelism of operators that do not set one.
        batch_size: Maximum records per batch moved between tasks.
        channel_capacity: Batches a task's input channel holds before producers block.
        max_batch_delay_s: Longest records wait to be batched: a source's partial batch, and
            the outputs of a task working through a batch of slow records. Unset, 10 ms on
            the local runtime and 50 ms on Ray, where each batch between tasks is a remote
            call.
        chaining: Fuse forward edges into one task (disable to measure channel cost).
        metrics_sample_interval_s: How often each task times its operators per record.
        cpu_affinity: CPUs the job's task threads run on (Linux), or ``None`` to inherit.
            Pure-Python, CPU-bound operators hold the interpreter lock, so their threads
            gain nothing from several CPUs and lose to cross-CPU wake-ups (badly on small
            VMs); ``[0]`` keeps them on one. Leave unset when operators release the lock
            (NumPy, FAISS, model inference): they need every CPU.
        scheduling: ``config["priority"]`` and ``config["slo_ms"]``: sent with every LLM
            and embedding call the job's operators make (through services or the
            inference client), for the gateway to schedule by; an operator may override
            them (``.map(F, priority=0)``). ``None`` when neither is set.
        raw: The full mapping as given (other layers read their own sections from it).
    """

    on_error: ErrorMode = ErrorMode.FAIL
    dead_letter_path: str | None = None
    parallelism: int = 1
    batch_size: int = 1024
    channel_capacity: int = 16
    max_batch_delay_s: float = 0.01
    chaining: bool = True
    metrics_sample_interval_s: float = 0.2
    cpu_affinity: frozenset[int] | None = None
    scheduling: Scheduling | None = None
    raw: Mapping[str, Any] | None = None

    @staticmethod
    def from_mapping(config: Mapping[str, Any] | None) -> JobConfig:
        """Validate ``config`` and return the settings.

        Raises:
            ConfigError: a value is invalid or a key is a likely misspelling.
        """
        if config is None:
            return JobConfig(raw={})
        if not isinstance(config, Mapping):
            raise ConfigError(
                f"config must be a dict, got {type(config).__name__}; "
                'e.g. LocalEnvironment("job", config={"on_error": "skip"})'
            )
        known = {
            "on_error",
            "dead_letter_path",
            "parallelism",
            "batch_size",
            "channel_capacity",
            "max_batch_delay_s",
            "chaining",
            "metrics_sample_interval_s",
            "cpu_affinity",
            *SCHEDULING_KEYS,
        }
        for key in config:
            if not isinstance(key, str):
                raise ConfigError(
                    f"config key {key!r} is invalid; config keys are strings such as "
                    "'parallelism' or 'on_error'"
                )
            if key in known or key in _OTHER_SECTIONS:
                continue
            close = difflib.get_close_matches(str(key), sorted(known | _OTHER_SECTIONS), n=1)
            if close:
                raise ConfigError(f"config key {key!r} is unknown; did you mean {close[0]!r}?")
            logger.debug("config key %r is not used by the kernel", key)
        values: dict[str, Any] = {"raw": dict(config)}
        if "on_error" in config:
            try:
                values["on_error"] = ErrorMode(config["on_error"])
            except ValueError:
                choices = ", ".join(repr(m.value) for m in ErrorMode)
                raise ConfigError(
                    f"config['on_error']={config['on_error']!r} is invalid; use one of {choices}"
                ) from None
        if config.get("dead_letter_path") is not None:
            path = config["dead_letter_path"]
            if not isinstance(path, str | os.PathLike) or not str(path):
                raise ConfigError(
                    f"config['dead_letter_path']={path!r} is invalid; use a file path "
                    "(str or pathlib.Path) such as 'dead_letters.jsonl', or None"
                )
            values["dead_letter_path"] = str(path)
        for key in ("parallelism", "batch_size", "channel_capacity"):
            if key in config:
                values[key] = _positive_int(key, config[key])
        for key in ("max_batch_delay_s", "metrics_sample_interval_s"):
            if key in config:
                values[key] = _positive_float(key, config[key])
        if "chaining" in config:
            if not isinstance(config["chaining"], bool):
                raise ConfigError(
                    f"config['chaining']={config['chaining']!r} must be True or False"
                )
            values["chaining"] = config["chaining"]
        if config.get("cpu_affinity") is not None:
            values["cpu_affinity"] = _cpu_set(config["cpu_affinity"])
        for key in SCHEDULING_KEYS:
            value = config.get(key)
            problem = None if value is None else scheduling_problem(key, value)
            if problem is not None:
                raise ConfigError(f"config[{key!r}]={value!r} is invalid; {problem}, or omit it")
        values["scheduling"] = Scheduling.of(config.get("priority"), config.get("slo_ms"))
        # Only the section's type is checked here, so a wrong one fails when the environment
        # is built; its contents are validated by sage.kernel.checkpoint where they are used.
        section = config.get("fault_tolerance")
        if section is not None and not isinstance(section, Mapping):
            raise ConfigError(
                f"config['fault_tolerance']={section!r} is invalid; use a dict such as "
                '{"strategy": "restart", "max_restarts": 3}'
            )
        return JobConfig(**values)
