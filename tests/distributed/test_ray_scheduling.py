"""On Ray, a job's ``priority`` / ``slo_ms`` reach the inference server as on the local
runtime: from task actors (an operator's own client) and from service actors (the fields
travel with each remote service call)."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.test_scheduling_propagation import CALLS, build, by_tag
from recording_server import RecordingServer
from sage.kernel.api.local_environment import LocalEnvironment
from sage.kernel.runtime.ray.executor import RayJob

pytestmark = pytest.mark.slow


def test_job_fields_and_an_override_reach_the_server_from_task_and_service_actors(
    ray_cluster: Any,
) -> None:
    with RecordingServer() as server:
        env = LocalEnvironment("rag", config={"priority": 0, "slo_ms": 800})
        build(env, server.url, priority=3)
        job = RayJob(env.plan(), env.job_config, env.services)
        try:
            job.run()
        finally:
            job.close()
        seen = by_tag(server)
    assert len(seen) == 2 * len(CALLS)
    for tag in ("a", "b"):
        for call in CALLS[:3]:  # the service's replica actor
            assert seen[f"{tag}/{call}"] == ("0", "800.0"), call
        for call in CALLS[3:]:  # the operator's task actor
            assert seen[f"{tag}/{call}"] == ("3", "800.0"), call
