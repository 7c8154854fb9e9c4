"""``RemoteEnvironment`` runs the same pipelines as ``LocalEnvironment``, through a JobManager
(here one in this process, running jobs on local threads)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from jobmanager_helpers import CountingFactory, running_jobmanager

from helpers import FileSink, read_parts
from sage.common.core.functions.map_function import MapFunction
from sage.common.errors import ConfigError, JobCancelledError, JobError, OperatorError
from sage.kernel.api.base_environment import BaseEnvironment
from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.api.remote_environment import RemoteEnvironment
from sage.kernel.jobmanager.server import JobManagerServer
from sage.kernel.runtime.status import JobStatus

TEXT = ["the quick brown fox", "jumps over the lazy dog", "the dog sleeps", "a fox runs"]


pytestmark = pytest.mark.usefixtures("home")  # a fresh $SAGE_HOME, so a fresh token


@pytest.fixture
def server(any_server: JobManagerServer) -> JobManagerServer:
    """A JobManager running jobs on local threads, or on the suite's Ray cluster."""
    return any_server


class WordCount(MapFunction):
    """Keyed running count: ``(word, n)`` for the n-th occurrence of ``word``."""

    def execute(self, word: str) -> tuple[str, int]:
        n = self.state.get(0) + 1
        self.state.set(n)
        return (word, n)


class Shout(MapFunction):
    """Calls the ``upper`` service."""

    def execute(self, word: str) -> str:
        return str(self.call_service["upper"].shout(word))


class Upper:
    def shout(self, word: str) -> str:
        return word.upper()


def word_count(env: BaseEnvironment, out: str) -> None:
    (
        env.from_collection(TEXT, parallelism=2)
        .flatmap(str.split, parallelism=2)
        .filter(lambda w: len(w) > 2)
        .keyby(lambda w: w, parallelism=3)
        .map(WordCount, parallelism=3)
        .sink(FileSink, out)
    )


def test_a_pipeline_gives_the_same_results_as_locally(
    server: JobManagerServer, tmp_path: Path
) -> None:
    local_out, remote_out = tmp_path / "local", tmp_path / "remote"
    local_out.mkdir()
    remote_out.mkdir()
    local = LocalEnvironment("wordcount")
    word_count(local, str(local_out))
    local.submit()

    remote = RemoteEnvironment("wordcount", port=server.port)
    word_count(remote, str(remote_out))
    job = remote.submit()

    expected = Counter(map(tuple, read_parts(str(local_out))))
    assert Counter(map(tuple, read_parts(str(remote_out)))) == expected
    assert expected[("the", 3)] == 1 and expected[("fox", 2)] == 1
    assert job.status is JobStatus.FINISHED and job.job_id is not None
    assert job.job_id.startswith("wordcount-")
    metrics = remote.metrics()
    assert metrics.operator("WordCount").records_in == sum(expected.values())
    assert remote.dead_letters == []


def test_services_registered_on_the_environment_run_with_the_job(
    server: JobManagerServer, tmp_path: Path
) -> None:
    env = RemoteEnvironment("services", port=server.port)
    env.register_service("upper", Upper)
    env.from_collection(["a", "b"]).map(Shout).sink(FileSink, str(tmp_path))
    env.submit()
    assert sorted(read_parts(str(tmp_path))) == ["A", "B"]


