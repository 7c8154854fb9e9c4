"""The Ray runtime: every task of the plan runs in its own actor, spread over the cluster.

:class:`RayJob` is the driver's side of a job, with the same life cycle and API as
:class:`~sage.kernel.runtime.local.executor.LocalJob`: it starts the services' replica
actors, borrows one :class:`~.task_actor.TaskHost` per task from the :mod:`.hosts` pool
(spread over the nodes), assigns and wires the tasks, and watches them from one thread. The
first task to fail cancels every other; the job ends when the last task has, and then its
hosts go back to the pool and its services are torn down. Nothing polls: the watcher
blocks in ``ray.wait``.

What the tasks' functions print and log comes back while the job runs (an
:class:`~.relay.OutputRelay` hands it to the job's output sink), and so do the records of its
``collect()`` operators, for whoever calls :meth:`RayJob.collected` (the JobManager).

With ``config["fault_tolerance"]`` a failed attempt (a task raised, a host process died) is
followed, as the restart strategy allows, by a new one on live hosts, resumed from the
latest checkpoint that the job's coordinator actor (:mod:`.checkpoints`) completed.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any

from sage.common.errors import ConfigError, JobCancelledError, JobError, ServiceError
from sage.kernel.checkpoint.policy import FaultTolerance
from sage.kernel.checkpoint.store import Checkpoint
from sage.kernel.config import JobConfig
from sage.kernel.graph.plan import PhysicalPlan
from sage.kernel.runtime.collect import CollectedChunk, collecting_tasks
from sage.kernel.runtime.error_policy import DeadLetter
from sage.kernel.runtime.metrics import JobMetrics, TaskStats, graph_edges, snapshot
from sage.kernel.runtime.output import OutputLine, OutputSink, echo_line
from sage.kernel.runtime.ray.cluster import RayOptions, cluster_info, connect
from sage.kernel.runtime.ray.hosts import Host, host_pool
from sage.kernel.runtime.ray.relay import CollectRelay, OutputRelay
from sage.kernel.runtime.ray.services import RemoteServices
from sage.kernel.runtime.ray.task_actor import Assignment, TaskOutcome
from sage.kernel.runtime.status import JobStatus
from sage.kernel.runtime.supervisor import Supervisor
from sage.kernel.services.metrics import ServiceMetrics
from sage.kernel.services.spec import ServiceSpec

__all__ = ["RayJob"]

logger = logging.getLogger(__name__)

# Pushes a sender keeps in flight to one receiver before it waits (see channels.py).
PUSH_WINDOW = 4
# CPUs a task actor reserves when the job declares none: a share, so Ray places and
# spreads actors by node without a job ever waiting for whole free CPUs.
DEFAULT_TASK_CPUS = 0.01
# Default max_batch_delay_s on Ray: a batch crossing actors costs a Ray call (about a
# millisecond of CPU across the two processes), 10-100x a local hand-over, so a slow
# operator's outputs are held up to 50 ms (Flink's network buffers wait up to 100 ms)
# instead of the local runtime's 10 ms. A job that sets max_batch_delay_s keeps its value.
RAY_MAX_BATCH_DELAY_S = 0.05
_GRACE_S = 5.0  # how long close() gives tasks stuck in user code before killing them
_OUTPUT_GRACE_S = 30.0  # how long an ended attempt waits for its last lines to come back


def echo(lines: Sequence[OutputLine]) -> None:
    """The output sink of a job run from its submitter's process: each line on this
    process's stdout or stderr, prefixed with its operator instance (as Ray prefixes the
    output of its workers)."""
    for line in lines:
        echo_line(line.origin, line.stream, line.text)


def _add_counts(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """Bucket counts added element-wise (``()`` counts nothing)."""
    if not a or not b:
        return a or b
    return tuple(x + y for x, y in zip(a, b, strict=True))


def _merge_services(rows: Sequence[tuple[ServiceMetrics, ...]]) -> tuple[ServiceMetrics, ...]:
    """One row per service from every task's view (counts add; percentiles: the highest)."""
    merged: dict[str, ServiceMetrics] = {}
    for row in rows:
        for m in row:
            seen = merged.get(m.service)
            if seen is None:
                merged[m.service] = m
                continue
            merged[m.service] = ServiceMetrics(
                service=m.service,
                replicas=m.replicas,
                slots=m.slots,
                calls=seen.calls + m.calls,
                errors=seen.errors + m.errors,
                timeouts=seen.timeouts + m.timeouts,
                fallbacks=seen.fallbacks + m.fallbacks,
                in_flight=seen.in_flight + m.in_flight,
                waiting=seen.waiting + m.waiting,
                p50_ms=max(seen.p50_ms, m.p50_ms),
                p95_ms=max(seen.p95_ms, m.p95_ms),
                p99_ms=max(seen.p99_ms, m.p99_ms),
                latency_buckets=_add_counts(seen.latency_buckets, m.latency_buckets),
                latency_sum_s=seen.latency_sum_s + m.latency_sum_s,
            )
    return tuple(merged.values())


