"""The management API: list, add and remove instances at run time; read and switch the
scheduling policy; the gateway's figures as JSON.

Removing an instance without losing a request: ``DELETE
/v1/management/instances/<id>?drain=true&timeout_s=60`` (:class:`~sage.inference.protocol.
management.DrainOptions`). The instance is marked draining at once: it gets no new request,
and requests waiting in the gateway for its model go to the model's other instances. The
call then waits (on an event, set when its ``in_flight`` reaches 0) until its requests in
flight are done, unregisters it and answers ``{"removed": id, "drained": n}``, ``n`` being
the requests it waited for. Errors (OpenAI-style, ``param`` naming the culprit):

* 404 — no such instance.
* 409 ``last_instance`` — it is the last healthy instance of its model, whose requests
  would then fail; ``force=true`` drains it anyway (new requests for the model wait in
  the queue meanwhile: they get 503 once it is gone, and later ones 404, the model being
  served no more).
* 409 ``already_draining`` — another drain of it is under way.
* 409 ``drain_timeout`` — after ``timeout_s`` some requests were still in flight: the
  message says how many, and the instance is put back in rotation, as before the call
  (a failed drain changes nothing; retry with a longer ``timeout_s``).

A plain ``DELETE`` (no ``drain``) removes it at once, as it always did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any
from urllib.parse import parse_qsl

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
from sage.inference.control_plane.instances import Instance, InstanceRegistry
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
from sage.inference.protocol.management import DrainOptions

__all__ = ["Management", "drain_options"]


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
        options = drain_options(request.query)
        drained = None
        if options.drain:
            instance = self.registry.get(instance_id)
            if instance is None:
                raise gateway_error(404, f"no instance {instance_id!r}", param="instance_id")
            drained = await self._drain(instance, options)
            if self.registry.get(instance_id) is not instance:
                raise gateway_error(
                    404,
                    f"instance {instance_id!r} was removed at once by another call while it "
                    "drained",
                    param="instance_id",
                )
        try:
            await self.registry.remove(instance_id)
            self.dispatcher.router.forget(instance_id)
        except KeyError:
            raise gateway_error(404, f"no instance {instance_id!r}", param="instance_id") from None
        removed = InstanceRemoved(removed=instance_id, drained=drained)
        return json_response(removed.model_dump(exclude_none=True))  # plain: as it always was

    async def _drain(self, instance: Instance, options: DrainOptions) -> int:
        """Take ``instance`` out of rotation and wait for its requests in flight; how many
        there were. Refusals and the timeout raise (see the module docstring), leaving it in
        rotation."""
        registry, kind, model = (
            self.registry,
            instance.config.instance_type,
            instance.config.model_name,
        )
        if instance.draining:
            raise gateway_error(
                409,
                f"instance {instance.id!r} is already being drained; wait for that call",
                param="instance_id",
                code="already_draining",
            )
        others = [
            i
            for i in registry.of_model(kind, model)
            if i is not instance and i.healthy and not i.draining
        ]
        if instance.healthy and not others and not options.force:
            raise gateway_error(
                409,
                f"instance {instance.id!r} is the last healthy {kind} instance of {model!r}: "
                "once drained, requests for the model would fail. Add another instance "
                "first, or drain it anyway with force=true",
                param="instance_id",
                code="last_instance",
            )
        waited_for = instance.in_flight
        registry.drain(instance)
        try:
            done = await registry.idle(instance, options.timeout_s)
        except BaseException:  # cancelled (the gateway stops): leave it as it was
            registry.drain(instance, False)
            raise
        if not done:
            registry.drain(instance, False)
            left = instance.in_flight
            raise gateway_error(
                409,
                f"instance {instance.id!r} still has {left} request{'s' * (left != 1)} in flight "
                f"after draining for {options.timeout_s:g} s; it is back in rotation. Retry "
                "with a longer timeout_s, or remove it at once without drain=true",
                param="instance_id",
                code="drain_timeout",
            )
        return waited_for

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


def drain_options(query: str) -> DrainOptions:
    """The options of ``DELETE /v1/management/instances/<id>?...`` (:class:`DrainOptions`).

    Raises:
        HttpError: 400 naming the parameter: unknown, given twice, or of a bad value.
    """
    pairs = parse_qsl(query, keep_blank_values=True)
    values: dict[str, str] = {}
    for name, value in pairs:
        if name not in DrainOptions.model_fields:
            raise gateway_error(
                400,
                f"unknown query parameter {name!r}; this route takes drain, timeout_s and force "
                "(e.g. ?drain=true&timeout_s=60)",
                param=name,
            )
        if name in values:
            raise gateway_error(
                400, f"query parameter {name!r} is given twice; give it once", param=name
            )
        values[name] = value
    try:
        options = DrainOptions.model_validate(values)
    except ValidationError as exc:
        error = error_from_validation(exc).error
        raise gateway_error(400, f"invalid query: {error.message}", param=error.param) from None
    if not options.drain and ("force" in values or "timeout_s" in values):
        name = "force" if "force" in values else "timeout_s"
        raise gateway_error(
            400, f"{name} is for a drain; add drain=true (or leave {name} out)", param=name
        )
    return options
