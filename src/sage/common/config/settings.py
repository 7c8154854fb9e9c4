"""Settings from the environment and a ``.env`` file (the seed's variables).

The process environment wins over ``.env``, which wins over the defaults. ``.env`` values
may refer to others (``SAGE_CHAT_BASE_URL=http://localhost:${SAGE_LLM_PORT}/v1``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from sage.common.config.ports import SagePorts
from sage.common.errors import ConfigError

__all__ = ["SageSettings", "load_settings"]


@dataclass(frozen=True)
class SageSettings:
    """What the seed's ``.env`` configures (names as in the environment)."""

    SAGE_LLM_PORT: int = SagePorts.LLM_DEFAULT
    SAGE_EMBEDDING_PORT: int = SagePorts.EMBEDDING_DEFAULT
    SAGE_GATEWAY_PORT: int = SagePorts.GATEWAY_DEFAULT
    SAGE_CHAT_BASE_URL: str | None = None
    SAGE_CHAT_MODEL: str | None = None
    SAGE_EMBEDDING_BASE_URL: str | None = None
    SAGE_EMBEDDING_MODEL: str | None = None
    SAGE_CHAT_API_KEY: str | None = None
    SAGE_API_KEY: str | None = None
    HF_TOKEN: str | None = None
    HF_ENDPOINT: str | None = None


def load_settings(env_file: str | os.PathLike[str] | None = ".env") -> SageSettings:
    """Read settings from ``os.environ`` and ``env_file`` (if it exists).

    Raises:
        ConfigError: a port is not an integer.
    """
    values: dict[str, str | None] = {}
    if env_file is not None and Path(env_file).is_file():
        from dotenv import dotenv_values

        values.update(dotenv_values(env_file, interpolate=True))
    for f in fields(SageSettings):
        if f.name in os.environ:
            values[f.name] = os.environ[f.name]
    kwargs: dict[str, object] = {}
    for f in fields(SageSettings):
        raw = values.get(f.name)
        if raw is None or raw == "":
            continue
        if f.name.endswith("_PORT"):
            try:
                kwargs[f.name] = int(raw)
            except ValueError:
                raise ConfigError(f"{f.name}={raw!r} is not a port number") from None
        else:
            kwargs[f.name] = raw
    return SageSettings(**kwargs)  # type: ignore[arg-type]
