"""Forwarding one API request: the control plane admits it (or queues it by the policy),
it rides along a batched embedding call or goes alone to the instance it was placed on,
runs again on another instance if that one fails before the answer started, and its
answer is passed on (a stream relayed event by event)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from time import perf_counter

import orjson

from sage.common.http import REQUEST_ID, BackendUnavailable, Request, Response, StreamResponse
from sage.inference.config import UnifiedServerConfig
from sage.inference.control_plane.batching import (
    batch_key,
    merge_inputs,
    split_answer,
    texts_of,
)
from sage.inference.control_plane.dispatcher import (
    Dispatcher,
    NoInstance,
    QueueFull,
    Ticket,
    settle_riders,
)
from sage.inference.control_plane.instances import Instance, InstanceRegistry
from sage.inference.control_plane.queues import PendingRequest
from sage.inference.gateway.errors import gateway_error
from sage.inference.gateway.relay import StreamRelay
from sage.inference.gateway.routes import API_KINDS
from sage.inference.gateway.scheduling import pending_request, place_by
from sage.inference.gateway.tenants import Tenants, usage_tokens
from sage.inference.protocol import CLASS_HEADER

__all__ = ["Forwarder"]

logger = logging.getLogger(__name__)


def _split(status: int, answer: bytes, counts: list[int]) -> list[bytes] | None:
    """A batched call's answer per member, or ``None`` if it is not a good one."""
    if status != 200:
        return None
    try:
        return split_answer(answer, counts)
    except (ValueError, orjson.JSONDecodeError, AttributeError, TypeError):
        logger.warning("a batched embedding answer could not be split; members go alone")
        return None