def test_a_failing_operator_raises_operator_error_naming_it(server: JobManagerServer) -> None:
    env = RemoteEnvironment("failing", port=server.port)
    env.from_collection([1, 2, 0]).map(lambda x: 10 // x, name="divide").sink(lambda x: None)
    with pytest.raises(OperatorError) as err:
        env.submit()
    error = err.value
    assert error.operator == "map 'divide'" and error.phase == "execute"
    assert (error.instance, error.parallelism) == (0, 1)
    assert "ZeroDivisionError" in str(error) and "on_error" in str(error)
    assert env.job is not None and env.job.status is JobStatus.FAILED
    with pytest.raises(OperatorError):  # like a local job, wait() raises it again
        env.wait()


def test_autostop_false_returns_at_once_and_stop_ends_the_job(server: JobManagerServer) -> None:
    env = RemoteEnvironment("endless", port=server.port)
    env.from_source(lambda: 1).sink(lambda x: None)
    job = env.submit(autostop=False)
    try:
        assert job.status in (JobStatus.RUNNING, JobStatus.STOPPING)
        assert env.wait(timeout=0.05) is False
        with pytest.raises(JobError, match="still running"):
            env.submit()
        assert env.stop(timeout=30) is True
        assert job.status is JobStatus.FINISHED
        assert "stop requested" in "\n".join(job.logs().lines)
    finally:
        env.close()


def test_close_cancels_a_running_job(server: JobManagerServer) -> None:
    env = RemoteEnvironment("cancelled", port=server.port)
    env.from_source(lambda: 1).sink(lambda x: None)
    job = env.submit(autostop=False)
    env.close()
    assert job.status is JobStatus.CANCELLED
    assert server.manager.get(job.job_id or "").status == "cancelled"
    with pytest.raises(JobCancelledError):
        job.wait()  # answered from its last state: the job has ended


def test_nothing_is_sent_when_the_plan_is_invalid(factory: CountingFactory) -> None:
    from sage.common.errors import PlanError

    with running_jobmanager(factory) as server:
        env = RemoteEnvironment("empty", port=server.port)
        with pytest.raises(PlanError):
            env.submit()
    assert factory.calls == [] and server.manager.jobs() == []


def test_the_seed_example_constructs_without_connecting_or_touching_files(home: Path) -> None:
    env = RemoteEnvironment(
        name="distributed_app",
        host="127.0.0.1",
        port=19001,
        config={"ray": {"address": "ray://localhost:10001", "num_cpus": 32, "num_gpus": 4}},
    )
    assert env.ray_options.num_gpus == 4 and env.ray_options.address == "ray://localhost:10001"
    assert not home.exists()  # no token read, no state written
    code = (
        "import sys\n"
        "from sage.kernel.api import RemoteEnvironment\n"
        "env = RemoteEnvironment('r', config={'ray': {'num_cpus': 2}})\n"
        "env.from_collection(range(3)).map(str).sink(print)\n"
        "env.plan()\n"
        "print(sorted(m for m in ('ray', 'httpx', 'cloudpickle') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_without_a_jobmanager_submit_says_how_to_start_one() -> None:
    from sage.common.config.ports import SagePorts

    port = SagePorts.any_free_port()
    env = RemoteEnvironment("nowhere", port=port)
    env.from_collection([1]).sink(lambda x: None)
    with pytest.raises(JobError, match=f"sage jobmanager start --host 127.0.0.1 --port {port}"):
        env.submit()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"host": ""}, "host=''"),
        ({"host": 127001}, "host=127001"),
        ({"port": 0}, "port=0 is invalid.*1-65535"),
        ({"port": 70000}, "port=70000"),
        ({"port": "19001"}, "port='19001'"),
        ({"port": True}, "port=True"),
        ({"config": {"ray": {"num_cpu": 4}}}, "did you mean 'num_cpus'"),
        ({"config": {"ray": {"num_gpus": -1}}}, r"num_gpus.*>= 0"),
        ({"config": {"ray": {"address": 10001}}}, "address"),
        ({"config": {"ray": "ray://h:10001"}}, "must be a dict"),
    ],
)
def test_invalid_arguments_are_refused_with_the_fix(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RemoteEnvironment("bad", **kwargs)


def test_it_is_importable_where_local_environment_is() -> None:
    from sage.core.api.remote_environment import RemoteEnvironment as Core
    from sage.kernel.api import RemoteEnvironment as Api

    assert Core is Api is RemoteEnvironment


def _reject_threes(x: int) -> int:
    if x % 3 == 0:
        raise ValueError(f"{x} is a multiple of 3")
    return x


def test_dead_letters_come_back_from_the_jobmanager(server: JobManagerServer) -> None:
    env = RemoteEnvironment("letters", port=server.port, config={"on_error": "dead_letter"})
    env.from_collection(range(10)).map(_reject_threes, name="NoThrees").sink(lambda x: None)
    env.submit()
    letters = env.dead_letters
    assert sorted(d.record for d in letters) == [0, 3, 6, 9]
    assert {d.operator for d in letters} == {"map 'NoThrees'"}
    assert all(d.error.startswith("ValueError: ") and "Traceback" in d.traceback for d in letters)
