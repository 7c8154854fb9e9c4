"""The Ray runtime on a three-node loopback cluster: same results as the local runtime,
tasks spread over the nodes, exact keyed state, ordered channels, GPU services on the GPU
node, and failures that name their operator.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import FileSink, read_parts
from kernel.test_pipeline_properties import RunningCount, build_pipeline, reference, small_step
from sage.common.core.functions.map_function import MapFunction
from sage.common.core.functions.source_function import SourceFunction
from sage.common.errors import ConfigError, OperatorError, ServiceError
from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.api.remote_environment import RemoteEnvironment
from sage.kernel.jobmanager.factories import RayJobFactory
from sage.kernel.jobmanager.server import JobManagerServer
from sage.kernel.jobmanager.token import TOKEN_ENV
from sage.kernel.runtime.output import OutputLine
from sage.kernel.runtime.ray.executor import RayJob

pytestmark = pytest.mark.slow


def run_on_ray(env: LocalEnvironment) -> RayJob:
    """Run ``env``'s pipeline on the connected Ray cluster (what the JobManager does)."""
    job = RayJob(env.plan(), env.job_config, env.services)
    try:
        job.run()
    finally:
        job.close()
    return job


@pytest.fixture(scope="module")
def jobmanager(ray_cluster: Any) -> Iterator[JobManagerServer]:
    """A JobManager in this process running jobs on the suite's Ray cluster."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TOKEN_ENV, "property-tests")
        with JobManagerServer(job_factory=RayJobFactory(ray_cluster.address), port=0) as server:
            # the first job joins the cluster from a thread that lives as long as the server
            warm_up = RemoteEnvironment("warm_up", port=server.port)
            warm_up.from_collection([1]).sink(print)
            warm_up.submit()
            yield server


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    data=st.lists(st.integers(-50, 200), max_size=200),
    steps=st.lists(small_step, min_size=1, max_size=4),
    batch_size=st.sampled_from([1, 7, 1024]),
)
def test_random_pipelines_give_the_local_multisets_through_remote_environment(
    jobmanager: JobManagerServer,
    data: list[int],
    steps: list[tuple[str, int, int]],
    batch_size: int,
) -> None:
    config = {"batch_size": batch_size, "channel_capacity": 2}
    local_out: list[Any] = []
    local = LocalEnvironment("property", config=config)
    build_pipeline(local, data, steps).sink(local_out.append)
    local.submit()
    with tempfile.TemporaryDirectory() as directory:
        remote = RemoteEnvironment("property", port=jobmanager.port, config=config)
        build_pipeline(remote, data, steps).sink(FileSink, directory, parallelism=2)
        remote.submit()
        assert Counter(read_parts(directory)) == Counter(local_out) == reference(data, steps)


def test_keyed_state_is_exact_with_tasks_on_every_node(ray_cluster: Any, tmp_path: Any) -> None:
    words = [f"w{i % 37}" for i in range(6000)]
    env = LocalEnvironment("keyed", config={"parallelism": 3, "batch_size": 64})
    (
        env.from_collection(words, parallelism=2)
        .keyby(lambda w: w)
        .map(RunningCount, lambda w: w)
        .sink(FileSink, str(tmp_path))
    )
    job = run_on_ray(env)
    assert set(job.placement.values()) == {
        ray_cluster.head,
        ray_cluster.worker,
        ray_cluster.gpu_worker,
    }
    final: dict[str, int] = {}
    for key, n in read_parts(str(tmp_path)):
        final[key] = max(final.get(key, 0), n)
    assert final == dict(Counter(words))
    metrics = job.metrics()
    assert metrics.status == "finished"
    assert metrics.operator("sink 'FileSink'").records_in == len(words)


def test_channels_keep_each_senders_order(ray_cluster: Any, tmp_path: Any) -> None:
    """Pushes run concurrently in the receiver; items still arrive in the order sent."""
    env = LocalEnvironment(
        "order", config={"batch_size": 3, "channel_capacity": 1, "chaining": False}
    )
    env.from_collection(range(3000)).map(lambda x: x + 1).sink(FileSink, str(tmp_path))
    run_on_ray(env)
    assert read_parts(str(tmp_path)) == list(range(1, 3001))


class WhereAmI:
    """A service reporting the node and GPUs Ray gave its replica."""

    def where(self, _: Any) -> tuple[str, list[int]]:
        import ray

        return ray.get_runtime_context().get_node_id(), [int(g) for g in ray.get_gpu_ids()]


class AskService(MapFunction):
    def execute(self, data: Any) -> Any:
        return self.call_service["gpu"].where(data)


def test_a_gpu_service_runs_only_on_the_node_with_a_gpu(ray_cluster: Any, tmp_path: Any) -> None:
    env = LocalEnvironment("gpu", config={"parallelism": 3})
    env.register_service("gpu", WhereAmI, num_gpus=1)
    env.from_collection(range(30)).map(AskService).sink(FileSink, str(tmp_path))
    job = RayJob(env.plan(), env.job_config, env.services)
    try:
        job.start()
        assert job.service_placement == {"gpu": (ray_cluster.gpu_worker,)}
        job.wait(60)
    finally:
        job.close()
    answers = read_parts(str(tmp_path))
    assert len(answers) == 30
    assert {node for node, _ in answers} == {ray_cluster.gpu_worker}
    assert all(gpus == [0] for _, gpus in answers)
    # the tasks that called it ran on every node
    assert len(set(job.placement.values())) == 3


def test_a_service_asking_for_more_gpus_than_the_cluster_has_is_refused(ray_cluster: Any) -> None:
    env = LocalEnvironment("greedy")
    env.register_service("gpu", WhereAmI, num_gpus=1, replicas=2)
    env.from_collection([1]).map(AskService).sink(lambda x: None)
    with pytest.raises(ConfigError, match=r"reserve 2 GPUs .* has 1"):
        RayJob(env.plan(), env.job_config, env.services).start()


def test_a_job_asking_for_more_cpus_than_the_cluster_has_is_refused(ray_cluster: Any) -> None:
    env = LocalEnvironment("seed", config={"ray": {"num_cpus": 32, "num_gpus": 4}})
    env.from_collection([1]).sink(lambda x: None)
    with pytest.raises(ConfigError, match=r"asks for 32 CPUs .*lower num_cpus"):
        RayJob(env.plan(), env.job_config, env.services).start()


def _explode(x: int) -> int:
    if x == 77:
        raise ValueError("bad record")
    return x


def test_a_failing_record_names_its_operator_and_ends_every_task(ray_cluster: Any) -> None:
    env = LocalEnvironment("boom", config={"parallelism": 2, "batch_size": 8})
    env.from_collection(range(500)).map(_explode, name="Explode").sink(lambda x: None)
    with pytest.raises(OperatorError, match=r"map 'Explode' \(instance ./2\) failed on record 77"):
        run_on_ray(env)


class Broken(MapFunction):
    def __init__(self) -> None:
        raise RuntimeError("cannot build")


def test_a_function_that_cannot_be_built_fails_the_start(ray_cluster: Any) -> None:
    env = LocalEnvironment("unbuildable")
    env.from_collection([1, 2]).map(Broken).sink(lambda x: None)
    with pytest.raises(Exception, match="cannot build"):
        run_on_ray(env)


class Forever(SourceFunction):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def execute(self) -> int:
        self.n += 1
        return self.n


def test_stop_ends_an_unbounded_source_and_drains_what_is_in_flight(
    ray_cluster: Any, tmp_path: Any
) -> None:
    env = LocalEnvironment("forever", config={"batch_size": 16})
    env.from_source(Forever).map(lambda x: x * 2).sink(FileSink, str(tmp_path))
    job = RayJob(env.plan(), env.job_config, env.services)
    try:
        job.start()
        while job.metrics().operator("sink 'FileSink'").records_in < 100:
            assert job.status.value == "running"  # the source never ends by itself
        assert job.stop(timeout=60)
    finally:
        job.close()
    out = read_parts(str(tmp_path))
    assert out and out == [2 * i for i in range(1, len(out) + 1)]  # a gap-free prefix
    assert job.status.value == "finished"


class ServiceWithFallback(MapFunction):
    def execute(self, data: int) -> Any:
        return self.call_service["flaky"].double(data)


class Flaky:
    def double(self, x: int) -> int:
        if x % 2:
            raise RuntimeError("odd")
        return 2 * x


class Steady:
    def double(self, x: int) -> int:
        return -2 * x


def test_service_fallback_works_across_actors(ray_cluster: Any, tmp_path: Any) -> None:
    env = LocalEnvironment("fallback", config={"parallelism": 2})
    env.register_service("flaky", Flaky, fallback=Steady)
    env.from_collection(range(10)).map(ServiceWithFallback).sink(FileSink, str(tmp_path))
    job = run_on_ray(env)
    assert sorted(read_parts(str(tmp_path))) == sorted(
        2 * x if x % 2 == 0 else -2 * x for x in range(10)
    )
    flaky = job.metrics().service("flaky")
    assert flaky.fallbacks == 5


class FailingSetup:
    def setup(self) -> None:
        raise OSError("no model file")

    def run(self, x: Any) -> Any:
        return x


def test_a_service_that_fails_setup_fails_the_start_with_its_name(ray_cluster: Any) -> None:
    env = LocalEnvironment("nosetup")
    env.register_service("model", FailingSetup)
    env.from_collection([1]).sink(lambda x: None)
    with pytest.raises(
        ServiceError, match=r"service 'model': setup\(\) of FailingSetup .*no model file"
    ):
        run_on_ray(env)


class Chatty(MapFunction):
    def execute(self, data: int) -> int:
        if data == 3:
            self.ctx.logger.info("saw record %d", data)
        return data


def test_function_logs_reach_the_jobs_output_as_they_are_written(ray_cluster: Any) -> None:
    env = LocalEnvironment("chatty")
    env.from_collection(range(5)).map(Chatty, name="Chatty").sink(lambda x: None)
    lines: list[str] = []
    output: list[OutputLine] = []
    job = RayJob(env.plan(), env.job_config, env.services, log=lines.append, output=output.extend)
    try:
        job.run()
    finally:
        job.close()
    assert [(o.origin, o.stream, o.text) for o in output] == [
        ("map 'Chatty' 1/1", "stderr", "INFO sage.job.chatty.map 'Chatty': saw record 3")
    ]
    assert any(line.startswith("started 1 task(s) on 1 node(s)") for line in lines)
    assert lines[-1].startswith("ended: finished after")


def test_jobs_reuse_the_hosts_of_earlier_jobs(ray_cluster: Any, tmp_path: Any) -> None:
    """Hosts outlive jobs: a second job of the same shape starts no new actor, and a
    cancelled job's leftovers do not leak into the next job on the same hosts."""
    from sage.kernel.runtime.ray.hosts import host_pool

    def job(directory: Any) -> LocalEnvironment:
        env = LocalEnvironment("reuse", config={"parallelism": 2, "batch_size": 4})
        env.from_collection(range(400)).map(lambda x: x * 3).sink(FileSink, str(directory))
        return env

    (tmp_path / "a").mkdir()
    run_on_ray(job(tmp_path / "a"))
    idle = host_pool().idle_count()
    (tmp_path / "b").mkdir()
    cancelled = RayJob(job(tmp_path / "b").plan(), LocalEnvironment("x").job_config)
    try:
        cancelled.start()
        cancelled.cancel()
    finally:
        cancelled.close()
    (tmp_path / "c").mkdir()
    run_on_ray(job(tmp_path / "c"))
    assert host_pool().idle_count() <= idle
    assert sorted(read_parts(str(tmp_path / "c"))) == [3 * x for x in range(400)]


def test_a_pooled_host_that_died_is_replaced(ray_cluster: Any, tmp_path: Any) -> None:
    import ray

    from sage.kernel.runtime.ray.hosts import host_pool

    env = LocalEnvironment("revive", config={"batch_size": 8})
    env.from_collection(range(50)).map(lambda x: x + 1).sink(FileSink, str(tmp_path))
    pool = host_pool()
    victims = pool.acquire(3, 0.01)  # idle hosts, as a job would borrow them
    for host in victims:
        ray.kill(host.handle, no_restart=True)  # they die while idle (a node went away)
    pool.give_back(victims)
    lines: list[str] = []
    job = RayJob(env.plan(), env.job_config, env.services, log=lines.append)
    try:
        job.run()
    finally:
        job.close()
    assert sorted(read_parts(str(tmp_path))) == list(range(1, 51))
    assert any("its pooled host had died; starting a new one" in line for line in lines)
