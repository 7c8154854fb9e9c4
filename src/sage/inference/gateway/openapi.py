"""The gateway's OpenAPI 3.1 document (``GET /openapi.json``), built from the wire models.

Request and response bodies are the pydantic models of
:mod:`~sage.inference.protocol` (one wire schema for servers, client and
tests); the management routes' answers are described by the small models below, which
follow what :class:`~sage.inference.gateway.server.UnifiedAPIServer` sends. Every
model's JSON schema comes from pydantic, with its ``$defs`` placed under
``components/schemas`` and its references pointing there. Errors are OpenAI-style
:class:`~sage.inference.protocol.ErrorResponse` bodies.

Example:
    >>> document = openapi_document()
    >>> document["openapi"], "/v1/chat/completions" in document["paths"]
    ('3.1.0', True)
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from sage.inference.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResponse,
    InstanceSpec,
    ModelList,
)

__all__ = [
    "GatewayHealth",
    "GatewayMetrics",
    "InstanceAdded",
    "InstanceList",
    "InstanceRemoved",
    "InstanceState",
    "PolicyChange",
    "PolicyState",
    "openapi_document",
    "openapi_json",
]

_REF = "#/components/schemas/{model}"

PolicyName = Literal["fifo", "priority", "slo_aware", "hybrid", "adaptive"]


class GatewayHealth(BaseModel):
    """``GET /health``: the gateway is up; how many of its instances are in rotation."""

    status: Literal["ok"]
    instances: int = Field(ge=0)
    healthy: int = Field(ge=0)
    policy: PolicyName
    active_policy: PolicyName | None


class InstanceState(BaseModel):
    """One instance as the management routes describe it."""

    instance_id: str
    host: str
    port: int
    model_name: str
    instance_type: Literal["llm", "embedding"]
    max_concurrent_requests: int
    healthy: bool
    in_flight: int
    requests: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    ttft_p95_ms: float | None
    last_error: str


class InstanceList(BaseModel):
    """``GET /v1/management/instances``."""

    instances: list[InstanceState]


class InstanceAdded(BaseModel):
    """``POST /v1/management/instances`` (201): the new instance and its configuration."""

    instance: InstanceState
    config: dict[str, Any]


class InstanceRemoved(BaseModel):
    """``DELETE /v1/management/instances/{instance_id}``."""

    removed: str


class PolicyState(BaseModel):
    """``GET|PUT /v1/management/policy``: the configured policy and the one in use now
    (they differ under ``adaptive``)."""

    policy: PolicyName
    active_policy: PolicyName


class PolicyChange(BaseModel):
    """``PUT /v1/management/policy`` (names are case-insensitive; ``hybrid_slo`` is
    ``hybrid``)."""

    policy: PolicyName | Literal["hybrid_slo"]


class GatewayMetrics(BaseModel):
    """``GET /v1/management/metrics``: counters, queues, per-class and per-instance figures
    (``UnifiedAPIServer.metrics_snapshot``)."""

    model_config = ConfigDict(extra="allow")

    total_requests: int
    rejected: int
    policy: PolicyName
    active_policy: PolicyName
    queued: int
    instances: list[InstanceState]


# (model, mode): requests are described as pydantic validates them, answers as it writes them.
_MODELS: tuple[tuple[type[BaseModel], JsonSchemaMode], ...] = (
    (ChatCompletionRequest, "validation"),
    (ChatCompletionResponse, "serialization"),
    (CompletionRequest, "validation"),
    (CompletionResponse, "serialization"),
    (EmbeddingRequest, "validation"),
    (EmbeddingResponse, "serialization"),
    (ModelList, "serialization"),
    (ErrorResponse, "serialization"),
    (GatewayHealth, "serialization"),
    (InstanceSpec, "validation"),
    (InstanceList, "serialization"),
    (InstanceAdded, "serialization"),
    (InstanceRemoved, "serialization"),
    (PolicyChange, "validation"),
    (PolicyState, "serialization"),
    (GatewayMetrics, "serialization"),
)

_ERRORS = {
    "400": "Invalid request: malformed JSON or a field of the wrong type or value",
    "401": "Missing or invalid API key (when the gateway requires one)",
    "404": "Unknown model or resource",
    "409": "The control plane is off: the policy cannot change",
    "413": "Request body too large",
    "429": "The gateway's queue for the model is full (see Retry-After)",
    "503": "No healthy instance serves the model now, or the gateway is shutting down",
}

_SCHEDULING_HEADERS: list[dict[str, Any]] = [
    {
        "name": "x-sage-priority",
        "in": "header",
        "required": False,
        "description": "Scheduling priority, lower first (the body's 'priority' wins).",
        "schema": {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1},
    },
    {
        "name": "x-sage-slo-ms",
        "in": "header",
        "required": False,
        "description": "Latency objective in ms (the body's 'slo_ms' wins).",
        "schema": {"type": "number", "exclusiveMinimum": 0},
    },
    {
        "name": "x-sage-class",
        "in": "header",
        "required": False,
        "description": "Name of the request's class in the gateway's metrics.",
        "schema": {"type": "string"},
    },
]


_SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "description": "One server-sent event: 'data' holds a JSON chunk of the answer (the chat "
    "or completion object of a stream), and '[DONE]' after the last one.",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
    "required": ["data"],
}


def _schemas() -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Each model's schema as a reference by model name, and the definitions referred to.

    pydantic puts every model's schema under ``$defs``; the references point to
    ``#/components/schemas/<Model>``, where the document keeps those definitions.
    """
    refs, definitions = models_json_schema(_MODELS, ref_template=_REF)
    by_name = {model.__name__: schema for (model, _mode), schema in refs.items()}
    return by_name, dict(definitions.get("$defs", {}))


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _errors(*statuses: str) -> dict[str, Any]:
    error = {"$ref": _REF.format(model="ErrorResponse")}
    responses: dict[str, Any] = {}
    for status in statuses:
        responses[status] = {"description": _ERRORS[status], "content": _json(error)}
    if "429" in statuses:
        responses["429"]["headers"] = {
            "Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}}
        }
    return responses


