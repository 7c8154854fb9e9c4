"""The ``config["fault_tolerance"]`` section, validated once: checkpoints and restarts.

::

    {"strategy": "checkpoint", "checkpoint_dir": "/var/sage/ckpt", "checkpoint_interval": 5}
    {"strategy": "restart", "restart_strategy": "exponential", "max_restarts": 10}

* ``checkpoint``: consistent snapshots every ``checkpoint_interval`` seconds (default 10),
  kept in ``checkpoint_dir`` (default: in memory only, for this job's restarts); a failed job
  restarts from the last one with the restart strategy (``fixed`` by default). Records that
  reached an exactly-once sink before the failure are not written again.
* ``restart``: restarts without checkpoints (sources start over: at-least-once), unless
  ``checkpoint_dir`` or ``checkpoint_interval`` is given too.
* ``none`` (or no section): a failure fails the job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sage.common.errors import ConfigError
from sage.kernel.checkpoint.restart import RestartStrategy, restart_strategy
from sage.kernel.checkpoint.state import declares_state
from sage.kernel.graph.logical import SourceKind
from sage.kernel.graph.plan import PhysicalPlan
from sage.kernel.runtime.collect import collector_id

__all__ = ["DEFAULT_CHECKPOINT_INTERVAL_S", "FaultTolerance"]

DEFAULT_CHECKPOINT_INTERVAL_S = 10.0
_STRATEGIES = ("checkpoint", "restart", "none")


@dataclass(frozen=True)
class FaultTolerance:
    """What a job does about failures.

    Attributes:
        restart: Decides whether and when to restart (``None``: never).
        checkpoint_interval_s: Seconds between checkpoints (``None``: no checkpoints).
        checkpoint_dir: Where completed checkpoints are written (``None``: memory only).
    """

    restart: RestartStrategy | None = None
    checkpoint_interval_s: float | None = None
    checkpoint_dir: Path | None = None

    @property
    def checkpointing(self) -> bool:
        """Whether the job takes checkpoints."""
        return self.checkpoint_interval_s is not None

    def check(self, plan: PhysicalPlan) -> None:
        """Refuse a plan that could not be replayed after a restart.

        Raises:
            ConfigError: a one-shot iterator (a generator...) feeds a job that restarts, a
                source function that keeps no state feeds a job that checkpoints, or a job
                that restarts ends in ``collect()``.
        """
        if self.restart is None:
            return
        for node in plan.nodes:
            if collector_id(node) is not None:
                raise ConfigError(
                    f"{node.name}: collect() hands records to the submitter as they arrive, so "
                    "a restart would hand the replayed ones over again, and "
                    "config['fault_tolerance'] asks for restarts; write to a "
                    "TransactionalFileSink (exactly once across restarts) or drop the restarts"
                )
            kind = node.source_kind
            if (
                self.checkpointing
                and kind in (SourceKind.SOURCE_FUNCTION, SourceKind.BATCH_FUNCTION)
                and not declares_state(node.function.target)
            ):
                raise ConfigError(
                    f"{node.name}: checkpoints need to know where a source resumes, but "
                    f"{node.function.label} keeps no state; give it get_state() and "
                    "restore_state(state) (or state_fields = ('offset',)), or read a list"
                )
            if kind is SourceKind.ITERATOR:
                raise ConfigError(
                    f"{node.name}: a one-shot iterator ({node.function.label}) cannot be read "
                    "again after a restart, and config['fault_tolerance'] asks for restarts; "
                    "pass a list to from_collection(...) or a SourceFunction with "
                    "get_state()/restore_state(state)"
                )

    @staticmethod
    def from_config(config: Mapping[str, Any] | None) -> FaultTolerance:
        """Read ``config["fault_tolerance"]`` (absent: no restarts, no checkpoints).

        Raises:
            ConfigError: an unknown strategy, key or value (the message names it and the fix).
        """
        section = (config or {}).get("fault_tolerance")
        if section is None:
            return FaultTolerance()
        if not isinstance(section, Mapping):
            raise ConfigError(
                f"config['fault_tolerance']={section!r} is invalid; use a dict such as "
                '{"strategy": "checkpoint", "checkpoint_dir": "ckpt", "checkpoint_interval": 5}'
            )
        strategy = section.get("strategy", "restart")
        if strategy not in _STRATEGIES:
            raise ConfigError(
                f"config['fault_tolerance']['strategy']={strategy!r} is unknown; use one of "
                + ", ".join(repr(s) for s in _STRATEGIES)
            )
        if strategy == "none":
            return FaultTolerance()
        restart = restart_strategy({**section, "strategy": strategy})
        checkpointing = strategy == "checkpoint" or bool(
            {"checkpoint_dir", "checkpoint_interval"} & set(section)
        )
        if not checkpointing:
            return FaultTolerance(restart=restart)
        interval = section.get("checkpoint_interval", DEFAULT_CHECKPOINT_INTERVAL_S)
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            raise ConfigError(
                f"config['fault_tolerance']['checkpoint_interval']={interval!r} is invalid; "
                "use seconds > 0"
            )
        where = section.get("checkpoint_dir")
        if where is not None and not isinstance(where, str | Path):
            raise ConfigError(
                f"config['fault_tolerance']['checkpoint_dir']={where!r} is invalid; use a "
                "directory path"
            )
        return FaultTolerance(
            restart=restart,
            checkpoint_interval_s=float(interval),
            checkpoint_dir=None if where is None else Path(where),
        )
