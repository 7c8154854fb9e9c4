"""The gateway load test, shortened: 600 requests at concurrency 32 over three simulated
instances, one SIGKILLed at 40% and started again on its port. No request may be lost or
hang, every one is accounted for, and the gateway's RSS grows by less than 50 MB.

The full run is ``benchmarks/gateway_load.py`` (5,000 requests at concurrency 64); both use
:mod:`sage.benchmark.gateway_load`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sage.benchmark.gateway_load import LoadConfig, Outcome, run_load
from sage.common.errors import ConfigError

# -- the bookkeeping (no processes) ---------------------------------------------------------


def test_the_kill_point_and_the_streamed_share() -> None:
    config = LoadConfig(requests=600, concurrency=32)
    config.validate()
    assert config.kill_index == 240
    assert sum(config.streamed(i) for i in range(600)) == 60
    assert LoadConfig(kill_at=None).kill_index is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("requests", 0),
        ("kill_at", 1.0),
        ("stream_share", 2.0),
        ("deadline_s", 0.0),
        ("engine", "vllm"),
    ],
)
def test_bad_settings_are_named(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        LoadConfig(**{field: value}).validate()  # type: ignore[arg-type]


def test_a_single_instance_cannot_be_killed() -> None:
    with pytest.raises(ConfigError, match="instances"):
        LoadConfig(instances=1).validate()


def test_how_requests_are_counted() -> None:
    def outcome(stream: bool = False, **fields: object) -> Outcome:
        return Outcome(0, stream, started=1.0, ended=3.0, **fields)  # type: ignore[arg-type]

    kill = 2.0
    assert outcome(status=200, complete=True).category(kill) == "ok"
    assert outcome(status=429, retry_after="1").category(kill) == "retryable"
    assert outcome(status=429).category(kill) == "lost"  # no Retry-After: not retryable
    assert outcome(status=503).category(kill) == "retryable"
    assert outcome(status=500).category(kill) == "lost"
    assert outcome(status=200).category(kill) == "lost"  # incomplete answer
    assert outcome(error="ConnectError").category(kill) == "lost"
    assert outcome(status=200, timed_out=True).category(kill) == "hung"
    # a stream cut after its answer started counts apart only if it was in flight at the kill
    assert outcome(True, status=200).category(kill) == "stream cut"
    assert outcome(True, status=200).category(5.0) == "lost"
    assert outcome(True, status=200).category(None) == "lost"


# -- the shortened load run --------------------------------------------------------------------


@pytest.mark.slow
def test_no_request_is_lost_when_an_instance_is_killed_and_restarted(tmp_path: Path) -> None:
    config = LoadConfig(requests=600, concurrency=32, kill_at=0.4, warmup=100, deadline_s=20.0)
    result = run_load(config, tmp_path)

    assert all(o.category(None) == "ok" for o in result.warmup_outcomes)
    assert result.accounted
    assert result.gateway_requests == config.requests
    counts = result.categories()
    assert sum(counts.values()) == config.requests
    assert counts["lost"] == 0 and counts["hung"] == 0, (
        f"{counts}; logs in {tmp_path}: " + "; ".join(result.errors())
    )
    assert counts["ok"] > 0.9 * config.requests
    assert result.rss_growth_mb < 50

    # the kill hit requests in flight, the gateway ran them again, the instance came back
    assert result.failed_dispatches() >= 1
    failover = result.failover
    assert failover is not None and not failover.error, failover
    assert failover.back_s is not None and failover.back_s > failover.killed_s
    served = failover.served_after_back(result.gateway_end)
    assert served is not None and served > 0
