"""The JobManager's access token: who may submit and control jobs.

The JobManager creates a random token on its first start and keeps it in a file only its
owner can read (``$SAGE_HOME/jobmanager/token``, mode 0600 in a 0700 directory), unless
``SAGE_JOBMANAGER_TOKEN`` gives one. Clients on the same account read the same file (or the
variable); anyone else has no token and is refused before anything they sent is decoded.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path

from sage.common.config.paths import sage_home
from sage.common.errors import ConfigError

__all__ = ["TOKEN_ENV", "client_token", "server_token", "token_file", "token_matches"]

TOKEN_ENV = "SAGE_JOBMANAGER_TOKEN"


def token_file() -> Path:
    """``$SAGE_HOME/jobmanager/token``."""
    return sage_home() / "jobmanager" / "token"


def _read_private(path: Path) -> str:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path} is readable by others (mode {mode:o}): anyone who can read it may run "
            f"jobs; run 'chmod 600 {path}' (or delete it to get a new token)"
        )
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise ConfigError(f"{path} is empty; delete it and the JobManager creates a new token")
    return token


def server_token(path: Path | None = None) -> str:
    """The token the JobManager checks: ``$SAGE_JOBMANAGER_TOKEN``, else the token file,
    created on first use with owner-only permissions.

    Raises:
        ConfigError: the file exists but others can read it, or it is empty.
    """
    if given := os.environ.get(TOKEN_ENV, "").strip():
        return given
    path = path or token_file()
    if path.exists():
        return _read_private(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another JobManager created it first: use theirs
        return _read_private(path)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    return token


def client_token(path: Path | None = None) -> str | None:
    """The token a client sends: ``$SAGE_JOBMANAGER_TOKEN``, else the token file's, else
    ``None`` (the JobManager will refuse the call).

    Raises:
        ConfigError: the file exists but others can read it, or it is empty.
    """
    if given := os.environ.get(TOKEN_ENV, "").strip():
        return given
    path = path or token_file()
    return _read_private(path) if path.exists() else None


def token_matches(given: str | None, expected: str) -> bool:
    """Whether ``given`` is the token (compared in constant time)."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())
