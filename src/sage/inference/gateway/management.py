"""The management API: list, add and remove instances at run time; read and switch the
scheduling policy; the gateway's figures as JSON."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from pydantic import ValidationError

from sage.common.errors import ConfigError
from sage.common.http import Request, Response, json_response
from sage.inference.config import (
    BackendInstanceConfig,
    RoutingPolicyType,
    SchedulingPolicyType,
    UnifiedServerConfig,
)
from sage.inference.control_plane.dispatcher import Dispatcher
from sage.inference.control_plane.instances import InstanceRegistry
from sage.inference.gateway.errors import gateway_error
from sage.inference.gateway.health import HealthChecks
from sage.inference.protocol import (
    GatewayMetrics,
    InstanceAdded,
    InstanceList,
    InstanceRemoved,
    InstanceSpec,
    InstanceState,
    PolicyState,
    error_from_validation,
)

__all__ = ["Management"]


class Management:
    """The handlers of ``/v1/management/...`` (each checks the API key first).

    Args:
        config: The gateway's configuration (``scheduling_policy`` follows a switch).
        registry: The instances.
        dispatcher: The control plane.
        health: Probes an instance added at run time before it is answered for.
        check_key: Refuses a request without an accepted API key.
        snapshot: The gateway's figures as JSON.
    """

    def __init__(
        self,
        config: UnifiedServerConfig,
        registry: InstanceRegistry,
        dispatcher: Dispatcher,
        health: HealthChecks,
        check_key: Callable[[Request], None],
        snapshot: Callable[[], dict[str, Any]],
    ) -> None:
        self.config = config
        self.registry = registry
        self.dispatcher = dispatcher
        self._health = health
        self._check_key = check_key
        self._snapshot = snapshot

    async def metrics(self, request: Request) -> Response:
        self._check_key(request)
        return json_response(GatewayMetrics.model_validate(self._snapshot()))

    async def list_instances(self, request: Request) -> Response:
        self._check_key(request)
        states = [InstanceState.model_validate(i.describe()) for i in self.registry.all()]
        return json_response(InstanceList(instances=states))

    async def add_instance(self, request: Request) -> Response:
        self._check_key(request)
        payload = request.json()
        if not isinstance(payload, dict):
            raise gateway_error(400, "body must be a JSON object with host, port, model_name, ...")
        try:  # checked in full first: a bad field must not get registered and break later
            spec = InstanceSpec.model_validate(payload)
        except ValidationError as exc:
            error = error_from_validation(exc).error
            raise gateway_error(
                400, f"invalid instance: {error.message}", param=error.param
            ) from None
        try:
            config = BackendInstanceConfig(**spec.model_dump())
            instance = self.registry.add(config)
        except ConfigError as exc:
            raise gateway_error(400, f"invalid instance: {exc}", param="instance_id") from None
        await self._health.check(instance)
        state = InstanceState.model_validate(instance.describe())
        return json_response(InstanceAdded(instance=state, config=asdict(config)), status=201)

    async def remove_instance(self, request: Request) -> Response:
        self._check_key(request)
        instance_id = request.params["instance_id"]  # as the client wrote it (decoded)
        try:
            await self.registry.remove(instance_id)
            self.dispatcher.router.forget(instance_id)
        except KeyError:
            raise gateway_error(404, f"no instance {instance_id!r}", param="instance_id") from None
        return json_response(InstanceRemoved(removed=instance_id))

    def _policy_state(self) -> PolicyState:
        dispatcher = self.dispatcher
        return PolicyState.model_validate(
            {
                "policy": str(dispatcher.policy),
                "active_policy": str(dispatcher.active_policy),
                "routing": str(dispatcher.router.policy),
            }
        )

    async def get_policy(self, request: Request) -> Response:
        self._check_key(request)
        return json_response(self._policy_state())

    async def set_policy(self, request: Request) -> Response:
        self._check_key(request)
        payload = request.json()
        payload = payload if isinstance(payload, dict) else {}
        name, routing = payload.get("policy"), payload.get("routing")
        unknown = sorted(set(payload) - {"policy", "routing"})
        if unknown:
            raise gateway_error(
                400,
                f"unknown field {unknown[0]!r}; give 'policy' and/or 'routing'",
                param=unknown[0],
            )
        if name is None and routing is None:
            raise gateway_error(
                400, "give 'policy' (scheduling) and/or 'routing' (placement)", param="policy"
            )
        if name is not None and not self.config.enable_control_plane:
            raise gateway_error(
                409,
                "the control plane is off (enable_control_plane=False): requests go in "
                "arrival order; restart the gateway with it on to choose a policy",
                param="policy",
            )
        try:
            policy = None if name is None else SchedulingPolicyType.parse(name)
        except ConfigError as exc:
            raise gateway_error(400, str(exc), param="policy") from None
        try:
            placement = None if routing is None else RoutingPolicyType.parse(routing)
        except ConfigError as exc:
            raise gateway_error(400, str(exc), param="routing") from None
        if policy is not None:
            self.config.scheduling_policy = self.dispatcher.set_policy(policy)
        if placement is not None:
            self.config.routing_policy = self.dispatcher.router.set_policy(placement)
        return json_response(self._policy_state())
