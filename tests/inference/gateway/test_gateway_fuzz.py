"""Schemathesis fuzzes the gateway from its own ``/openapi.json``: no 5xx, no crash, no hang.

One gateway (real HTTP server on 127.0.0.1, ephemeral port) over simulated engines, two LLM
instances and one embedding instance, with a fast simulator profile so generation answers at
once. Every operation of the document gets valid and invalid inputs (schemathesis' examples,
coverage and fuzzing phases, derandomized so a run is reproducible); each answer must not be a
5xx, must have a status, content type and body the document declares, and the gateway must
still serve afterwards.

Generated cases are adjusted before they are sent (``_aim``):

* generation requests whose ``model`` is a string name the served model (a random name only
  ever reaches the 404 branch); other ``model`` values stay as generated;
* ``POST /v1/management/instances``: a generated host is replaced by 127.0.0.1 (no traffic
  leaves loopback); when the gateway would accept the rest, the port becomes the first LLM
  engine's and a missing id a fresh one. An instance the gateway added is removed again at
  once, through the API (which checks that every id it accepts can be deleted), so the
  instance set stays the stack's own;
* ``DELETE /v1/management/instances/{instance_id}``: the stack's own ids are never sent (an
  unknown id goes instead, which must get 404).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, unquote

import httpx
import jsonschema_rs
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import ValidationError
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from sage.inference.deploy.stack import LocalStack
from sage.inference.gateway.openapi import openapi_document
from sage.inference.protocol import InstanceSpec

# Fast simulated GPUs: a token step of 0.05 ms, embeddings in 0.1 ms.
PROFILE = {
    "prefill_ms_per_token": 0.0,
    "decode_base_ms": 0.05,
    "decode_ms_per_seq": 0.0,
    "embed_call_ms": 0.1,
    "embed_ms_per_text": 0.0,
}
MAX_EXAMPLES = 25  # fuzzing-phase examples per operation (examples/coverage phases add some)
MAX_TOKENS_LIMIT = 512

pytestmark = pytest.mark.timeout(120)


class Fuzzed:
    """The stack under test and what the run did."""

    def __init__(self, stack: LocalStack) -> None:
        assert stack.gateway is not None and stack.gateway.registry is not None
        self.stack = stack
        self.url = f"http://127.0.0.1:{stack.port}"
        self.own_ids = {i.id for i in stack.gateway.registry.all()}
        self.safe_port = stack.llm_ports[0]
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.added = 0


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[Fuzzed]:
    stack = LocalStack(
        "sim-llm",
        "sim-emb",
        engine="simulated",
        llm_ports=(0, 0),
        max_concurrent_requests=4,
        gateway_options={
            "max_body_bytes": 256 * 1024,
            "max_tokens_limit": MAX_TOKENS_LIMIT,
            "shutdown_grace_s": 1.0,
        },
        profile=PROFILE,
    ).start()
    try:
        yield Fuzzed(stack)
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def gateway_schema(fuzzed: Fuzzed) -> Any:
    config = schemathesis.Config.from_dict(
        {
            "generation": {
                "mode": "all",  # valid and invalid inputs
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "phases": {"stateful": {"enabled": False}},
            "request-timeout": 20,
        }
    )
    return schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("gateway_schema")


@pytest.fixture(autouse=True)
def _nodeid_shim(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32.5's fixture-loaded schemas read ``request.node._nodeid``, which pytest
    # 9.2 no longer has (a no-op with pytest 8)
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


SERVED = {
    "/v1/chat/completions": "sim-llm",
    "/v1/completions": "sim-llm",
    "/v1/embeddings": "sim-emb",
}


def _aim(case: schemathesis.Case, fuzzed: Fuzzed) -> None:
    """Point generation requests at a served model; keep management requests harmless."""
    if case.path in SERVED and isinstance(case.body, dict):
        if isinstance(case.body.get("model"), str):  # a random name would only get 404
            case.body["model"] = SERVED[case.path]
    elif case.method == "POST" and case.path == "/v1/management/instances":
        body = case.body
        if isinstance(body, dict):
            if "host" not in body or isinstance(body.get("host"), str):
                body["host"] = "127.0.0.1"  # never anything but loopback
            try:
                InstanceSpec.model_validate(body)
            except ValidationError:
                pass  # the gateway must refuse it: leave it as generated
            else:
                body["port"] = fuzzed.safe_port
                if body.get("instance_id") is None:  # host:port would be taken already
                    fuzzed.added += 1
                    body["instance_id"] = f"fuzz-{fuzzed.added}"
    elif case.method == "DELETE" and case.path_parameters:
        instance_id = unquote(str(case.path_parameters.get("instance_id")))
        if instance_id in fuzzed.own_ids:
            case.path_parameters["instance_id"] = "no-such-instance"


ROUTES = {
    ("POST", "/v1/chat/completions"): "200",
    ("POST", "/v1/completions"): "200",
    ("POST", "/v1/embeddings"): "200",
    ("GET", "/v1/models"): "200",
    ("GET", "/health"): "200",
    ("GET", "/metrics"): "200",
    ("GET", "/openapi.json"): "200",
    ("GET", "/v1/management/instances"): "200",
    ("POST", "/v1/management/instances"): "201",
    ("DELETE", "/v1/management/instances/{instance_id}"): "200",
    ("GET", "/v1/management/policy"): "200",
    ("PUT", "/v1/management/policy"): "200",
    ("GET", "/v1/management/metrics"): "200",
}


def test_the_document_is_valid_openapi_and_covers_every_route() -> None:
    document = openapi_document(max_tokens=64)
    loaded = schemathesis.openapi.from_dict(document)
    loaded.validate()  # the OpenAPI 3.1 meta-schema
    schemas = document["components"]["schemas"]
    for definition in schemas.values():
        jsonschema_rs.meta.validate(definition)  # each one a valid JSON Schema (2020-12)
    refs = set(re.findall(r'"\$ref":"([^"]*)"', orjson.dumps(document).decode()))
    assert refs and {ref.rsplit("/", 1)[-1] for ref in refs} <= set(schemas)
    assert all(ref.startswith("#/components/schemas/") for ref in refs)
    assert "$defs" not in orjson.dumps(document).decode()
    operations = {(op.ok().method.upper(), op.ok().path) for op in loaded.get_all_operations()}
    assert operations == set(ROUTES)
    error = {"$ref": "#/components/schemas/ErrorResponse"}
    for (method, path), status in ROUTES.items():
        responses = document["paths"][path][method.lower()]["responses"]
        assert status in responses
        for code, response in responses.items():
            if code.startswith(("4", "5")):
                assert response["content"]["application/json"]["schema"] == error, (path, code)
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        assert {"400", "404", "413", "429", "503"} <= set(
            document["paths"][path]["post"]["responses"]
        )
    chat = schemas["ChatCompletionRequest"]
    assert set(chat["required"]) == {"messages", "model"}
    assert {"type": "integer", "minimum": 1, "maximum": 64} in chat["properties"]["max_tokens"][
        "anyOf"
    ]


def test_the_gateway_serves_its_document(fuzzed: Fuzzed) -> None:
    served = httpx.get(f"{fuzzed.url}/openapi.json")
    assert served.status_code == 200 and served.headers["content-type"] == "application/json"
    assert served.json() == openapi_document(max_tokens=MAX_TOKENS_LIMIT)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_fuzzed_requests_never_get_a_5xx(case: schemathesis.Case, fuzzed: Fuzzed) -> None:
    _aim(case, fuzzed)
    response = case.call(timeout=20)
    fuzzed.statuses[(f"{case.method} {case.path}", response.status_code)] += 1
    try:
        case.validate_response(
            response,
            checks=[
                not_a_server_error,
                status_code_conformance,
                content_type_conformance,
                response_schema_conformance,
            ],
        )
    finally:
        if (case.method, case.path, response.status_code) == (
            "POST",
            "/v1/management/instances",
            201,
        ):
            added = response.json()["instance"]["instance_id"]
            removed = httpx.delete(
                f"{fuzzed.url}/v1/management/instances/{quote(added, safe='')}", timeout=10
            )
            assert removed.status_code == 200, (added, removed.text)


def test_the_gateway_still_serves_after_the_fuzzing(fuzzed: Fuzzed) -> None:
    if not fuzzed.statuses:
        pytest.skip("checks the gateway after test_fuzzed_requests_never_get_a_5xx; run both")
    with httpx.Client(base_url=fuzzed.url, timeout=10) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["instances"] == len(fuzzed.own_ids)
        assert health["healthy"] == len(fuzzed.own_ids)
        chat = client.post(
            "/v1/chat/completions",
            json={"model": "sim-llm", "messages": [{"role": "user", "content": "x"}]},
        )
        assert chat.status_code == 200, chat.text
        states = client.get("/v1/management/instances").json()["instances"]
        assert {s["instance_id"] for s in states} == fuzzed.own_ids
        assert all(s["in_flight"] == 0 for s in states)
    # the fuzzing reached the engines and the validation both (the run is derandomized)
    for route in ("POST /v1/chat/completions", "POST /v1/completions", "POST /v1/embeddings"):
        assert fuzzed.statuses[(route, 200)] > 0 and fuzzed.statuses[(route, 400)] > 0, route
    assert fuzzed.statuses[("POST /v1/management/instances", 201)] > 0
    assert all(status < 500 for _, status in fuzzed.statuses)
    print(
        f"fuzzed {sum(fuzzed.statuses.values())} requests:", dict(sorted(fuzzed.statuses.items()))
    )
