"""``RemoteEnvironment``: run a pipeline on a JobManager (on Ray by default)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from sage.common.config.ports import SagePorts
from sage.common.errors import ConfigError
from sage.kernel.api.base_environment import BaseEnvironment
from sage.kernel.api.driver_state import check_driver_state
from sage.kernel.graph.plan import PhysicalPlan

if TYPE_CHECKING:
    from sage.kernel.jobmanager.remote_job import RemoteJob

__all__ = ["RemoteEnvironment"]


class RemoteEnvironment(BaseEnvironment):
    """Builds the same pipelines as ``LocalEnvironment`` and runs them on a JobManager.

    The JobManager (``sage jobmanager start``) runs each job on its Ray cluster: tasks and
    services as Ray actors, GPU services on nodes with GPUs. The pipeline is unchanged and
    its results equal a local run's. Functions travel pickled: those of your own modules
    by value, those of installed packages by reference (install them on the cluster too).

    Sinks and other side effects happen where the job runs, not in this process. What
    comes back while ``submit()`` (or ``wait()``) waits: the records of ``stream.collect()``,
    and the lines the job's functions print and log (``.print()``, ``print()``,
    ``self.logger``, warnings), written here prefixed with their operator instance, like
    ``(sink 'print' 1/1) 42``, and kept in ``sage job logs``. A function that writes to a
    list, dict or set of this process (``.sink(out.append)``) would change a copy on the
    cluster: ``submit()`` refuses it (or, for a non-sink function that may keep a cache of
    its own, warns), pointing to ``collect()``.

    Constructing one connects to nothing; ``submit`` does. Only clients holding the
    JobManager's token (``$SAGE_HOME/jobmanager/token``, or ``$SAGE_JOBMANAGER_TOKEN``) may
    submit.

    Example:
        >>> env = RemoteEnvironment(
        ...     name="distributed_app",
        ...     host="127.0.0.1",
        ...     port=19001,
        ...     config={"ray": {"address": "ray://localhost:10001", "num_cpus": 32, "num_gpus": 4}},
        ... )
        >>> _ = env.from_collection(range(4)).map(lambda x: x * x).sink(print)
        >>> env.submit()  # doctest: +SKIP

    Args:
        name: Name of the job (its JobManager id starts with it).
        host: The JobManager's address.
        port: The JobManager's port.
        config: Settings as for ``LocalEnvironment``, plus a ``"ray"`` section:
            ``address`` (the cluster the job is meant for; the JobManager's own
            ``--ray-address`` decides), ``num_cpus`` and ``num_gpus`` (numbers >= 0).
        log_to_driver: Echo what the job's functions print and log here, as Ray's
            ``ray.init(log_to_driver=True)`` does (``False``: only ``sage job logs``).

    Raises:
        ConfigError: ``host``, ``port``, ``log_to_driver`` or a config value is invalid.
    """

    def __init__(
        self,
        name: str = "remote_job",
        host: str = "127.0.0.1",
        port: int = SagePorts.JOBMANAGER_DEFAULT,
        config: Mapping[str, Any] | None = None,
        *,
        log_to_driver: bool = True,
    ) -> None:
        if not isinstance(host, str) or not host.strip():
            raise ConfigError(
                f"RemoteEnvironment: host={host!r} is invalid; give the JobManager's address "
                "as a string, e.g. host='127.0.0.1'"
            )
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(
                f"RemoteEnvironment: port={port!r} is invalid; give the JobManager's port as "
                f"an integer 1-65535 (default {SagePorts.JOBMANAGER_DEFAULT})"
            )
        if not isinstance(log_to_driver, bool):
            raise ConfigError(
                f"RemoteEnvironment: log_to_driver={log_to_driver!r} is invalid; use True (echo "
                "the job's output here) or False (keep it in `sage job logs` only)"
            )
        super().__init__(name, config)
        self.log_to_driver = log_to_driver
        # Validated here, so a typo fails at construction rather than on the cluster. The
        # module only describes the section: importing it does not import Ray.
        from sage.kernel.runtime.ray.cluster import RayOptions

        self.ray_options = RayOptions.from_config(self.config.get("ray"))
        self.host = host.strip()
        self.port = port

    def __repr__(self) -> str:
        return (
            f"RemoteEnvironment({self.name!r}, {self.host}:{self.port}, "
            f"operators={len(self.graph)})"
        )

    def _create_job(self, plan: PhysicalPlan) -> RemoteJob:
        from sage.kernel.jobmanager.client import JobManagerClient
        from sage.kernel.jobmanager.remote_job import RemoteJob

        check_driver_state(self.graph.nodes())
        client = JobManagerClient(self.host, self.port)
        return RemoteJob(
            client,
            self.name,
            plan,
            dict(self.config),
            list(self.services),
            collect_results=self.collect_results,
            log_to_driver=self.log_to_driver,
        )

    def submit(self, autostop: bool = True) -> RemoteJob:
        """Send the pipeline to the JobManager and run it there.

        Args:
            autostop: ``True`` (default): block until the job ended, echoing its output and
                taking its collected records; raise its error if it failed. ``False``:
                return once the JobManager took the job; use ``wait()`` (which takes the
                output and records then), ``stop()`` and ``close()``.

        Raises:
            PlanError: the pipeline is invalid, or a function writes to a container of
                this process (found here, before sending).
            OperatorError: (``autostop=True``) user code failed on the cluster.
            JobError: the JobManager cannot be reached or refused the job.
            ConfigError: the JobManager refused this client's token.
        """
        return cast("RemoteJob", super().submit(autostop))