class _Attempts:
    """A Ray job's attempts, as its :class:`~sage.kernel.runtime.supervisor.Supervisor`
    drives them."""

    def __init__(self, job: RayJob) -> None:
        self.job = job

    def await_attempt(self) -> BaseException | None:
        """Watch the attempt's tasks to their end and wait for their last lines; its error."""
        job = self.job
        job._watch(job._runs)
        relay = job._output_relay
        if relay is not None and not relay.join(_OUTPUT_GRACE_S):
            job._log(f"the output of the tasks did not all come back in {_OUTPUT_GRACE_S:g}s")
        return job._attempt_error

    def commit(self) -> None:
        """The job finished: its final checkpoint lets every sink commit."""
        import ray

        if self.job._coordinator is not None:
            ray.get(self.job._coordinator.finish.remote())

    def end_attempt(self) -> None:
        """Give the failed attempt's hosts back (or end the stuck ones)."""
        self.job._release_hosts()

    def latest_checkpoint(self) -> Checkpoint | None:
        """The latest checkpoint the coordinator completed (``None``: the start)."""
        import ray

        coordinator = self.job._coordinator
        return None if coordinator is None else ray.get(coordinator.latest.remote())

    def start_attempt(self, restore: Checkpoint | None) -> None:
        """Place, wire and start a new attempt, resumed from ``restore``."""
        job = self.job
        job._key = f"{job._run_id}:{job.supervisor.restarts}"
        job._runs = job._start_attempt(restore)

    def log(self, line: str) -> None:
        """An event of the job, in its log."""
        self.job._log(line)


