"""Finding what an endpoint serves: a SAGE gateway (its management API knows each model's
type), a SAGE engine (its health says), or any OpenAI-compatible server (its model list)."""

from __future__ import annotations

import httpx

from sage.inference.protocol import InstanceList

__all__ = ["PROBE_TIMEOUT", "discover"]

PROBE_TIMEOUT = httpx.Timeout(1.0, connect=0.3)
"""Local probes time out fast: an offline machine with nothing running answers at once."""


def discover(base_url: str, api_key: str | None) -> dict[str, str]:
    """``{"llm": model, "embedding": model}`` served at ``base_url`` ({} if nothing answers)."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    root = base_url.rstrip("/").removesuffix("/v1")
    try:
        with httpx.Client(timeout=PROBE_TIMEOUT, headers=headers) as http:
            managed = http.get(f"{root}/v1/management/instances")
            if managed.status_code == 200:  # a SAGE gateway: it knows each model's type
                kinds: dict[str, str] = {}
                for instance in InstanceList.model_validate_json(managed.content).instances:
                    kinds.setdefault(instance.instance_type, instance.model_name)
                return kinds
            health = http.get(f"{root}/health")
            if health.status_code == 200 and "type" in health.json():  # a SAGE engine
                return {health.json()["type"]: health.json()["model"]}
            listed = http.get(f"{root}/v1/models")
            if listed.status_code == 200:  # any OpenAI-compatible server
                names = [m["id"] for m in listed.json().get("data", [])]
                return {"llm": names[0]} if names else {}
    except (httpx.HTTPError, ValueError, KeyError):  # pydantic's ValidationError is one
        pass
    return {}
