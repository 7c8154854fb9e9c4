"""``UnifiedInferenceClient.create()``'s options checked: the scheduling policy it records,
and the local ports it probes for engine servers (``llm_ports=`` / ``embedding_ports=`` or
the defaults)."""

from __future__ import annotations

from collections.abc import Sequence

from sage.common.config.ports import SagePorts
from sage.common.config.settings import SageSettings
from sage.common.errors import ConfigError
from sage.inference.config import SchedulingPolicyType

__all__ = ["engine_ports", "scheduling_policy"]


def scheduling_policy(name: str | None) -> SchedulingPolicyType | None:
    """The policy ``create(scheduling_policy=name)`` names, read by the gateway's own parser
    (so a name that a gateway accepts is accepted here).

    Raises:
        ConfigError: an unknown name; the message lists the valid ones.
    """
    if name is None:
        return None
    try:
        return SchedulingPolicyType.parse(name)
    except ConfigError as error:
        raise ConfigError(f"scheduling_policy: {error}") from None


def _checked(argument: str, ports: Sequence[int]) -> list[int]:
    try:
        found = list(ports)
    except TypeError:  # one port, not a list of them
        found = [0]
    if not all(map(SagePorts.is_port_number, found)):
        raise ConfigError(f"{argument}={ports!r}: give a list of port numbers (1-65535)")
    return found


def engine_ports(
    settings: SageSettings, llm_ports: Sequence[int] | None, embedding_ports: Sequence[int] | None
) -> list[int]:
    """The loopback ports to probe for engine servers, LLM ones first, each once.

    ``None`` stands for the defaults: ``SAGE_LLM_PORT``, 8001, 8901; ``SAGE_EMBEDDING_PORT``,
    8090. Each server says what it serves, so a port's list only orders the probes.

    Raises:
        ConfigError: a port that is no port number.
    """
    llm = (
        [settings.SAGE_LLM_PORT, SagePorts.LLM_DEFAULT, SagePorts.LLM_WSL_FALLBACK]
        if llm_ports is None
        else _checked("llm_ports", llm_ports)
    )
    embedding = (
        [settings.SAGE_EMBEDDING_PORT, SagePorts.EMBEDDING_DEFAULT]
        if embedding_ports is None
        else _checked("embedding_ports", embedding_ports)
    )
    return list(dict.fromkeys([*llm, *embedding]))
