"""Ports, network hints and settings."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from sage.common.config.network import detect_china_mainland, ensure_hf_mirror_configured
from sage.common.config.ports import SagePorts
from sage.common.config.settings import load_settings
from sage.common.errors import ConfigError


def test_port_constants_and_wsl_recommendation(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (SagePorts.GATEWAY_DEFAULT, SagePorts.LLM_DEFAULT, SagePorts.LLM_SECONDARY) == (
        8000,
        8001,
        8002,
    )
    assert (SagePorts.LLM_WSL_FALLBACK, SagePorts.BENCHMARK_LLM) == (8901, 8901)
    assert (SagePorts.EMBEDDING_DEFAULT, SagePorts.EMBEDDING_SECONDARY) == (8090, 8091)
    assert (SagePorts.BENCHMARK_EMBEDDING, SagePorts.BENCHMARK_API) == (8902, 8903)
    assert SagePorts.JOBMANAGER_DEFAULT == 19001
    monkeypatch.delenv("WSL_DISTRO_NAME", raising=False)
    monkeypatch.delenv("WSL_INTEROP", raising=False)
    monkeypatch.setattr("platform.release", lambda: "6.1.0-generic")
    assert SagePorts.get_recommended_llm_port() == 8001
    monkeypatch.setenv("WSL_DISTRO_NAME", "Ubuntu")
    assert SagePorts.get_recommended_llm_port() == 8901


def test_free_port_helpers() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert not SagePorts.is_port_free(port)
        assert SagePorts.find_free_port(port) > port


def _no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("the network was used without probe=True")


def test_region_detection_uses_local_hints_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "create_connection", _no_network)
    for name in ("SAGE_REGION", "HF_ENDPOINT", "LC_ALL", "LANG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TZ", "Europe/Paris")
    assert detect_china_mainland() is False
    assert ensure_hf_mirror_configured() is None
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    assert detect_china_mainland() is True
    assert ensure_hf_mirror_configured() == "https://hf-mirror.com"
    monkeypatch.setenv("SAGE_REGION", "global")
    assert detect_china_mainland() is False
    monkeypatch.delenv("SAGE_REGION")
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setenv("LANG", "zh_CN.UTF-8")
    assert detect_china_mainland() is True


def test_settings_from_env_file_with_references_and_comments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = tmp_path / ".env"
    env.write_text(
        "SAGE_LLM_PORT=8901          # SagePorts.LLM_DEFAULT, on WSL2 8901\n"
        "SAGE_EMBEDDING_PORT=8090    # SagePorts.EMBEDDING_DEFAULT\n"
        "SAGE_CHAT_BASE_URL=http://localhost:${SAGE_LLM_PORT}/v1\n"
        "SAGE_CHAT_MODEL=Qwen/Qwen2.5-7B-Instruct\n"
        "SAGE_CHAT_API_KEY=           # empty for local servers\n"
    )
    for name in ("SAGE_LLM_PORT", "SAGE_CHAT_BASE_URL", "SAGE_CHAT_MODEL", "SAGE_CHAT_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(env)
    assert settings.SAGE_LLM_PORT == 8901 and settings.SAGE_EMBEDDING_PORT == 8090
    assert settings.SAGE_CHAT_BASE_URL == "http://localhost:8901/v1"
    assert settings.SAGE_CHAT_MODEL == "Qwen/Qwen2.5-7B-Instruct"
    assert settings.SAGE_CHAT_API_KEY is None
    monkeypatch.setenv("SAGE_CHAT_MODEL", "smollm2")  # the environment wins
    assert load_settings(env).SAGE_CHAT_MODEL == "smollm2"
    monkeypatch.setenv("SAGE_LLM_PORT", "eighty")
    with pytest.raises(ConfigError, match="SAGE_LLM_PORT='eighty' is not a port number"):
        load_settings(env)
