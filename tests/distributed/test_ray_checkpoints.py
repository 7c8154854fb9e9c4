"""Checkpoints and restarts on Ray: a host process is killed mid-run, the job resumes on live
hosts from the last checkpoint, and the keyed counts and the sink's output come out exactly
once (on the suite's three-node loopback cluster)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from checkpoint_helpers import AlwaysFails, Numbers, RunningCount, check_exactly_once
from sage.common.core.functions.map_function import MapFunction
from sage.common.errors import OperatorError
from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.checkpoint import RestartsExhaustedError, TransactionalFileSink
from sage.kernel.checkpoint.state import END_OF_INPUT
from sage.kernel.runtime.ray.executor import RayJob

pytestmark = pytest.mark.slow

N = 200_000
SIGNAL = "checkpoint-signal"


class Signal:
    """An event other processes can set and wait on (a named actor)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    async def wait(self) -> None:
        await self._event.wait()

    async def send(self) -> None:
        self._event.set()


def _signal() -> Any:
    import ray

    return ray.get_actor(SIGNAL, namespace="sage-tests")


class PausingNumbers(Numbers):
    """Holds back record ``pause_at`` until a checkpoint is complete, answering barriers
    meanwhile (it returns nothing while it waits)."""

    def __init__(self, n: int, pause_at: int, **kwargs: Any) -> None:
        super().__init__(n, **kwargs)
        self.pause_at = pause_at
        self._waiting: Any = None

    def execute(self) -> Any:
        if self.offset == self.pause_at:
            import ray

            if self._waiting is None:
                self._waiting = _signal().wait.remote()
            ready, _ = ray.wait([self._waiting], timeout=0.005)
            if not ready:
                return None
        return super().execute()


class KillOnce(MapFunction):
    """Kills its own worker process (SIGKILL) on record ``at``, the first time only."""

    def __init__(self, at: int, marker: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.at = at
        self.marker = Path(marker)

    def execute(self, row: tuple[int, int, int]) -> tuple[int, int, int]:
        if row[1] == self.at and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return row


class SignallingSink(TransactionalFileSink):
    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        super().notify_checkpoint_complete(checkpoint_id)
        if checkpoint_id != END_OF_INPUT:
            _signal().send.remote()


def test_a_killed_worker_resumes_from_the_last_checkpoint_exactly_once(
    ray_cluster: Any, tmp_path: Path
) -> None:
    import ray

    event = ray.remote(Signal).options(name=SIGNAL, namespace="sage-tests").remote()
    out, marker = tmp_path / "out", tmp_path / "killed"
    env = LocalEnvironment(
        "ray_fault_injection",
        config={
            "fault_tolerance": {
                "strategy": "checkpoint",
                "checkpoint_dir": str(tmp_path / "ckpt"),
                "checkpoint_interval": 0.5,
                "max_restarts": 2,
                "delay_s": 0.1,
            }
        },
    )
    (
        env.from_source(PausingNumbers, N, pause_at=N // 2)
        .keyby(lambda v: v % 37)
        .map(RunningCount, parallelism=2)
        .map(KillOnce, N * 3 // 4, str(marker), parallelism=2)
        .sink(SignallingSink, str(out), parallelism=2)
    )
    job = RayJob(env.plan(), env.job_config, env.services)
    try:
        job.run()
    finally:
        job.close()
        ray.kill(event)
    assert marker.exists() and job.restarts == 1
    check_exactly_once(out, N)


def test_the_restart_strategy_gives_up_on_ray_with_the_cause(ray_cluster: Any) -> None:
    env = LocalEnvironment(
        "ray_poison",
        config={
            "fault_tolerance": {
                "strategy": "restart",
                "restart_strategy": "exponential",
                "initial_delay_s": 0.01,
                "max_restarts": 1,
            }
        },
    )
    env.from_collection(list(range(100))).map(AlwaysFails).sink(lambda v: None)
    job = RayJob(env.plan(), env.job_config, env.services)
    try:
        with pytest.raises(RestartsExhaustedError, match="after 1 restart") as info:
            job.run()
    finally:
        job.close()
    assert "exponential" in str(info.value) and "poison" in str(info.value)
    assert isinstance(info.value.__cause__, OperatorError)
    assert "AlwaysFails" in str(info.value.__cause__)
    assert job.restarts == 1
