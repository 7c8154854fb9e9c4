"""Restart strategies decide on the times they are given: fixed, exponential, failure rate."""

from __future__ import annotations

from typing import Any

import pytest

from sage.common.errors import ConfigError
from sage.kernel.checkpoint.restart import (
    ExponentialBackoff,
    FailureRate,
    FixedDelay,
    restart_strategy,
)


def test_no_section_or_another_strategy_means_no_restarts() -> None:
    assert restart_strategy(None) is None
    assert restart_strategy({"strategy": "none"}) is None
    checkpointing = restart_strategy({"strategy": "checkpoint", "checkpoint_dir": "/tmp/x"})
    assert isinstance(checkpointing, FixedDelay)  # checkpoints are for restarting from


def test_fixed_restarts_a_bounded_number_of_times_with_its_delay() -> None:
    strategy = restart_strategy(
        {"strategy": "restart", "restart_strategy": "fixed", "max_restarts": 2, "delay_s": 0.5}
    )
    assert isinstance(strategy, FixedDelay)
    assert [strategy.on_failure(t) for t in (1.0, 2.0, 3.0)] == [0.5, 0.5, None]
    assert strategy.describe() == "fixed: 2 restarts, 0.5 s apart"


def test_fixed_is_the_default_restart_strategy() -> None:
    strategy = restart_strategy({"strategy": "restart"})
    assert isinstance(strategy, FixedDelay) and strategy.max_restarts == 3


def test_exponential_doubles_up_to_its_cap_and_resets_after_a_quiet_spell() -> None:
    strategy = restart_strategy(
        {
            "strategy": "restart",
            "restart_strategy": "exponential",
            "initial_delay_s": 1,
            "max_delay_s": 5,
            "reset_after_s": 100,
        }
    )
    assert isinstance(strategy, ExponentialBackoff)
    delays = [strategy.on_failure(t) for t in (0.0, 1.0, 2.0, 3.0, 4.0)]
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert strategy.on_failure(200.0) == 1.0  # 196 s without a failure: back to the start


def test_exponential_with_max_restarts_gives_up() -> None:
    strategy = ExponentialBackoff(initial_delay_s=0.1, max_restarts=2)
    assert [strategy.on_failure(t) for t in (0.0, 1.0, 2.0)] == [0.1, 0.2, None]


def test_failure_rate_gives_up_only_when_too_many_failures_fall_in_the_interval() -> None:
    strategy = restart_strategy(
        {
            "strategy": "restart",
            "restart_strategy": "failure_rate",
            "max_failures": 2,
            "interval_s": 10,
            "delay_s": 0.2,
        }
    )
    assert isinstance(strategy, FailureRate)
    assert strategy.on_failure(0.0) == 0.2
    assert strategy.on_failure(5.0) == 0.2
    assert strategy.on_failure(20.0) == 0.2  # the first two have left the window
    assert strategy.on_failure(21.0) == 0.2
    assert strategy.on_failure(22.0) is None  # three within 10 s


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"strategy": "restart", "restart_strategy": "linear"}, "'linear' is unknown; use one of"),
        ({"strategy": "restart", "max_restart": 3}, "did you mean 'max_restarts'"),
        ({"strategy": "restart", "delay_s": 0}, "'delay_s'\\]=0 is invalid for fixed; use seconds"),
        ({"strategy": "restart", "max_restarts": -1}, "use an integer >= 0"),
        ({"strategy": "restart", "max_restarts": True}, "use an integer >= 0"),
        (
            {"strategy": "restart", "restart_strategy": "exponential", "multiplier": 1},
            "use a number > 1",
        ),
        (
            {"strategy": "restart", "restart_strategy": "failure_rate", "max_failures": 0},
            "use an integer >= 1",
        ),
    ],
)
def test_bad_settings_name_the_key_and_the_fix(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        restart_strategy(section)
