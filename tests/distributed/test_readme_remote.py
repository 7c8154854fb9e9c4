"""The README's first example and its services example, switched to ``RemoteEnvironment``,
print on a JobManager over the loopback Ray cluster what they print locally (what their
comments say; ``tests/test_docs.py`` checks the local run)."""

from __future__ import annotations

import contextlib
import io
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from jobmanager_helpers import running_jobmanager

from sage.kernel.jobmanager.factories import RayJobFactory

README = Path(__file__).resolve().parents[2] / "README.md"
LOCAL_IMPORT = "from sage.kernel.api.local_environment import LocalEnvironment"
REMOTE_IMPORT = "from sage.kernel.api.remote_environment import RemoteEnvironment"

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("home")]


def readme_block(marker: str) -> str:
    """The README's Python block that contains ``marker``."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    return next(block for block in blocks if marker in block)


def on_remote(block: str, port: int) -> str:
    """``block`` with its ``LocalEnvironment`` swapped for a ``RemoteEnvironment``."""
    assert LOCAL_IMPORT in block
    remote = block.replace(LOCAL_IMPORT, REMOTE_IMPORT)
    remote = re.sub(r"LocalEnvironment\(([^)]*)\)", rf"RemoteEnvironment(\1, port={port})", remote)
    assert "LocalEnvironment" not in remote
    return remote


@pytest.mark.parametrize("marker", ["class RunningCount", "def build_index"])
def test_the_readme_examples_print_the_same_on_a_remote_environment(
    ray_cluster: Any, marker: str
) -> None:
    block = readme_block(marker)
    claimed = [comment.strip() for _, comment in re.findall(r"print\((.*)\)\s+# (.*)", block)]
    assert claimed
    out = io.StringIO()
    with running_jobmanager(RayJobFactory(ray_cluster.address)) as server:
        code = on_remote(block, server.port)
        logging.disable(logging.WARNING)  # a log handler writing to stdout must not add lines
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
        finally:
            logging.disable(logging.NOTSET)
    assert out.getvalue().splitlines() == claimed
