"""The JobManager token: created private, reused, overridable, and refused when exposed."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from sage.common.errors import ConfigError
from sage.kernel.jobmanager.token import (
    TOKEN_ENV,
    client_token,
    server_token,
    token_file,
    token_matches,
)

pytestmark = pytest.mark.usefixtures("home")  # a fresh $SAGE_HOME, so a fresh token


def test_first_start_creates_an_owner_only_token_that_clients_then_read(home: Path) -> None:
    assert client_token() is None  # nothing yet: a client has no token to send
    token = server_token()
    path = token_file()
    assert path == home / "jobmanager" / "token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(token) >= 40
    assert server_token() == token and client_token() == token  # reused, not regenerated


def test_the_environment_variable_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    server_token()
    monkeypatch.setenv(TOKEN_ENV, "from-the-environment")
    assert server_token() == "from-the-environment" == client_token()


def test_a_token_file_others_can_read_is_refused_with_the_fix() -> None:
    server_token()
    token_file().chmod(0o644)
    for read in (server_token, client_token):
        with pytest.raises(ConfigError, match="chmod 600"):
            read()


def test_tokens_match_only_exactly() -> None:
    assert token_matches("abc", "abc")
    assert not token_matches("abd", "abc")
    assert not token_matches("", "abc")
    assert not token_matches(None, "abc")