def _operation(
    summary: str,
    answer: dict[str, Any],
    errors: tuple[str, ...],
    *,
    body: dict[str, Any] | None = None,
    parameters: list[dict[str, Any]] | None = None,
    status: str = "200",
    stream: bool = False,
    secured: bool = True,
) -> dict[str, Any]:
    content = _json(answer)
    if stream:  # OpenAPI 3.1: the schema of one event
        content["text/event-stream"] = {"schema": _SSE_EVENT}
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {status: {"description": "OK", "content": content}, **_errors(*errors)},
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json(body)}
    if parameters:
        operation["parameters"] = parameters
    if not secured:
        operation["security"] = []
    return operation


def _limit_max_tokens(definitions: dict[str, Any], limit: int) -> None:
    """Give the generation requests' token limits the gateway's ``max_tokens_limit``."""
    for model in ("ChatCompletionRequest", "CompletionRequest"):
        properties = definitions[model]["properties"]
        for name in ("max_tokens", "max_completion_tokens"):
            field = properties.get(name, {})
            for schema in [field, *field.get("anyOf", ())]:
                if schema.get("type") == "integer":
                    schema["maximum"] = limit


@lru_cache(maxsize=8)
def _document_json(title: str, version: str, max_tokens: int | None) -> bytes:
    refs, definitions = _schemas()
    if max_tokens is not None:
        _limit_max_tokens(definitions, max_tokens)

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        return refs[model.__name__]

    generation = ("400", "401", "404", "413", "429", "503")
    management = ("400", "401", "413")
    paths: dict[str, Any] = {
        "/v1/chat/completions": {
            "post": _operation(
                "Chat completion (streamed as server-sent events with stream=true)",
                ref(ChatCompletionResponse),
                generation,
                body=ref(ChatCompletionRequest),
                parameters=_SCHEDULING_HEADERS,
                stream=True,
            )
        },
        "/v1/completions": {
            "post": _operation(
                "Text completion (streamed as server-sent events with stream=true)",
                ref(CompletionResponse),
                generation,
                body=ref(CompletionRequest),
                parameters=_SCHEDULING_HEADERS,
                stream=True,
            )
        },
        "/v1/embeddings": {
            "post": _operation(
                "Embeddings of one text or a list of texts",
                ref(EmbeddingResponse),
                generation,
                body=ref(EmbeddingRequest),
                parameters=_SCHEDULING_HEADERS,
            )
        },
        "/v1/models": {"get": _operation("Models served", ref(ModelList), ("401",))},
        "/health": {"get": _operation("Gateway health", ref(GatewayHealth), (), secured=False)},
        "/v1/management/instances": {
            "get": _operation("Instances and their state", ref(InstanceList), ("401",)),
            "post": _operation(
                "Add an instance (health-checked at once)",
                ref(InstanceAdded),
                management,
                body=ref(InstanceSpec),
                status="201",
            ),
        },
        "/v1/management/instances/{instance_id}": {
            "delete": _operation(
                "Remove an instance",
                ref(InstanceRemoved),
                ("401", "404"),
                parameters=[
                    {
                        "name": "instance_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1},
                    }
                ],
            )
        },
        "/v1/management/policy": {
            "get": _operation("The scheduling policy", ref(PolicyState), ("401",)),
            "put": _operation(
                "Change the scheduling policy (409 when the control plane is off)",
                ref(PolicyState),
                (*management, "409"),
                body=ref(PolicyChange),
            ),
        },
        "/v1/management/metrics": {
            "get": _operation("Gateway metrics as JSON", ref(GatewayMetrics), ("401",))
        },
    }
    paths["/metrics"] = {
        "get": {
            "summary": "Prometheus metrics",
            "security": [],
            "responses": {
                "200": {
                    "description": "OK",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    }
    paths["/openapi.json"] = {
        "get": {
            "summary": "This document",
            "security": [],
            "responses": {"200": {"description": "OK", "content": _json({"type": "object"})}},
        }
    }
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "SAGE's OpenAI-compatible gateway. Errors are OpenAI-style "
            '{"error": {"message", "type", "param", "code"}} bodies.',
        },
        "paths": paths,
        "components": {
            "schemas": definitions,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        # The key is optional: required only when the gateway is configured with one.
        "security": [{}, {"bearerAuth": []}],
    }
    return orjson.dumps(document)


def openapi_json(
    title: str = "SAGE gateway", version: str | None = None, max_tokens: int | None = None
) -> bytes:
    """:func:`openapi_document` as JSON bytes (built once per set of arguments, then cached)."""
    if version is None:
        from sage import __version__

        version = __version__
    return _document_json(title, version, max_tokens)


def openapi_document(
    title: str = "SAGE gateway", version: str | None = None, max_tokens: int | None = None
) -> dict[str, Any]:
    """The gateway's OpenAPI 3.1 document (a fresh dict the caller may change).

    Args:
        title: ``info.title``.
        version: ``info.version`` (default: SAGE's version).
        max_tokens: The gateway's ``max_tokens_limit``: the largest ``max_tokens`` and
            ``max_completion_tokens`` the document allows (``None``: no limit).
    """
    document: dict[str, Any] = orjson.loads(openapi_json(title, version, max_tokens))
    return document
