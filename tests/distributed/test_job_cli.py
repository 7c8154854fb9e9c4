"""``sage jobmanager`` and ``sage job``: against an in-process JobManager (CliRunner), and
start -> submit -> status -> stop as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner, Result

from helpers import FileSink, read_parts
from sage.cli.main import app
from sage.common.config.ports import SagePorts
from sage.kernel.api.remote_environment import RemoteEnvironment
from sage.kernel.jobmanager.daemon import log_file, state_file
from sage.kernel.jobmanager.server import JobManagerServer

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_terminal(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh ``$SAGE_HOME`` and tables wide enough not to wrap."""
    monkeypatch.setenv("COLUMNS", "200")


def sage(*args: str) -> Result:
    return runner.invoke(app, list(args))


def finished_job(server: JobManagerServer) -> str:
    env = RemoteEnvironment("cli_job", port=server.port)
    env.from_collection(range(3)).map(lambda x: x + 1, name="inc").sink(lambda x: None)
    job = env.submit()
    assert job.job_id is not None
    return job.job_id


def test_job_list_status_and_logs(server: JobManagerServer) -> None:
    port = str(server.port)
    empty = sage("job", "list", "--port", port)
    assert empty.exit_code == 0 and "no jobs yet" in empty.output

    job_id = finished_job(server)
    listed = sage("job", "list", "--port", port)
    assert listed.exit_code == 0, listed.output
    assert job_id in listed.output and "finished" in listed.output

    status = sage("job", "status", job_id, "--port", port)
    assert status.exit_code == 0, status.output
    assert "finished" in status.output and "map 'inc'" in status.output
    shown = sage("job", "show", job_id, "--port", port)  # the reference's name
    assert shown.exit_code == 0 and shown.output == status.output

    logs = sage("job", "logs", job_id, "--port", port)
    assert logs.exit_code == 0, logs.output
    assert "submitted" in logs.output and "finished" in logs.output


def test_job_logs_follow_ends_when_the_job_ends(server: JobManagerServer) -> None:
    env = RemoteEnvironment("followed", port=server.port)
    env.from_source(lambda: 1).sink(lambda x: None)
    job = env.submit(autostop=False)
    assert job.job_id is not None
    # Whether the stop lands before or while the log is followed, following ends with it.
    stopper = threading.Thread(target=env.stop, kwargs={"timeout": 30})
    stopper.start()
    try:
        followed = sage("job", "logs", job.job_id, "--follow", "--port", str(server.port))
    finally:
        stopper.join(30)
        env.close()
    assert followed.exit_code == 0, followed.output
    assert followed.output.rstrip().endswith("finished")


def test_job_stop_and_cancel(server: JobManagerServer) -> None:
    for command, outcome in (("stop", "finished"), ("cancel", "cancelled"), ("force", "cancelled")):
        env = RemoteEnvironment(f"to_{command}", port=server.port)
        env.from_source(lambda: 1).sink(lambda x: None)
        job = env.submit(autostop=False)
        assert job.job_id is not None
        args = ["stop", "--force"] if command == "force" else [command]
        result = sage("job", *args, job.job_id, "--port", str(server.port))
        assert result.exit_code == 0, result.output
        assert outcome in result.output
        env.close()


def test_an_unknown_job_is_an_error_without_a_traceback(server: JobManagerServer) -> None:
    result = sage("job", "status", "nope-000000", "--port", str(server.port))
    assert result.exit_code == 1
    assert "no job 'nope-000000'" in result.stderr and "sage job list" in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_jobmanager_status_against_a_running_and_a_missing_jobmanager(
    server: JobManagerServer,
) -> None:
    running = sage("jobmanager", "status", "--port", str(server.port))
    assert running.exit_code == 0, running.output
    assert "running" in running.output and "local" in running.output

    free = str(SagePorts.any_free_port())
    missing = sage("jobmanager", "status", "--port", free)
    assert missing.exit_code == 1
    assert f"sage jobmanager start --host 127.0.0.1 --port {free}" in missing.stderr
    job_list = sage("job", "list", "--port", free)
    assert job_list.exit_code == 1 and "sage jobmanager start" in job_list.stderr


# -- real processes ---------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sage.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


class DoubleIt:
    """A function class of this test module: the JobManager process gets its code by value."""

    def execute(self, x: int) -> int:
        return 2 * x


@pytest.mark.slow
def test_start_submit_status_stop_as_processes(home: Path, tmp_path: Path) -> None:
    port, pid = SagePorts.any_free_port(), -1
    started = cli("jobmanager", "start", "--port", str(port), "--runtime", "local")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"127.0.0.1:{port}" in started.stdout and "token" in started.stdout
        state = json.loads(state_file().read_text())
        pid = int(state["pid"])
        assert state["port"] == port and psutil.pid_exists(pid)
        assert log_file().exists()

        again = cli("jobmanager", "start", "--port", str(port))
        assert again.returncode == 1 and "already running" in again.stderr

        out = tmp_path / "out"
        out.mkdir()
        env = RemoteEnvironment("across", port=port)
        env.from_collection(range(6), parallelism=2).map(DoubleIt).sink(FileSink, str(out))
        job = env.submit()
        assert sorted(read_parts(str(out))) == [0, 2, 4, 6, 8, 10]

        status = cli("jobmanager", "status")  # finds the port in the state file
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"127.0.0.1:{port} (pid {pid})" in status.stdout
        listed = cli("job", "list")
        assert listed.returncode == 0 and str(job.job_id) in listed.stdout

        restarted = cli("jobmanager", "restart")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert "stopped the JobManager" in restarted.stdout
        assert f"127.0.0.1:{port}" in restarted.stdout and "runtime: local" in restarted.stdout
        old, pid = pid, int(json.loads(state_file().read_text())["pid"])
        assert pid != old and psutil.pid_exists(pid)
        assert cli("jobmanager", "status").returncode == 0
    finally:
        stopped = cli("jobmanager", "stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "stopped the JobManager" in stopped.stdout
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not state_file().exists()
    gone = cli("jobmanager", "status", "--port", str(port))
    assert gone.returncode == 1 and "sage jobmanager start" in gone.stderr
    nothing = cli("jobmanager", "restart")
    assert nothing.returncode == 1 and "sage jobmanager start" in nothing.stderr
