"""Checkpoints and restarts on the local runtime: a task fails mid-run, the job resumes from
the last checkpoint, and the keyed counts and the sink's output come out exactly once."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from checkpoint_helpers import (
    AlwaysFails,
    Numbers,
    RunningCount,
    SignallingSink,
    check_exactly_once,
    checkpointed,
)
from sage.common.core.functions.map_function import MapFunction
from sage.common.errors import ConfigError, OperatorError
from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.checkpoint import RestartsExhaustedError, TransactionalFileSink

N = 200_000
failed = threading.Event()  # set by the injected failure (once per test)


class PausingNumbers(Numbers):
    """Holds back record ``pause_at`` until a checkpoint is complete (returning nothing
    meanwhile, so the source keeps answering barriers), then goes on."""

    def __init__(self, n: int, pause_at: int, **kwargs: Any) -> None:
        super().__init__(n, **kwargs)
        self.pause_at = pause_at

    def execute(self) -> Any:
        if self.offset == self.pause_at and not checkpointed.wait(0.005):
            return None
        return super().execute()


class FailOnce(MapFunction):
    """Raises on record ``at`` the first time it sees it."""

    def __init__(self, at: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.at = at

    def execute(self, row: tuple[int, int, int]) -> tuple[int, int, int]:
        if row[1] == self.at and not failed.is_set():
            failed.set()
            raise RuntimeError(f"injected failure at record {self.at}")
        return row


@pytest.fixture(autouse=True)
def _reset_events() -> None:
    checkpointed.clear()
    failed.clear()


def test_a_task_failure_resumes_from_the_last_checkpoint_exactly_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = LocalEnvironment(
        "fault_injection",
        config={
            "fault_tolerance": {
                "strategy": "checkpoint",
                "checkpoint_dir": str(tmp_path / "ckpt"),
                "checkpoint_interval": 0.5,
                "restart_strategy": "fixed",
                "max_restarts": 2,
                "delay_s": 0.05,
            }
        },
    )
    (
        env.from_source(PausingNumbers, N, pause_at=N // 2)
        .keyby(lambda v: v % 37)
        .map(RunningCount, parallelism=2)
        .map(FailOnce, N * 3 // 4, parallelism=2)
        .sink(SignallingSink, out, parallelism=2)
    )
    job = env.submit()
    assert failed.is_set() and job.restarts == 1
    assert job.checkpoints_completed >= 1
    check_exactly_once(out, N)
    assert list((tmp_path / "ckpt" / "fault_injection").glob("chk-*.ckpt"))


def test_restarts_without_checkpoints_replay_from_the_start_and_commit_once(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    env = LocalEnvironment(
        "replay", config={"fault_tolerance": {"strategy": "restart", "delay_s": 0.01}}
    )
    (
        env.from_collection(list(range(5_000)), parallelism=2)
        .keyby(lambda v: v % 37)
        .map(RunningCount)
        .map(FailOnce, 4_000)
        .sink(TransactionalFileSink, out)
    )
    job = env.submit()
    assert job.restarts == 1
    check_exactly_once(out, 5_000)


def test_the_restart_strategy_gives_up_with_the_cause() -> None:
    env = LocalEnvironment(
        "poison",
        config={"fault_tolerance": {"strategy": "restart", "max_restarts": 2, "delay_s": 0.01}},
    )
    env.from_collection(list(range(100))).map(AlwaysFails).sink(lambda v: None)
    with pytest.raises(RestartsExhaustedError, match="after 2 restart") as info:
        env.submit()
    assert "fixed: 2 restarts" in str(info.value)
    assert isinstance(info.value.__cause__, OperatorError)
    assert "AlwaysFails" in str(info.value.__cause__) and "poison" in str(info.value)
    assert env.job is not None and env.job.restarts == 2


def test_a_one_shot_iterator_cannot_feed_a_restarting_job() -> None:
    env = LocalEnvironment("gen", config={"fault_tolerance": {"strategy": "restart"}})
    env.from_collection(v for v in range(3)).sink(lambda v: None)
    with pytest.raises(ConfigError, match=r"one-shot iterator.*from_collection"):
        env.submit()


class Stateless(Numbers):
    state_fields = ()


def test_checkpoints_need_a_source_that_says_where_it_is() -> None:
    env = LocalEnvironment("stateless", config={"fault_tolerance": {"strategy": "checkpoint"}})
    env.from_source(Stateless, 3).sink(lambda v: None)
    with pytest.raises(ConfigError, match="get_state"):
        env.submit()


def test_bad_fault_tolerance_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match="checkpoint_interval"):
        LocalEnvironment(
            "bad", config={"fault_tolerance": {"strategy": "checkpoint", "checkpoint_interval": 0}}
        ).from_collection([1]).sink(lambda v: None).env.submit()  # type: ignore[attr-defined]
