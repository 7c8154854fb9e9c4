"""Instance health: each instance is probed on an interval, and leaves or rejoins the rotation
by the answer."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sage.common.http import BackendUnavailable
from sage.inference.control_plane.instances import Instance, InstanceRegistry

__all__ = ["PROBE_TIMEOUT_S", "HealthChecks"]

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0
"""Longest one probe may take."""


class HealthChecks:
    """Probes the instances of a registry (``GET <base>/models``), at once or on an interval.

    Args:
        registry: The instances.
        interval_s: Seconds between rounds of :meth:`run`.
    """

    def __init__(self, registry: InstanceRegistry, interval_s: float) -> None:
        self.registry = registry
        self.interval_s = interval_s

    async def check(self, instance: Instance) -> None:
        """Health = answering ``GET <base>/models``, which every OpenAI-compatible server has.

        The probe has its own connection, so it never queues behind the instance's requests.
        A probe that times out while the instance has requests in flight (a busy CPU engine
        answers slowly) leaves it in rotation: a hung instance is taken out when those
        requests reach ``request_timeout_s``. A refused connection, an error status, or a
        timeout while idle takes it out at once.
        """
        try:
            result = await asyncio.wait_for(
                instance.probe.request("GET", instance.path("/v1/models"), b"", instance.headers),
                PROBE_TIMEOUT_S,
            )
            ok = result.status == 200
            self.registry.mark(instance, ok, "" if ok else f"health check answered {result.status}")
        except TimeoutError:
            if instance.in_flight:  # busy, not dead: a hung one is caught by request timeouts
                instance.last_error = "health check slow while busy (requests in flight)"
                return
            self.registry.mark(instance, False, f"health check timed out after {PROBE_TIMEOUT_S} s")
        except BackendUnavailable as exc:
            self.registry.mark(instance, False, str(exc))
        except Exception as exc:  # one broken instance must not end every instance's checks
            logger.warning("health check of instance %s failed: %r", instance.id, exc)
            self.registry.mark(instance, False, f"health check failed: {exc!r}")

    async def check_all(self) -> None:
        """Probe every instance at once."""
        await asyncio.gather(*(self.check(i) for i in self.registry.all()))

    async def run(self, stopping: asyncio.Event) -> None:
        """Probe every instance each :attr:`interval_s` until ``stopping`` is set."""
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):  # the interval passed: check again
                await asyncio.wait_for(stopping.wait(), self.interval_s)
            await self.check_all()
