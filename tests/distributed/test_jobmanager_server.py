"""The JobManager over HTTP: the token guards everything, jobs run and report, waits are
event-driven, history and logs are bounded, and shutdown cancels what still runs."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from jobmanager_helpers import Armed, CountingFactory, running_jobmanager

from sage.common.config.ports import SagePorts
from sage.common.errors import ConfigError, JobError
from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.jobmanager.client import JobManagerClient
from sage.kernel.jobmanager.managed import ManagedJob
from sage.kernel.jobmanager.manager import JobManager
from sage.kernel.jobmanager.pickling import dumps_submission
from sage.kernel.jobmanager.protocol import (
    HEALTH_PATH,
    JOBS_PATH,
    SUBMISSION_CONTENT_TYPE,
    JobInfo,
    Submission,
    bearer,
    job_path,
)
from sage.kernel.jobmanager.server import JobManagerServer
from sage.kernel.jobmanager.token import TOKEN_ENV, client_token, token_file

pytestmark = pytest.mark.usefixtures("home")  # a fresh $SAGE_HOME, so a fresh token


@pytest.fixture
def client(server: JobManagerServer) -> Iterator[JobManagerClient]:
    with JobManagerClient(server.host, server.port) as client:
        yield client


def squares(n: int = 5) -> Submission:
    env = LocalEnvironment("squares")
    env.from_collection(range(n)).map(lambda x: x * x).sink(lambda x: None)
    return Submission(env.name, env.plan(), env.config, env.services, autostop=True)


def endless(name: str = "endless") -> Submission:
    """A job that runs until it is stopped or cancelled."""
    env = LocalEnvironment(name)
    env.from_source(lambda: 1).sink(lambda x: None)
    return Submission(env.name, env.plan(), env.config, env.services, autostop=False)


def failing() -> Submission:
    env = LocalEnvironment("failing")
    env.from_collection([1, 2, 0]).map(lambda x: 10 // x, name="divide").sink(lambda x: None)
    return Submission(env.name, env.plan(), env.config, env.services)


def client_headers() -> dict[str, str]:
    """What a client holding this account's token sends."""
    return bearer(client_token())


# -- the token --------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer not-the-token"}])
def test_without_the_token_nothing_is_decoded_or_run(
    server: JobManagerServer, factory: CountingFactory, tmp_path: Path, headers: dict[str, str]
) -> None:
    marker = tmp_path / "unpickled"
    url = f"http://{server.address}"
    for body in (pickle.dumps(Armed(marker)), dumps_submission(squares())):
        answer = httpx.post(
            url + JOBS_PATH,
            content=body,
            headers={**headers, "content-type": SUBMISSION_CONTENT_TYPE},
        )
        assert answer.status_code == 401
        assert answer.json()["error"]["type"] == "authentication_error"
    for path in (HEALTH_PATH, JOBS_PATH, job_path("x"), job_path("x", "wait")):
        assert httpx.get(url + path, headers=headers).status_code == 401
    assert not marker.exists()
    assert factory.calls == []
    assert server.manager.jobs() == []


def test_a_client_with_a_wrong_token_is_told_where_the_token_comes_from(
    server: JobManagerServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "not-the-token")
    with JobManagerClient(server.host, server.port) as client, pytest.raises(ConfigError) as err:
        client.submit(squares())
    assert TOKEN_ENV in str(err.value) and str(token_file()) in str(err.value)


def test_a_client_without_a_token_is_told_how_to_get_one(server: JobManagerServer) -> None:
    token_file().unlink()  # as on an account that never started the JobManager
    with JobManagerClient(server.host, server.port) as client, pytest.raises(ConfigError) as err:
        client.list()
    assert "does not exist" in str(err.value) and TOKEN_ENV in str(err.value)


def test_the_token_file_is_created_owner_only_on_first_start(server: JobManagerServer) -> None:
    assert token_file().exists() and token_file().stat().st_mode & 0o077 == 0


# -- jobs -------------------------------------------------------------------------------------


def test_a_job_runs_and_reports_its_info_metrics_and_log(
    client: JobManagerClient, factory: CountingFactory
) -> None:
    submitted = client.submit(squares(5))
    assert submitted.status == "running" and submitted.job_id.startswith("squares-")
    assert len(submitted.job_id) == len("squares-") + 6

    info = client.wait(submitted.job_id, timeout=30)
    assert info.status == "finished" and info.error is None
    assert info.ended_at is not None and info.ended_at >= info.submitted_at
    assert [j.job_id for j in client.list()] == [submitted.job_id]
    assert len(factory.calls) == 1 and factory.calls[0].name == "squares"

    metrics = client.metrics(submitted.job_id)
    by_kind = {op["kind"]: op for op in metrics["operators"]}
    assert by_kind["map"]["records_in"] == 5 and by_kind["sink"]["records_in"] == 5

    log = client.logs(submitted.job_id)
    text = "\n".join(log.lines)
    assert "submitted" in text and "started" in text and "finished" in text
    assert log.next == len(log.lines) and log.status == "finished"
    assert client.logs(submitted.job_id, since=log.next).lines == []
    assert client.health().jobs == 1