class RayJob:
    """A compiled pipeline running on a Ray cluster (see the module docstring).

    Args:
        plan: The compiled job.
        config: Job settings; its ``"ray"`` section is read here. Unless it sets
            ``max_batch_delay_s``, outputs wait up to :data:`RAY_MAX_BATCH_DELAY_S` to be
            batched (a hop between actors costs far more than one between threads).
        services: The environment's registrations.
        log: Receives one line per event of the job (placement, failures, end); the
            JobManager keeps them as the job's log.
        output: Receives what the tasks' functions print and log, labelled with their
            operator instance (default: :func:`echo`, this process's output).

    Raises:
        ConfigError: the ``"ray"`` or ``"fault_tolerance"`` section is invalid.
    """

    def __init__(
        self,
        plan: PhysicalPlan,
        config: JobConfig,
        services: Sequence[ServiceSpec] = (),
        *,
        log: Callable[[str], None] | None = None,
        output: OutputSink | None = None,
    ) -> None:
        self.plan = plan
        if "max_batch_delay_s" not in (config.raw or {}):
            config = dataclasses.replace(config, max_batch_delay_s=RAY_MAX_BATCH_DELAY_S)
        self.config = config
        self.name = plan.job_name
        self.options = RayOptions.from_config((config.raw or {}).get("ray"))
        self.fault_tolerance = FaultTolerance.from_config(config.raw)
        self.fault_tolerance.check(plan)
        self._log_sink = log
        self._output: OutputSink = output or echo
        self._output_relay: OutputRelay | None = None
        self._collect_relay: CollectRelay | None = None
        self._collecting = collecting_tasks(plan)
        self._services = RemoteServices(services, plan.job_name)
        self._run_id = f"{plan.job_name}:{uuid.uuid4().hex[:12]}"
        self._key = f"{self._run_id}:0"  # names this attempt in host calls
        self._coordinator: Any = None  # the checkpoint coordinator's actor
        self.supervisor = Supervisor(self.name, _Attempts(self), self.fault_tolerance.restart)
        self._runs: dict[Any, str] = {}  # the current attempt's run calls, by task id
        self._attempt_error: BaseException | None = None
        self._stop_requested = False
        self._hosts: dict[str, Host] = {}
        self._sources: list[Any] = []
        self._outcomes: dict[str, TaskOutcome] = {}
        self._placement: dict[str, str] = {}
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._finished = threading.Event()
        self._watcher: threading.Thread | None = None
        self._status = JobStatus.CREATED
        self._started_at: float | None = None
        self._ended_at: float | None = None
        self._released_at: float | None = None

    def _log(self, line: str) -> None:
        logger.info("job %r: %s", self.name, line)
        if self._log_sink is not None:
            self._log_sink(line)

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> RayJob:
        """Start the services and task actors, then return; the job runs on the cluster.

        Raises:
            ConfigError: the job asks for more CPUs or GPUs than the cluster has.
            ServiceError: a service could not start.
            PlanError: a function cannot be constructed for one of its instances.
        """
        if self._status is not JobStatus.CREATED:
            raise JobError(f"job {self.name!r} was already started")
        self._status = JobStatus.RUNNING
        self._started_at = perf_counter()
        try:
            self._launch()
        except BaseException as exc:
            self._status = JobStatus.FAILED
            self._error = exc
            self._teardown()
            if self._coordinator is not None:
                import ray

                ray.kill(self._coordinator, no_restart=True)
            self._finished.set()
            raise
        return self

    def run(self) -> None:
        """Start, then wait for the end. Raises like :meth:`wait`."""
        self.start()
        self.wait()

    def _launch(self) -> None:
        import ray

        info = connect() if not ray.is_initialized() else cluster_info()
        self._check_resources(info)
        if self.options.address is not None:
            self._log(f"config['ray']['address'] is {self.options.address!r}; running on {info}")
        self._services.start()
        for name, nodes in self._services.placement().items():
            self._log(f"service {name!r}: {len(nodes)} replica(s) on node(s) {', '.join(nodes)}")
        ft = self.fault_tolerance
        if ft.restart is not None or ft.checkpointing:
            from sage.kernel.runtime.ray.checkpoints import start_coordinator

            self._coordinator = start_coordinator(
                self.name,
                [t.id for t in self.plan.tasks],
                ft.checkpoint_dir,
                ft.checkpoint_interval_s,
            )
        self._runs = self._start_attempt(None)
        self._watcher = threading.Thread(
            target=self._supervise, name=f"sage-{self.name}-ray-watch", daemon=True
        )
        self._watcher.start()

    def _start_attempt(self, restore: Checkpoint | None) -> dict[Any, str]:
        """Place, assign and wire every task (from ``restore``'s snapshots if given), start
        them, and return their ``run`` references (by task id)."""
        import ray

        tasks = self.plan.tasks
        self._sources, self._outcomes, self._placement = [], {}, {}
        self._attempt_error = None
        cpus = self.options.num_cpus
        per_task = DEFAULT_TASK_CPUS if cpus is None else cpus / len(tasks)
        plan_ref = ray.put(self.plan)
        hosts = host_pool().acquire(len(tasks), per_task)
        self._hosts = {task.id: host for task, host in zip(tasks, hosts, strict=True)}
        snapshots = {} if restore is None else restore.snapshots
        refs = {
            task.id: self._assign(self._hosts[task.id], task.id, plan_ref, snapshots.get(task.id))
            for task in tasks
        }
        by_chain: dict[int, list[Any]] = {}
        for task in tasks:
            host = self._taken(task.id, refs[task.id], plan_ref, snapshots.get(task.id))
            self._placement[task.id] = host.node_id or ""
            by_chain.setdefault(task.chain_id, []).append(host.handle)
            if task.expected_eos == 0:
                self._sources.append(host.handle)
        key = self._key
        connected = {tid: h.handle.connect.remote(key, by_chain) for tid, h in self._hosts.items()}
        for task_id, ref in connected.items():
            self._get(ref, task_id)
        handles = {task_id: host.handle for task_id, host in self._hosts.items()}
        self._output_relay = OutputRelay(handles, key, self._output, self.name)
        self._output_relay.start()
        if self._collecting:
            self._collect_relay = CollectRelay(
                {task_id: handles[task_id] for task_id in self._collecting}, key
            )
        spread = Counter(self._placement.values())
        self._log(
            f"started {len(tasks)} task(s) on {len(spread)} node(s): "
            + ", ".join(f"{node[:12]}: {n}" for node, n in spread.items())
        )
        if self._coordinator is not None:
            all_hosts = [h.handle for h in self._hosts.values()]
            ray.get(self._coordinator.start.remote(key, list(self._sources), all_hosts))
        runs = {h.handle.run.remote(key): task_id for task_id, h in self._hosts.items()}
        if self._stop_requested:
            for handle in self._sources:
                handle.request_stop.remote(key)
        return runs

    def _assign(self, host: Host, task_id: str, plan_ref: Any, restore: bytes | None) -> Any:
        """Give task ``task_id`` to ``host``; the reference answers with the host's node."""
        assignment = Assignment(
            task_id,
            self.config,
            self._services.services,
            PUSH_WINDOW,
            self._coordinator,
            restore,
        )
        return host.handle.assign.remote(self._key, plan_ref, assignment)

    def _taken(self, task_id: str, ref: Any, plan_ref: Any, restore: bytes | None) -> Host:
        """The host running task ``task_id``, its node recorded, once it took the task. A
        pooled host that died since its last job (its node went away) is replaced, once."""
        import ray

        host = self._hosts[task_id]
        try:
            host.node_id = str(ray.get(ref))
            return host
        except ray.exceptions.RayActorError:
            pass
        except ray.exceptions.RayTaskError:
            self._get(ref, task_id)  # raises the task's own error
        fresh = self._hosts[task_id] = host_pool().acquire_new(host.num_cpus)
        self._log(f"task {task_id}: its pooled host had died; starting a new one")
        fresh.node_id = str(self._get(self._assign(fresh, task_id, plan_ref, restore), task_id))
        return fresh

    def _check_resources(self, info: Any) -> None:
        tasks = self.options.num_cpus
        services = self._services.cpu_demand()
        wanted = services + (DEFAULT_TASK_CPUS * len(self.plan.tasks) if tasks is None else tasks)
        if wanted > info.cpus:
            asked = (
                f"{tasks:g} CPUs (config['ray']['num_cpus'])"
                if tasks is not None
                else f"{wanted - services:g} CPUs for its tasks"
            )
            raise ConfigError(
                f"job {self.name!r} asks for {asked} plus {services:g} for its services, but "
                f"the {info} has {info.cpus:g}; lower num_cpus (the job's or its services') "
                "or add nodes"
            )
        gpus = self._services.gpu_demand()
        limit = self.options.num_gpus
        if limit is not None and gpus > limit:
            raise ConfigError(
                f"job {self.name!r}: its services reserve {gpus:g} GPUs but "
                f"config['ray']['num_gpus'] is {limit:g}; raise it or lower the services' num_gpus"
            )
        if gpus > info.gpus:
            raise ConfigError(
                f"job {self.name!r}: its services reserve {gpus:g} GPUs but the {info} has "
                f"{info.gpus:g}; add GPU nodes or lower the services' num_gpus"
            )

    @staticmethod
    def _get(ref: Any, task_id: str) -> Any:
        """``ray.get`` with the task's own error raised as itself."""
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            raise (cause if isinstance(cause, Exception) else JobError(str(exc))) from None
        except ray.exceptions.RayActorError as exc:
            raise JobError(f"the actor of task {task_id} died: {exc}") from exc

    def _watch(self, runs: dict[Any, str]) -> None:
        import ray

        try:
            key = self._key
            opened = {h.handle.wait_opened.remote(key): t for t, h in self._hosts.items()}
            for ref, task_id in opened.items():
                try:
                    ray.get(ref)
                except ray.exceptions.RayError as exc:
                    self._fail(JobError(f"the actor of task {task_id} died: {exc}"))
            for handle in self._sources:
                handle.release.remote(key)
            self._released_at = perf_counter()
            self._log(f"every task opened after {self.startup_s:.2f}s; sources started")
            pending = list(runs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    task_id = runs[ref]
                    try:
                        outcome: TaskOutcome | None = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        self._fail(JobError(f"the actor of task {task_id} died: {exc}"))
                        continue
                    if outcome is None:  # pragma: no cover - the host was taken from us
                        self._fail(JobError(f"task {task_id} lost its host"))
                        continue
                    self._outcomes[task_id] = outcome
                    if outcome.error is not None:
                        self._log(f"task {task_id} failed: {outcome.error}")
                        self._fail(outcome.error)
        except BaseException as exc:  # pragma: no cover - the watcher must always end the job
            self._fail(JobError(f"job {self.name!r}: lost track of its tasks: {exc!r}"))

    def _supervise(self) -> None:
        """The watcher thread: attempts until one finishes or the strategy gives up, then
        the job's end (hosts back to the pool, services cleaned up)."""
        import ray

        error: BaseException | None = None
        try:
            error = self.supervisor.supervise()
        except BaseException as exc:  # the watcher must always end the job
            error = exc
        finally:
            with self._lock:
                self._error = error
            self._teardown()
            if self._coordinator is not None:
                ray.kill(self._coordinator, no_restart=True)
            self._ended_at = perf_counter()
            self._finished.set()
            self._log(f"ended: {self.status.value} after {self.elapsed_s:.2f}s")

    def _fail(self, error: BaseException) -> None:
        """End the current attempt with ``error`` (the first one wins)."""
        with self._lock:
            first = self._attempt_error is None
            if first:
                self._attempt_error = error
        if first:
            if self._coordinator is not None:
                self._coordinator.abort.remote()  # wakes tasks waiting on a checkpoint
            for host in self._hosts.values():
                host.handle.cancel.remote(self._key)

    def _release_hosts(self) -> None:
        """Free the hosts whose task ended and return them to the pool; end the others."""
        import ray

        pool = host_pool()
        done = [h for task_id, h in self._hosts.items() if task_id in self._outcomes]
        stuck = [h for task_id, h in self._hosts.items() if task_id not in self._outcomes]
        self._hosts = {}
        freed = []
        for host, ref in [(h, h.handle.free.remote(self._key)) for h in done]:
            try:
                ray.get(ref)
                freed.append(host)
            except ray.exceptions.RayError:
                stuck.append(host)
        pool.give_back(freed)
        pool.kill(stuck)

    def _teardown(self) -> None:
        """Release the hosts, then clean up the services (their error becomes the job's if
        it had none)."""
        self._release_hosts()
        try:
            self._services.close()
        except ServiceError as exc:
            with self._lock:
                self._error = self._error or exc

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every task has ended.

        Returns:
            ``True`` if the job ended, ``False`` if ``timeout`` passed first.

        Raises:
            OperatorError: user code failed (names operator, instance and record).
            JobError: the job failed or was cancelled.
        """
        if self._status is JobStatus.CREATED:
            raise JobError(f"job {self.name!r} has not been started")
        if not self._finished.wait(timeout):
            return False
        if self._error is not None:
            raise self._error
        return True

    def stop(self, timeout: float | None = None) -> bool:
        """End the job gracefully (sources stop, records in flight drain). Like :meth:`wait`."""
        if self._status is JobStatus.RUNNING:
            self._status = JobStatus.STOPPING
            self._stop_requested = True
            for handle in self._sources:
                handle.request_stop.remote(self._key)
        return self.wait(timeout)

    def collected(self, max_records: int, timeout: float | None) -> list[CollectedChunk] | None:
        """Take the records the job's ``collect()`` operators gathered: up to ``max_records``
        per collecting task, pickled by collector, once there are any; ``[]`` after
        ``timeout`` seconds without any; ``None`` once every collector closed and was
        emptied (or the job was cancelled). A collect waits while its buffer is full, and
        does not finish until its last records were taken."""
        relay = self._collect_relay  # set when the job started
        return None if relay is None else relay.take(max_records, timeout)

    def cancel(self) -> None:
        """End the job now, dropping records in flight; ``wait`` then raises JobCancelledError."""
        if not self._finished.is_set():
            self.supervisor.cancel()
            self._fail(JobCancelledError(f"job {self.name!r} was cancelled"))

    def close(self) -> None:
        """Cancel the job if it still runs and release its actors; never raises."""
        if self._status is JobStatus.CREATED:
            return
        if not self._finished.is_set():
            self.cancel()
            if not self._finished.wait(_GRACE_S):
                logger.warning("job %r: tasks did not end within %gs; killing", self.name, _GRACE_S)
                self._teardown()
        if self._watcher is not None:
            self._watcher.join(_GRACE_S)

    # -- observation ------------------------------------------------------------------

    @property
    def restarts(self) -> int:
        """Attempts started after a failure."""
        return self.supervisor.restarts

    @property
    def status(self) -> JobStatus:
        """The job's current state."""
        if self._status in (JobStatus.RUNNING, JobStatus.STOPPING) and self._finished.is_set():
            return JobStatus.at_end(self._error)
        return self._status

    @property
    def error(self) -> BaseException | None:
        """Why the job failed, once it has."""
        return self._error

    @property
    def placement(self) -> dict[str, str]:
        """The node id each task runs on, by task id."""
        return dict(self._placement)

    @property
    def service_placement(self) -> dict[str, tuple[str, ...]]:
        """The node id of each replica, by service name (while the job runs)."""
        return self._services.placement()

    @property
    def dead_letters(self) -> list[DeadLetter]:
        """Records kept by ``on_error="dead_letter"`` (gathered when the job has ended)."""
        letters = [d for o in self._outcomes.values() for d in o.dead_letters]
        return sorted(letters, key=lambda d: d.timestamp)

    @property
    def elapsed_s(self) -> float:
        """Seconds since the job started (until it ended, once it has)."""
        if self._started_at is None:
            return 0.0
        return (self._ended_at or perf_counter()) - self._started_at

    @property
    def startup_s(self) -> float:
        """Seconds from start until every task had opened and the sources began (actor
        placement, process start, function ``open``); ``elapsed_s`` minus this is the run."""
        if self._started_at is None or self._released_at is None:
            return 0.0
        return self._released_at - self._started_at

    def metrics(self) -> JobMetrics:
        """Per-operator and per-task metrics: live while running, final once ended."""
        import ray

        tasks: list[TaskStats] = []
        services: list[tuple[ServiceMetrics, ...]] = []
        live = {
            task_id: host.handle.stats.remote(self._key)
            for task_id, host in self._hosts.items()
            if task_id not in self._outcomes and not self._finished.is_set()
        }
        for task_id in self._placement:
            outcome = self._outcomes.get(task_id)
            if outcome is not None:
                tasks.append(outcome.stats)
                services.append(outcome.services)
            elif task_id in live:
                try:
                    answer = ray.get(live[task_id], timeout=_GRACE_S)
                except ray.exceptions.RayError:
                    continue  # its host died meanwhile
                if answer is None:
                    continue  # the task ended meanwhile
                stats, calls = answer
                tasks.append(stats)
                services.append(calls)
        return snapshot(
            self.name,
            self.status.value,
            self.elapsed_s,
            tasks,
            len(self.dead_letters),
            _merge_services(services),
            graph_edges(self.plan.nodes),
        )
