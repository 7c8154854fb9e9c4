"""The running stack's gateway as the ``sage llm`` commands call it: with the API key of
``SAGE_API_KEY`` (the state file never holds it), and errors read the OpenAI way."""

from __future__ import annotations

from typing import Any

import httpx

from sage.cli.errors import fail

__all__ = ["INSTANCES", "StackGateway", "error_code", "error_message"]

INSTANCES = "/v1/management/instances"


class StackGateway:
    """The running stack's gateway, called with the API key of ``SAGE_API_KEY``."""

    def __init__(self, state: dict[str, Any]) -> None:
        from sage.common.config.settings import load_settings

        self.url = f"http://{state['host']}:{state['ports']['gateway']}"
        key = load_settings().SAGE_API_KEY
        self.headers = {"authorization": f"Bearer {key}"} if key else {}

    def call(self, method: str, path: str, timeout: float = 10.0, **kw: Any) -> httpx.Response:
        """One request; exit 1 if the gateway does not answer."""
        try:
            return httpx.request(
                method, self.url + path, headers=self.headers, timeout=timeout, **kw
            )
        except httpx.HTTPError as exc:
            raise fail(f"the gateway did not answer at {self.url}: {exc}") from None

    def instances(self) -> list[dict[str, Any]]:
        """The gateway's instances (``GET /v1/management/instances``)."""
        answer = self.call("GET", INSTANCES)
        if answer.status_code != 200:
            raise fail(f"the gateway refused to list its instances: {error_message(answer)}")
        return list(answer.json()["instances"])


def error_message(answer: httpx.Response) -> str:
    """The message of an OpenAI-style error answer (a hint added for a missing key)."""
    try:
        message = str(answer.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = f"{answer.status_code} {answer.text[:200]}"
    if answer.status_code == 401:
        message += "; set SAGE_API_KEY to the key the stack was started with"
    return message


def error_code(answer: httpx.Response) -> str | None:
    """The ``code`` of an OpenAI-style error answer (``None``: none, or not such an answer)."""
    try:
        return answer.json()["error"].get("code")  # type: ignore[no-any-return]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
