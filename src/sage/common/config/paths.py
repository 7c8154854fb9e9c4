"""Where SAGE keeps its state on this machine: ``$SAGE_HOME`` (default ``~/.sage``)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["sage_home"]


def sage_home() -> Path:
    """``$SAGE_HOME``, else ``~/.sage`` (not created here)."""
    return Path(os.environ.get("SAGE_HOME") or Path.home() / ".sage")
