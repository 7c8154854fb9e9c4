"""What a ``RemoteEnvironment``'s job prints, logs and collects reaches its submitter: on a
JobManager running jobs on local threads, and on the suite's Ray cluster."""

from __future__ import annotations

import base64
import pickle
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jobmanager_helpers import Armed, CountingFactory, running_jobmanager
from typer.testing import CliRunner

from kernel.test_pipeline_properties import build_pipeline, reference, small_step
from sage.cli.main import app
from sage.common.core.functions.map_function import MapFunction
from sage.common.errors import CollectLimitError, JobError, PlanError
from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.api.remote_environment import RemoteEnvironment
from sage.kernel.jobmanager.client import JobManagerClient
from sage.kernel.jobmanager.collected import MAX_PENDING_BYTES
from sage.kernel.jobmanager.protocol import Chunk, bearer, chunk_mac, job_path
from sage.kernel.jobmanager.server import JobManagerServer
from sage.kernel.jobmanager.token import client_token

pytestmark = pytest.mark.usefixtures("home")  # a fresh $SAGE_HOME, so a fresh token


class Talk(MapFunction):
    """Prints and logs on record 3."""

    def execute(self, data: int) -> int:
        if data == 3:
            print(f"map saw {data}")
            self.logger.warning("three is here")
        return data * 10


def talking_pipeline(env: Any) -> Any:
    stream = env.from_collection(range(5)).map(Talk)
    stream.print("out: ")
    return stream.collect()


def test_prints_logs_and_records_come_back_while_submit_waits(
    any_server: JobManagerServer, capsys: pytest.CaptureFixture[str]
) -> None:
    env = RemoteEnvironment("talk", port=any_server.port)
    results = talking_pipeline(env)
    job = env.submit()
    assert sorted(results) == [0, 10, 20, 30, 40]
    printed = capsys.readouterr()
    assert sorted(printed.out.splitlines()) == sorted(
        ["(map 'Talk' 1/1) map saw 3"] + [f"(sink 'print' 1/1) out: {x}" for x in results]
    )
    assert "(map 'Talk' 1/1) WARNING sage.job.talk.map 'Talk': three is here" in printed.err
    logged = job.logs().lines
    assert any(line.endswith(" (sink 'print' 1/1) out: 30") for line in logged)
    assert any(line.endswith(" (map 'Talk' 1/1) map saw 3") for line in logged)
    assert any("WARNING sage.job.talk.map 'Talk': three is here" in line for line in logged)


def test_the_job_log_shows_the_output_in_sage_job_logs(any_server: JobManagerServer) -> None:
    env = RemoteEnvironment("logged", port=any_server.port, log_to_driver=False)
    env.from_collection(["a", "b"]).print("letter ")
    job = env.submit()
    assert job.job_id is not None
    shown = CliRunner().invoke(app, ["job", "logs", job.job_id, "--port", str(any_server.port)])
    assert shown.exit_code == 0, shown.output
    assert "(sink 'print' 1/1) letter a" in shown.output
    assert "(sink 'print' 1/1) letter b" in shown.output


def test_log_to_driver_false_keeps_the_output_in_the_log_only(
    any_server: JobManagerServer, capsys: pytest.CaptureFixture[str]
) -> None:
    env = RemoteEnvironment("quiet", port=any_server.port, log_to_driver=False)
    env.from_collection([1, 2]).print()
    job = env.submit()
    assert capsys.readouterr().out == ""
    assert sum("(sink 'print' 1/1)" in line for line in job.logs().lines) == 2


def test_after_autostop_false_wait_takes_the_output_and_the_records(
    any_server: JobManagerServer, capsys: pytest.CaptureFixture[str]
) -> None:
    env = RemoteEnvironment("later", port=any_server.port)
    results = talking_pipeline(env)
    env.submit(autostop=False)
    assert env.wait(timeout=120) is True
    assert sorted(results) == [0, 10, 20, 30, 40]
    assert "(map 'Talk' 1/1) map saw 3" in capsys.readouterr().out


def test_a_sink_appending_to_a_list_here_is_refused_before_anything_is_sent(
    factory: CountingFactory,
) -> None:
    out: list[int] = []
    counts: dict[str, int] = {}
    with running_jobmanager(factory) as server:
        env = RemoteEnvironment("lost", port=server.port)
        env.from_collection([1, 2]).sink(out.append)
        with pytest.raises(PlanError, match=r"writes to a list of this process.*\.collect\(\)"):
            env.submit()
        env = RemoteEnvironment("lost", port=server.port)
        env.from_collection([("a", 1)]).sink(lambda kv: counts.__setitem__(*kv))
        with pytest.raises(PlanError, match=r"the dict 'counts' of this process"):
            env.submit()
    assert factory.calls == [] and out == [] and counts == {}


