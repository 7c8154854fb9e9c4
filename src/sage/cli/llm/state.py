"""What ``sage llm serve`` started: the state file in ``$SAGE_HOME/llm`` and its processes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sage.common.config.paths import sage_home
from sage.common.processes import is_running
from sage.inference.deploy.processes import terminate

__all__ = ["alive", "load_state", "state_dir", "state_file", "stop_all", "write_state"]


def state_dir() -> Path:
    """``$SAGE_HOME/llm`` (default ``~/.sage/llm``)."""
    return sage_home() / "llm"


def state_file() -> Path:
    return state_dir() / "state.json"


def load_state() -> dict[str, Any] | None:
    """What the running stack is (or None)."""
    try:
        return dict(json.loads(state_file().read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def write_state(state: dict[str, Any]) -> None:
    state_file().parent.mkdir(parents=True, exist_ok=True)
    state_file().write_text(json.dumps(state), encoding="utf-8")


def stop_all(pids: dict[str, int]) -> None:
    """Stop the processes just started (in reverse order), and forget them."""
    for pid in reversed(pids.values()):
        terminate(pid)
    state_file().unlink(missing_ok=True)


def alive(state: Mapping[str, Any], name: str) -> bool:
    """Whether the process ``name`` of ``state`` still runs (the same one: a pid reused by
    another process does not count)."""
    started = (state.get("started") or {}).get(name)
    return is_running(state["pids"][name], started)
