"""A script written from the SAGE reference's documentation (December 2025) runs unchanged.

Its quick start serves a model without embeddings on the default ports, checks the stack,
follows the logs, benchmarks the control plane with ``sage-cp-bench`` and asks the client
whether an LLM is available. Each command below is the reference's, word for word; the model
is the offline SmolLM2 in place of a hub name. The default ports must be free: under
``make test`` the suite runs in its own network namespace, where they are.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sage.common.config.ports import SagePorts

BIN = Path(sys.executable).parent  # the virtualenv's console scripts: sage, sage-cp-bench

CLIENT = """
from sage.common.components.sage_llm import UnifiedInferenceClient

client = UnifiedInferenceClient.create()
status = client.get_status()
print(status["llm_available"], status["embedding_available"], status["llm_model"])
"""


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The user's environment: the virtualenv on PATH, a fresh SAGE_HOME, a work folder."""
    ports = (SagePorts.GATEWAY_DEFAULT, SagePorts.get_recommended_llm_port())
    if not all(SagePorts.is_available(p) for p in ports):
        pytest.skip(f"the reference's default ports {ports} are taken on this machine")
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "SAGE_HOME": str(tmp_path / "home"),
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "200",
    }
    for name in ("SAGE_LLM_PORT", "SAGE_GATEWAY_PORT", "SAGE_API_KEY"):
        env.pop(name, None)
    yield env
    subprocess.run(["sage", "llm", "stop"], env=env, capture_output=True, timeout=120)


def _run(command: str, env: dict[str, str], cwd: Path) -> str:
    done = subprocess.run(
        command, shell=True, env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_the_reference_quick_start_runs_unchanged(shell: dict[str, str], tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    _run("sage llm serve -m smollm2 --no-embedding", shell, work)
    status = _run("sage llm status", shell, work)
    assert "gateway" in status and "healthy" in status and "smollm2" in status.lower()

    # `sage llm logs -f` follows until Ctrl-C: it prints the logs' ends first
    follow = subprocess.Popen(
        ["sage", "llm", "logs", "-f"],
        env=shell,
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert follow.stdout is not None
    first = follow.stdout.readline()  # blocks until it has printed something
    assert "gateway.log" in first or "llm.log" in first, first
    follow.send_signal(signal.SIGINT)
    _, err = follow.communicate(timeout=30)
    assert follow.returncode == 0, err

    _run("sage-cp-bench run -m llm -p fifo -n 100", shell, work)
    _run("sage-cp-bench compare -m llm -p fifo,priority,slo_aware -n 100", shell, work)
    results = sorted((work / "cp_bench_results").glob("*.json"))  # logs/ holds others
    assert len(results) == 2, results
    for path in results:
        runs = json.loads(path.read_text())["runs"]
        assert all(r["metrics"]["overall"]["failed"] == 0 for r in runs), path
    assert sorted(len(json.loads(p.read_text())["runs"]) for p in results) == [1, 3]

    printed = subprocess.run(
        [sys.executable, "-c", CLIENT], env=shell, capture_output=True, text=True, timeout=120
    )
    assert printed.returncode == 0, printed.stderr
    llm_available, embedding_available, model = printed.stdout.split()
    assert (llm_available, embedding_available) == ("True", "False")
    assert "smollm2" in model.lower()
    _run("sage llm stop", shell, work)
    assert "nothing is running" in _run("sage llm stop", shell, work)
