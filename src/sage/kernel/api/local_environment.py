"""``LocalEnvironment``: run a pipeline on threads of this process."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from sage.kernel.api.base_environment import BaseEnvironment
from sage.kernel.api.collect import ListCollector
from sage.kernel.graph.plan import PhysicalPlan

if TYPE_CHECKING:
    from sage.kernel.runtime.local.executor import LocalJob

__all__ = ["LocalEnvironment"]


class LocalEnvironment(BaseEnvironment):
    """Runs the pipeline in this process, one thread per (fused) task.

    No server, no Ray and no files are involved.

    Example:
        >>> env = LocalEnvironment("squares")
        >>> out = []
        >>> _ = env.from_collection(range(4)).map(lambda x: x * x).sink(out.append)
        >>> _ = env.submit()
        >>> out
        [0, 1, 4, 9]

    Args:
        name: Name of the job.
        config: Settings such as ``{"on_error": "skip", "parallelism": 4}``; see
            :class:`sage.kernel.config.JobConfig`.
    """

    def __init__(self, name: str = "local_job", config: Mapping[str, Any] | None = None) -> None:
        super().__init__(name, config)

    def _create_job(self, plan: PhysicalPlan) -> LocalJob:
        from sage.kernel.runtime.local.executor import LocalJob  # the runtime loads on submit

        collectors = {
            cid: ListCollector(result._restart()) for cid, result in self.collect_results.items()
        }
        return LocalJob(plan, self.job_config, self.services, collectors=collectors)

    def submit(self, autostop: bool = True) -> LocalJob:
        return cast("LocalJob", super().submit(autostop))