class Forwarder:
    """The handler of the API routes (:data:`~.routes.API_KINDS`).

    Args:
        config: The gateway's configuration.
        registry: The instances.
        dispatcher: The control plane's queues and policy.
        check_key: Refuses a request without an accepted API key.
        tenants: Who sent a request, and its tenant's rate limits (default: from
            ``config.tenants``, on the dispatcher's clock).
    """

    def __init__(
        self,
        config: UnifiedServerConfig,
        registry: InstanceRegistry,
        dispatcher: Dispatcher,
        check_key: Callable[[Request], None],
        tenants: Tenants | None = None,
    ) -> None:
        self.config = config
        self.registry = registry
        self.dispatcher = dispatcher
        self._check_key = check_key
        self.tenants = tenants or Tenants(config, dispatcher.clock)
        self.requests = 0
        """API requests received."""

    async def __call__(self, request: Request) -> Response | StreamResponse:
        """Answer one API request (see the module docstring).

        Raises:
            HttpError: a 4xx naming the parameter (no key, unknown model, a field out of
                bounds), 429 (queue full, or the tenant over its rate limit), 503 (no
                instance can serve it).
        """
        self._check_key(request)
        registry, dispatcher = self.registry, self.dispatcher
        kind = API_KINDS[request.path]
        body = request.json()
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str) or not model:
            raise gateway_error(400, "'model' is required and must be a string", param="model")
        if not registry.serves(kind, model):
            served = ", ".join(registry.models(kind)) or "(none)"
            raise gateway_error(
                404,
                f"model {model!r} is not served here; {kind} models: {served}",
                param="model",
                code="model_not_found",
            )
        assert isinstance(body, dict)
        limit = self.config.max_tokens_limit
        if limit is not None and kind == "llm":
            for field_name in ("max_tokens", "max_completion_tokens"):
                asked = body.get(field_name)
                if isinstance(asked, int) and not isinstance(asked, bool) and asked > limit:
                    raise gateway_error(
                        400,
                        f"'{field_name}'={asked} is more than this gateway allows ({limit}); "
                        f"ask for at most {limit}",
                        param=field_name,
                        code="max_tokens_too_large",
                    )
        tenants = self.tenants
        tenant = tenants.name_of(request)
        pending, payload = pending_request(
            request, kind, model, body, self.config, dispatcher.clock(), tenant
        )
        place_by(pending, request, body, dispatcher.router)
        class_name = request.headers.get(CLASS_HEADER) or None
        stream = kind == "llm" and body.get("stream") is True
        key = batch_key(body) if kind == "embedding" else None
        texts = len(texts_of(body) or ()) if kind == "embedding" else 1
        self.requests += 1
        limits = tenants.admit(tenant, pending.cost)  # x-ratelimit-* headers of a limited tenant
        waiting = tenants.counts[tenant]
        arrived = perf_counter()
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            ticket = Ticket(loop.create_future(), body, key, max(texts, 1))
            waiting.queued += 1
            try:
                grant = await dispatcher.admit(pending, ticket, retry=failures > 0)
            except NoInstance:
                waited = perf_counter() - arrived
                dispatcher.record(pending, waited, 0.0, True, class_name, waited)
                raise gateway_error(
                    503,
                    f"no healthy instance serves {model!r} now; retry later",
                    code="unavailable",
                ) from None
            except QueueFull as full:
                raise gateway_error(
                    429,
                    f"the gateway's queue for {model!r} is full ({full}); retry after "
                    f"{full.retry_after_s} s",
                    code="queue_full",
                    headers={"retry-after": str(full.retry_after_s)},
                ) from None
            finally:
                waiting.queued -= 1
            queued = perf_counter() - arrived
            if grant.instance is None:  # riding on another request's batched call
                assert grant.outcome is not None
                outcome = await grant.outcome
                if outcome is None:  # the call failed: go again, alone
                    failures += 1
                    key = None
                    continue
                status, answer = outcome
                elapsed = perf_counter() - arrived
                dispatcher.record(pending, elapsed, elapsed, status >= 500, class_name, queued)
                return Response(status, answer, "application/json", limits)
            instance = grant.instance
            send = payload
            if grant.riders:
                send, counts = merge_inputs([body, *(r.payload.body for r in grant.riders)])
            dispatched = perf_counter()
            try:
                result = await instance.pool.request(
                    "POST",
                    instance.path(request.path),
                    send,
                    {**instance.headers, REQUEST_ID: request.id},
                    stream=stream,
                    timeout_s=self.config.request_timeout_s,  # swept: no timer per request
                )
            except asyncio.CancelledError:
                # The client left (the HTTP server cancels its handler): the pool has closed
                # the instance's connection, so the engine drops the request; give the slot
                # back and let riders go again alone.
                dispatcher.finish(pending, instance, dispatched, failed=True)
                settle_riders(grant.riders, None)
                raise
            except BackendUnavailable as exc:  # BackendTimeout too
                # Nothing reached the client yet, so the request can run again elsewhere
                # (its tenant was served nothing: 0 tokens used, what it was charged comes back).
                dispatcher.finish(pending, instance, dispatched, failed=True, used_tokens=0)
                registry.mark(instance, False, str(exc) or type(exc).__name__)
                settle_riders(grant.riders, None)
                logger.warning("instance %s failed (request %s): %s", instance.id, request.id, exc)
                failures += 1
                if failures <= len(registry.of_model(kind, model)) and registry.has_healthy(
                    kind, model
                ):
                    continue
                dispatcher.record(pending, perf_counter() - arrived, 0.0, True, class_name, queued)
                raise gateway_error(
                    503, f"instance {instance.id} failed: {exc}", code="unavailable"
                ) from None
            content_type = result.headers.get("content-type", "application/json")
            if result.chunks is None:
                failed = result.status >= 500
                used = None  # fair share, cost: what it used, when the answer says (cheap)
                priced = instance.config.cost_per_1k_tokens is not None
                if (tenants.fair_share or priced) and not failed and not grant.riders:
                    used = usage_tokens(result.body)
                dispatcher.finish(pending, instance, dispatched, failed=failed, used_tokens=used)
                answer = result.body
                if grant.riders:
                    parts = _split(result.status, result.body, counts)
                    if parts is not None:
                        answer = parts[0]
                        settle_riders(grant.riders, [(200, part) for part in parts[1:]])
                    else:  # let each go again alone and get its own answer
                        settle_riders(grant.riders, None)
                        if result.status < 500:
                            failures += 1
                            key = None
                            continue
                elapsed = perf_counter() - arrived
                dispatcher.record(pending, elapsed, elapsed, failed, class_name, queued)
                return Response(result.status, answer, content_type, limits)
            settle = partial(
                self._settle, pending, instance, dispatched, arrived, queued, class_name
            )
            relay = StreamRelay(
                result.chunks,
                settle,
                self.config.request_timeout_s,
                self.config.stream_chunk_timeout_s,
            )
            return StreamResponse(relay, result.status, content_type, limits)

    def _settle(
        self,
        pending: PendingRequest,
        instance: Instance,
        dispatched: float,
        arrived: float,
        queued: float,
        class_name: str | None,
        failed: bool,
        first: float | None,
    ) -> None:
        """A streamed request ended: give back its slot and record it."""
        dispatcher = self.dispatcher
        dispatcher.finish(pending, instance, dispatched, failed=failed, first_byte=first)
        end = perf_counter()
        dispatcher.record(
            pending, end - arrived, (first or end) - arrived, failed, class_name, queued
        )
