"""What a function learns about where it runs: given to ``open(context)``, kept as ``self.ctx``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RuntimeContext"]


@dataclass(frozen=True)
class RuntimeContext:
    """Identity of one parallel instance of an operator.

    Attributes:
        job_name: Name of the environment/job.
        operator_name: Display name of the operator (unique within the job).
        instance_index: 0-based index of this parallel instance.
        parallelism: Number of parallel instances of the operator.
        task_id: Identifier of the physical task hosting the instance (``"chain2#0"``).
        config: The environment's configuration mapping (read-only by convention).
    """

    job_name: str
    operator_name: str
    instance_index: int
    parallelism: int
    task_id: str
    config: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def index(self) -> int:
        """Alias of :attr:`instance_index`."""
        return self.instance_index

    @property
    def logger(self) -> logging.Logger:
        """A logger named after the job and operator."""
        return logging.getLogger(f"sage.job.{self.job_name}.{self.operator_name}")
