"""Who may call the gateway: the API keys it accepts, compared in constant time."""

from __future__ import annotations

import hmac
from pathlib import Path

from sage.common.errors import ConfigError
from sage.common.http import Request
from sage.inference.config import UnifiedServerConfig
from sage.inference.gateway.errors import gateway_error

__all__ = ["KeyCheck", "accepted_keys", "bearer_of"]


def accepted_keys(config: UnifiedServerConfig) -> tuple[bytes, ...]:
    """The API keys the gateway accepts: ``config.api_key``, the lines of
    ``config.api_key_file``, ``SAGE_API_KEY`` (environment or ``.env``) and every key of
    ``config.tenants``.

    Raises:
        ConfigError: the key file cannot be read, or holds no key.
    """
    from sage.common.config.settings import load_settings

    keys = [config.api_key] if config.api_key else []
    if config.api_key_file is not None:
        try:
            text = Path(config.api_key_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"api_key_file {config.api_key_file!r} cannot be read ({exc.strerror}); "
                "give a file with one API key per line"
            ) from None
        found = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        found = [key for key in found if key]
        if not found:
            raise ConfigError(
                f"api_key_file {config.api_key_file!r} holds no key; put one key per line"
            )
        keys += found
    env_key = load_settings().SAGE_API_KEY
    if env_key:
        keys.append(env_key)
    keys += [key for tenant in config.tenants.values() for key in tenant.api_keys]
    return tuple(dict.fromkeys(key.encode() for key in keys))


def bearer_of(request: Request) -> str | None:
    """The key a request sends as ``Authorization: Bearer <key>``, if any."""
    given = request.headers.get("authorization", "")
    return given[7:] if given.startswith("Bearer ") else None


class KeyCheck:
    """Refuses requests without an accepted key (with none configured, lets all through).

    Args:
        keys: The accepted keys (:func:`accepted_keys`).
    """

    def __init__(self, keys: tuple[bytes, ...]) -> None:
        self.keys = keys

    def __call__(self, request: Request) -> None:
        """Raise a 401 unless ``request`` carries an accepted key.

        Every key is compared, in constant time, whatever the first comparisons gave.
        """
        if not self.keys:
            return
        token = (bearer_of(request) or "").encode()
        if not any([hmac.compare_digest(token, key) for key in self.keys]):
            raise gateway_error(
                401,
                "missing or invalid API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )
