"""The gateway's route table: every route, what it takes and answers, as data.

The server binds a handler to each route by its ``name``; the OpenAPI document
(:mod:`.openapi`) is generated from the same table and the protocol's models, so a route
cannot be served without being documented, nor documented without being served.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from sage.inference.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    GatewayHealth,
    GatewayMetrics,
    InstanceAdded,
    InstanceList,
    InstanceRemoved,
    InstanceSpec,
    ModelList,
    PolicyChange,
    PolicyState,
)

__all__ = ["API_KINDS", "ROUTES", "Route"]

GENERATION_ERRORS = ("400", "401", "404", "413", "429", "503")
MANAGEMENT_ERRORS = ("400", "401", "413")


@dataclass(frozen=True)
class Route:
    """One route of the gateway.

    Attributes:
        name: What the server binds the handler by.
        method: HTTP method.
        path: Path, with ``{name}`` parameters.
        summary: One line for the OpenAPI document.
        answer: The model of a successful answer (``None``: not JSON, see ``content_type``).
        errors: The error statuses it may answer with (OpenAI-style bodies).
        body: The model of the request body, if it takes one.
        status: The status of a successful answer.
        stream: The answer may be server-sent events (``stream=true``).
        scheduled: It takes SAGE's scheduling headers.
        secured: The API key (when the gateway has one) is checked.
        content_type: The content type of an answer that is not JSON.
        cancellable: A client that disconnects cancels the handler (its forwarded request
            leaves the queue or the engine); ``False`` for changes to the gateway, which
            are made whole whatever the client does.
    """

    name: str
    method: str
    path: str
    summary: str
    answer: type[BaseModel] | None
    errors: tuple[str, ...] = ()
    body: type[BaseModel] | None = None
    status: str = "200"
    stream: bool = False
    scheduled: bool = False
    secured: bool = True
    content_type: str = "application/json"
    cancellable: bool = True


API_KINDS = {
    "/v1/chat/completions": "llm",
    "/v1/completions": "llm",
    "/v1/embeddings": "embedding",
}
"""The API routes the gateway forwards, and the kind of instance each needs."""

ROUTES: tuple[Route, ...] = (
    Route(
        "forward",
        "POST",
        "/v1/chat/completions",
        "Chat completion (streamed as server-sent events with stream=true)",
        ChatCompletionResponse,
        GENERATION_ERRORS,
        body=ChatCompletionRequest,
        stream=True,
        scheduled=True,
    ),
    Route(
        "forward",
        "POST",
        "/v1/completions",
        "Text completion (streamed as server-sent events with stream=true)",
        CompletionResponse,
        GENERATION_ERRORS,
        body=CompletionRequest,
        stream=True,
        scheduled=True,
    ),
    Route(
        "forward",
        "POST",
        "/v1/embeddings",
        "Embeddings of one text or a list of texts",
        EmbeddingResponse,
        GENERATION_ERRORS,
        body=EmbeddingRequest,
        scheduled=True,
    ),
    Route("models", "GET", "/v1/models", "Models served", ModelList, ("401",)),
    Route("health", "GET", "/health", "Gateway health", GatewayHealth, secured=False),
    Route(
        "metrics",
        "GET",
        "/metrics",
        "Prometheus metrics",
        None,
        secured=False,
        content_type="text/plain",
    ),
    Route(
        "list_instances",
        "GET",
        "/v1/management/instances",
        "Instances and their state",
        InstanceList,
        ("401",),
    ),
    Route(
        "add_instance",
        "POST",
        "/v1/management/instances",
        "Add an instance (health-checked at once)",
        InstanceAdded,
        MANAGEMENT_ERRORS,
        body=InstanceSpec,
        status="201",
        cancellable=False,  # registered and health-checked, never registered unchecked
    ),
    Route(
        "remove_instance",
        "DELETE",
        "/v1/management/instances/{instance_id}",
        "Remove an instance: at once, or with ?drain=true[&timeout_s=60][&force=true] once "
        "its requests in flight are done (409: its model's last healthy instance without "
        "force, or still busy after timeout_s)",
        InstanceRemoved,
        ("400", "401", "404", "409"),
        cancellable=False,  # unregistered and its connections closed, never half; a drain
        # whose caller went away still finishes (or times out and restores the instance)
    ),
    Route(
        "get_policy", "GET", "/v1/management/policy", "The scheduling policy", PolicyState, ("401",)
    ),
    Route(
        "set_policy",
        "PUT",
        "/v1/management/policy",
        "Change the scheduling policy (409 when the control plane is off)",
        PolicyState,
        (*MANAGEMENT_ERRORS, "409"),
        body=PolicyChange,
    ),
    Route(
        "management_metrics",
        "GET",
        "/v1/management/metrics",
        "Gateway metrics as JSON",
        GatewayMetrics,
        ("401",),
    ),
    Route(
        "openapi",
        "GET",
        "/openapi.json",
        "This document",
        None,
        secured=False,
        content_type="application/json",
    ),
)
"""Every route of the gateway, in the order the document lists them."""