def test_a_failed_job_reports_the_operator_and_its_traceback(client: JobManagerClient) -> None:
    job_id = client.submit(failing()).job_id
    info = client.wait(job_id, timeout=30)
    assert info.status == "failed" and info.error is not None
    error = info.error
    assert error.type == "OperatorError" and error.operator == "map 'divide'"
    assert (error.instance, error.parallelism, error.phase) == (0, 1, "execute")
    assert "ZeroDivisionError" in error.message
    assert "Traceback" in "\n".join(client.logs(job_id).lines)


def test_wait_returns_when_the_job_ends_not_when_the_poll_times_out(
    client: JobManagerClient,
) -> None:
    job_id = client.submit(endless()).job_id
    assert client.wait(job_id, timeout=0.05).status == "running"  # the timeout is honoured

    waiting: list[JobInfo] = []
    waiter = threading.Thread(target=lambda: waiting.append(client.wait(job_id)))
    waiter.start()  # blocks server-side, for up to a full long-poll...
    assert client.health().status == "ok"  # ...without blocking the server
    stopping = client.stop(job_id)
    assert stopping.status in ("stopping", "finished")
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    assert waiting[0].status == "finished" and waiting[0].error is None


def test_a_cancelled_job_ends_cancelled(client: JobManagerClient) -> None:
    job_id = client.submit(endless()).job_id
    client.cancel(job_id)
    info = client.wait(job_id, timeout=30)
    assert info.status == "cancelled"
    assert info.error is not None and info.error.type == "JobCancelledError"


def test_an_unknown_job_is_a_404_that_says_where_to_look(
    client: JobManagerClient, server: JobManagerServer
) -> None:
    for call in (client.info, client.wait, client.stop, client.cancel, client.metrics, client.logs):
        with pytest.raises(JobError, match=r"no job 'nope-123456'.*sage job list"):
            call("nope-123456")
    answer = httpx.get(
        f"http://{server.address}{job_path('nope-123456')}", headers=client_headers()
    )
    assert answer.status_code == 404 and answer.json()["error"]["type"] == "not_found_error"


def test_a_submission_the_server_cannot_decode_is_a_400(
    server: JobManagerServer, factory: CountingFactory
) -> None:
    answer = httpx.post(
        f"http://{server.address}{JOBS_PATH}", content=b"not a pickle", headers=client_headers()
    )
    assert answer.status_code == 400 and "cannot decode the submission" in answer.text
    assert factory.calls == []


def test_no_jobmanager_is_an_error_that_says_how_to_start_one() -> None:
    port = SagePorts.any_free_port()
    with JobManagerClient("127.0.0.1", port, token="t") as client, pytest.raises(JobError) as err:
        client.list()
    assert f"sage jobmanager start --host 127.0.0.1 --port {port}" in str(err.value)
    assert "--ray-address" in str(err.value)


def test_stopping_the_server_cancels_running_jobs(factory: CountingFactory) -> None:
    with (
        running_jobmanager(factory) as server,
        JobManagerClient(server.host, server.port) as client,
    ):
        job_id = client.submit(endless()).job_id
    entry = server.manager.get(job_id)
    assert entry.status == "cancelled" and entry.thread is not None
    assert not entry.thread.is_alive()


# -- bounds -----------------------------------------------------------------------------------


def test_history_keeps_the_latest_ended_jobs() -> None:
    manager = JobManager(CountingFactory(), max_history=2)
    entries = [manager.submit(squares(2)) for _ in range(4)]
    for entry in entries:
        assert entry.ended.wait(30)
    manager.shutdown()
    assert [e.job_id for e in manager.jobs()] == [e.job_id for e in entries[-2:]]
    with pytest.raises(KeyError):
        manager.get(entries[0].job_id)


def test_a_job_log_keeps_its_last_lines_and_numbers_them() -> None:
    entry = ManagedJob("j-000000", squares(), max_log_lines=3)
    for i in range(5):
        entry.log(f"line {i}")
    page = entry.logs(0)
    assert [line.split(" ", 2)[2] for line in page.lines] == ["line 2", "line 3", "line 4"]
    assert page.next == 5
    assert [line.split(" ", 2)[2] for line in entry.logs(4).lines] == ["line 4"]
    assert entry.logs(5).lines == []
