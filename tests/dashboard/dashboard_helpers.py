"""A user's script running a pipeline in its own process: what the dashboard tests watch.

(A module of its own: ``from conftest import`` would find whichever ``conftest`` was
imported first.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PIPELINE = Path(__file__).with_name("running_pipeline.py")


class RunningJob:
    """A user's script running a pipeline in its own process until :meth:`finish`."""

    def __init__(self, name: str, home: Path) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, str(PIPELINE), name],
            env={**os.environ, "SAGE_HOME": str(home)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "running"

    def finish(self) -> int:
        assert self.process.stdin is not None
        if not self.process.stdin.closed:
            self.process.stdin.close()
        return self.process.wait(60)
