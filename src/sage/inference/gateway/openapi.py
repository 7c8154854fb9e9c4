"""The gateway's OpenAPI 3.1 document (``GET /openapi.json``), generated from the route
table (:mod:`.routes`) and the wire models.

Request and response bodies are the pydantic models of :mod:`~sage.inference.protocol`
(one wire schema for servers, client, document and tests). Every model's JSON schema comes
from pydantic, with its ``$defs`` placed under ``components/schemas`` and its references
pointing there; the scheduling headers come from
:class:`~sage.inference.protocol.SchedulingFields`. Errors are OpenAI-style
:class:`~sage.inference.protocol.ErrorResponse` bodies.

Example:
    >>> document = openapi_document()
    >>> document["openapi"], "/v1/chat/completions" in document["paths"]
    ('3.1.0', True)
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from sage.inference.gateway.routes import ROUTES, Route
from sage.inference.protocol import (
    CLASS_HEADER,
    SCHEDULING_HEADERS,
    ErrorResponse,
    SchedulingFields,
)

__all__ = ["openapi_document", "openapi_json"]

_REF = "#/components/schemas/{model}"

_ERRORS = {
    "400": "Invalid request: malformed JSON or a field of the wrong type or value",
    "401": "Missing or invalid API key (when the gateway requires one)",
    "404": "Unknown model or resource",
    "409": "Conflict: the control plane is off (the policy cannot change), or the instance "
    "cannot be drained now (its model's last healthy instance, or still busy after timeout_s)",
    "413": "Request body too large",
    "429": "The gateway's queue for the model is full, or the tenant of the API key is over "
    "its rate limit (code rate_limit_exceeded); see Retry-After",
    "503": "No healthy instance serves the model now, or the gateway is shutting down",
}


def _models() -> tuple[tuple[type[BaseModel], JsonSchemaMode], ...]:
    """(model, mode) of every body and answer in the route table, and the error body:
    requests as pydantic validates them, answers as it writes them."""
    found: dict[type[BaseModel], JsonSchemaMode] = {ErrorResponse: "serialization"}
    for route in ROUTES:
        if route.body is not None:
            found[route.body] = "validation"
        if route.answer is not None:
            found.setdefault(route.answer, "serialization")
    return tuple(found.items())


def _scheduling_headers() -> list[dict[str, Any]]:
    """The headers that may carry the scheduling fields, with their fields' schemas."""
    fields = SchedulingFields.model_json_schema()["properties"]
    parameters = []
    for name, header in SCHEDULING_HEADERS.items():
        schema = {k: v for k, v in fields[name].items() if k not in ("title", "default")}
        options = [o for o in schema.pop("anyOf", [schema]) if o.get("type") != "null"]
        description = schema.pop("description", "")
        parameters.append(
            {
                "name": header,
                "in": "header",
                "required": False,
                "description": f"{description} (the body's {name!r} wins)",
                "schema": {**schema, **options[0]},
            }
        )
    parameters.append(
        {
            "name": CLASS_HEADER,
            "in": "header",
            "required": False,
            "description": "Name of the request's class in the gateway's metrics.",
            "schema": {"type": "string"},
        }
    )
    return parameters


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
    refs, definitions = models_json_schema(_models(), ref_template=_REF)
    by_name = {model.__name__: schema for (model, _mode), schema in refs.items()}
    return by_name, dict(definitions.get("$defs", {}))


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_RATELIMIT_HEADERS: dict[str, Any] = {
    f"x-ratelimit-{what}-{unit}": {
        "description": f"{text} (tenants with a {limit} limit only)",
        "schema": {"type": "string"},
    }
    for unit, limit in (("requests", "rpm"), ("tokens", "tpm"))
    for what, text in (
        ("limit", f"The tenant's {unit} per minute"),
        ("remaining", f"{unit.capitalize()} it has left now"),
        ("reset", "Until its budget is full again, e.g. '1s', '6m0s'"),
    )
}
"""OpenAI's rate-limit headers, sent with the answers of a tenant that has limits."""


def _errors(*statuses: str) -> dict[str, Any]:
    error = {"$ref": _REF.format(model="ErrorResponse")}
    responses: dict[str, Any] = {}
    for status in statuses:
        responses[status] = {"description": _ERRORS[status], "content": _json(error)}
    if "429" in statuses:
        responses["429"]["headers"] = {
            "Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}},
            **_RATELIMIT_HEADERS,
        }
    return responses


def _parameters(route: Route) -> list[dict[str, Any]]:
    parameters = _scheduling_headers() if route.scheduled else []
    for name in _path_names(route.path):
        parameters.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "minLength": 1},
            }
        )
    return parameters


def _path_names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


def _operation(route: Route, refs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if route.answer is not None:
        content = _json(refs[route.answer.__name__])
    elif route.content_type == "application/json":
        content = _json({"type": "object"})
    else:
        content = {route.content_type: {"schema": {"type": "string"}}}
    if route.stream:  # OpenAPI 3.1: the schema of one event
        content["text/event-stream"] = {"schema": _SSE_EVENT}
    ok: dict[str, Any] = {"description": "OK", "content": content}
    if route.scheduled:
        ok["headers"] = _RATELIMIT_HEADERS
    operation: dict[str, Any] = {
        "summary": route.summary,
        "responses": {route.status: ok, **_errors(*route.errors)},
    }
    if route.body is not None:
        operation["requestBody"] = {"required": True, "content": _json(refs[route.body.__name__])}
    parameters = _parameters(route)
    if parameters:
        operation["parameters"] = parameters
    if not route.secured:
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

    paths: dict[str, Any] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, refs)
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
