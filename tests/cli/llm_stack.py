"""Set-up shared by the ``sage llm`` command-line tests: a ``SAGE_HOME`` of its own with
spare ports, ``sage llm ...`` run there as a user runs it, and whether a process still runs.

Each test module subclasses :class:`LlmHome` with what only it needs (how it serves, what
it reads back).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sage.common.config.ports import SagePorts

__all__ = ["SAGE", "LlmHome", "alive"]

SAGE = [sys.executable, "-m", "sage.cli.main"]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (exited, not yet reaped by its parent) does not."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class LlmHome:
    """One ``SAGE_HOME`` and three spare ports (``llm``, ``embedding``, ``gateway``).

    ``env`` is the commands' environment: no ``SAGE_API_KEY`` unless a test sets one, the
    model hub offline, and wide tables. The commands run in ``home``, so no ``.env`` of the
    working tree is read.
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {**os.environ, "SAGE_HOME": str(home), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
        self.env.pop("SAGE_API_KEY", None)
        self.llm, self.embedding, self.gateway = (SagePorts.any_free_port() for _ in range(3))

    def sage(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """``sage llm *args`` (``env``: variables added for this run only)."""
        return subprocess.run(
            [*SAGE, "llm", *args],
            env={**self.env, **(env or {})},
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def state(self) -> dict[str, Any]:
        """The state file ``sage llm serve`` wrote."""
        return dict(json.loads((self.home / "llm" / "state.json").read_text()))