def test_collecting_past_the_cap_fails_the_job(any_server: JobManagerServer) -> None:
    env = RemoteEnvironment("capped", port=any_server.port, config={"on_error": "skip"})
    env.from_collection(range(50)).collect(max_records=20)
    with pytest.raises(CollectLimitError, match=r"max_records=20 .*collect\(max_records=N\)"):
        env.submit()


def test_records_reach_the_submitter_with_bounded_buffers_on_the_way(
    any_server: JobManagerServer,
) -> None:
    """20 MB of records pass through a JobManager that holds about 8 MB of them at most."""
    n, size = 20_000, 1000
    env = RemoteEnvironment("big", port=any_server.port)
    results = env.from_collection(range(n)).map(lambda i: f"{i:08d}".ljust(size, "x")).collect()
    job = env.submit()
    assert len(results) == n and len({r[:8] for r in results}) == n
    entry = any_server.manager.get(job.job_id or "")
    take_bytes = 2 * 65_536 * 8  # one take of the smallest records at most, and slack
    assert n * size > MAX_PENDING_BYTES + take_bytes
    assert 0 < entry.chunks.high_water <= MAX_PENDING_BYTES + 2 * 1024 * 1024


def test_a_chunk_not_signed_with_the_token_is_never_unpickled(
    server: JobManagerServer, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    payload = pickle.dumps([Armed(marker)])
    data = base64.b64encode(payload).decode()
    token = client_token()
    assert token is not None

    def chunk(seq: int, key: str, signed_seq: int) -> Chunk:
        mac = chunk_mac(key, "job-1", signed_seq, "c", payload)
        return Chunk(seq=seq, collector="c", count=1, data=data, mac=mac)

    with JobManagerClient(port=server.port) as client:
        with pytest.raises(JobError, match="not signed with this client's JobManager token"):
            client.records("job-1", chunk(0, "another token", 0))
        with pytest.raises(JobError, match="not signed"):  # the signature of another chunk
            client.records("job-1", chunk(1, token, 0))
        assert not marker.exists()
        client.records("job-1", chunk(0, token, 0))
    assert marker.exists()  # the same bytes, signed, are unpickled: the check stopped them


@pytest.mark.parametrize(
    "query", ["line=abc", "line=-2", "chunk=-1", "chunk=inf", "line=nan", "wait=-1"]
)
def test_a_malformed_output_request_is_a_400(server: JobManagerServer, query: str) -> None:
    env = RemoteEnvironment("asked", port=server.port)
    env.from_collection([1]).collect()
    job = env.submit()
    url = f"http://{server.address}{job_path(job.job_id or '', 'output')}?{query}"
    answer = httpx.get(url, headers=bearer(client_token()))
    assert answer.status_code == 400, answer.text
    assert query.split("=")[0] in answer.json()["error"]["message"]
    assert httpx.get(url.split("?")[0], headers=bearer(client_token())).status_code == 200


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    data=st.lists(st.integers(-50, 200), max_size=300),
    steps=st.lists(small_step, max_size=4),
    batch_size=st.sampled_from([1, 7, 1024]),
)
def test_collect_gives_the_local_multiset_on_every_runtime(
    any_server: JobManagerServer,
    data: list[int],
    steps: list[tuple[str, int, int]],
    batch_size: int,
) -> None:
    config = {"batch_size": batch_size, "channel_capacity": 2}
    local = LocalEnvironment("property", config=config)
    local_result = build_pipeline(local, data, steps).collect()
    local.submit()
    remote = RemoteEnvironment("property", port=any_server.port, config=config)
    remote_result = build_pipeline(remote, data, steps).collect()
    remote.submit()
    assert Counter(remote_result) == Counter(local_result) == reference(data, steps)


SCRIPT = """
from sage.kernel.api.remote_environment import RemoteEnvironment

env = RemoteEnvironment("terminal", port={port})
squares = env.from_collection(range(4)).map(lambda x: x * x).collect()
env.from_collection(["hello", "world"]).print("said: ")
env.submit()
print("collected", sorted(squares))
"""


@pytest.mark.slow
def test_a_script_run_from_a_terminal_shows_the_jobs_prints(
    ray_cluster: Any, tmp_path: Path
) -> None:
    from sage.kernel.jobmanager.factories import RayJobFactory

    script = tmp_path / "pipeline.py"
    with running_jobmanager(RayJobFactory(ray_cluster.address)) as server:
        script.write_text(textwrap.dedent(SCRIPT.format(port=server.port)))
        done = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sorted(lines[:2]) == ["(sink 'print' 1/1) said: hello", "(sink 'print' 1/1) said: world"]
    assert lines[2:] == ["collected [0, 1, 4, 9]"]
