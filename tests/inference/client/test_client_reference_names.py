"""The SAGE reference's names on ``UnifiedInferenceClient``: ``get_status()``'s flat keys,
``create(scheduling_policy=, llm_ports=, embedding_ports=)`` and
``get_instance(instance_key=)``; in-process and against stub servers on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from sage.common.errors import ConfigError
from sage.inference.client.unified import UnifiedInferenceClient
from sage.inference.deploy.stack import LocalStack

FLAT_KEYS = {
    "mode",
    "control_plane_active",
    "llm_available",
    "embedding_available",
    "llm_base_url",
    "llm_model",
    "embedding_base_url",
    "embedding_model",
}


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    """Stub LLM and embedding engine servers behind a gateway, each on a free port."""
    with LocalStack("stub-llm", "stub-emb", engine="stub").start() as running:
        yield running


def sage_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("sage-")}


def test_embedded_status_has_the_flat_keys_and_loads_no_model() -> None:
    before = sage_threads()
    client = UnifiedInferenceClient.create(embedded=True, env_file=None)
    try:
        status = client.get_status()
        assert sage_threads() == before  # the engines' thread starts on first use only
    finally:
        client.close()
        UnifiedInferenceClient.shutdown_embedded()
    assert status.keys() >= FLAT_KEYS
    assert status["mode"] == "embedded"
    assert status["control_plane_active"] is False
    assert status["llm_available"] is True and status["embedding_available"] is True
    assert status["llm_base_url"] is None and status["embedding_base_url"] is None
    assert status["llm_model"] == "smollm2"
    assert status["embedding_model"] == "all-minilm-l6-v2"
    assert status["scheduling_policy"] is None
    assert status["llm"] == {"base_url": None, "model": "smollm2", "healthy": True}


def test_status_through_a_gateway(stack: LocalStack) -> None:
    with UnifiedInferenceClient.create(stack.gateway_url, env_file=None) as client:
        status = client.get_status()
    assert status["mode"] == "control_plane"
    assert status["control_plane_active"] is True
    assert status["llm_available"] is True and status["embedding_available"] is True
    assert status["llm_base_url"] == status["embedding_base_url"] == stack.gateway_url
    assert (status["llm_model"], status["embedding_model"]) == ("stub-llm", "stub-emb")


def test_llm_and_embedding_ports_replace_the_default_probes(stack: LocalStack) -> None:
    assert stack.embedding_port is not None
    with UnifiedInferenceClient.create(
        env_file=None, llm_ports=stack.llm_ports, embedding_ports=[stack.embedding_port]
    ) as client:
        status = client.get_status()
    assert status["mode"] == "local"
    assert status["control_plane_active"] is False
    assert status["llm_base_url"] == stack.llm_url
    assert status["embedding_base_url"] == stack.embedding_url
    assert (status["llm_model"], status["embedding_model"]) == ("stub-llm", "stub-emb")
    assert status["llm_available"] is True and status["embedding_available"] is True


def test_an_endpoint_that_does_not_answer_is_not_available(stack: LocalStack) -> None:
    assert stack.embedding_port is not None
    with UnifiedInferenceClient.create(
        env_file=None, llm_ports=[], embedding_ports=[stack.embedding_port]
    ) as client:
        status = client.get_status()
    assert status["llm_model"] is None and status["llm_available"] is False
    assert status["embedding_available"] is True
    dead = UnifiedInferenceClient(mode="env", llm_base_url="http://127.0.0.1:9/v1", llm_model="m")
    with dead:
        status = dead.get_status()
    assert status["llm_available"] is False and status["embedding_available"] is False


def test_bad_ports_are_refused_naming_the_argument() -> None:
    with pytest.raises(ConfigError, match=r"llm_ports=\[0\].*1-65535"):
        UnifiedInferenceClient.create(env_file=None, llm_ports=[0])
    with pytest.raises(ConfigError, match=r"embedding_ports=8090.*list"):
        UnifiedInferenceClient.create(env_file=None, embedding_ports=8090)  # type: ignore[arg-type]


def test_scheduling_policy_is_checked_and_reported() -> None:
    client = UnifiedInferenceClient.create(
        embedded=True, env_file=None, scheduling_policy="priority"
    )
    with client:
        assert client.get_status()["scheduling_policy"] == "priority"
    UnifiedInferenceClient.shutdown_embedded()
    with pytest.raises(ConfigError) as refused:
        UnifiedInferenceClient.create(embedded=True, env_file=None, scheduling_policy="nope")
    message = str(refused.value)
    assert "scheduling_policy" in message and "'nope'" in message
    assert all(name in message for name in ("fifo", "priority", "slo_aware", "hybrid", "adaptive"))


def test_get_instance_takes_instance_key() -> None:
    options: dict[str, Any] = {"embedded": True, "env_file": None}
    client = UnifiedInferenceClient.get_instance(instance_key="x", **options)
    try:
        assert UnifiedInferenceClient.get_instance("x") is client
        assert UnifiedInferenceClient.get_instance(key="x", instance_key="x") is client
        assert UnifiedInferenceClient.get_instance(instance_key="x") is client
        with pytest.raises(ConfigError, match="key='x' and instance_key='y'"):
            UnifiedInferenceClient.get_instance("x", instance_key="y")
    finally:
        client.close()
        UnifiedInferenceClient.shutdown_embedded()
    assert UnifiedInferenceClient.get_instance(instance_key="x", **options) is not client
    UnifiedInferenceClient.get_instance("x").close()
    UnifiedInferenceClient.shutdown_embedded()
