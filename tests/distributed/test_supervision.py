"""One supervisor for both runtimes: the same outcome for the same events, on local threads
and on the Ray cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from checkpoint_helpers import AlwaysFails
from sage.common.errors import JobCancelledError, OperatorError
from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.runtime.local.executor import LocalJob
from sage.kernel.runtime.status import JobStatus

RESTART_DELAY_S = 600.0  # far longer than the test: only a cancel can end the wait


def _local(env: LocalEnvironment) -> Any:
    return LocalJob(env.plan(), env.job_config, publish=False)


def _ray(env: LocalEnvironment) -> Any:
    from sage.kernel.runtime.ray.executor import RayJob

    return RayJob(env.plan(), env.job_config, env.services, log=lambda line: None)


@pytest.fixture(params=["local", pytest.param("ray", marks=pytest.mark.slow)])
def make_job(request: pytest.FixtureRequest) -> Callable[[LocalEnvironment], Any]:
    """Builds the runtime's job for a pipeline (Ray: on the suite's cluster)."""
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
        return _ray
    return _local


def test_a_cancel_during_the_restart_delay_ends_the_job_cancelled_on_both_runtimes(
    make_job: Callable[[LocalEnvironment], Any],
) -> None:
    env = LocalEnvironment(
        "delayed",
        config={
            "fault_tolerance": {
                "strategy": "restart",
                "restart_strategy": "fixed",
                "max_restarts": 3,
                "delay_s": RESTART_DELAY_S,
            }
        },
    )
    env.from_collection(list(range(100))).map(AlwaysFails).sink(lambda v: None)
    job = make_job(env)
    try:
        job.start()
        assert job.supervisor.waiting_to_restart.wait(120)  # the first attempt failed
        job.cancel()
        with pytest.raises(JobCancelledError) as info:
            job.wait(120)
    finally:
        job.close()
    assert job.status is JobStatus.CANCELLED
    assert isinstance(info.value.__cause__, OperatorError)  # the failure it interrupted
    assert "poison" in str(info.value.__cause__)
    assert job.restarts == 0
