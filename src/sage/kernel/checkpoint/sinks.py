"""A sink that writes each record exactly once, however often the job restarts.

:class:`TransactionalFileSink` is a two-phase commit, as Flink's ``FileSink``: records go to
an in-progress file; at each checkpoint the file is closed and renamed ``.pending``
(pre-commit) and its name saved in the checkpoint; once the checkpoint is complete the file
is renamed to its final ``.jsonl`` name (commit). After a failure the job restarts from the
latest complete checkpoint: pending files it names are committed, and everything written
after it (in-progress and later pending files) is deleted, because the restarted sources
send those records again. Readers see only committed files (:func:`read_committed`).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from sage.common.core.context import RuntimeContext
from sage.common.core.functions.sink_function import SinkFunction

__all__ = ["TransactionalFileSink", "read_committed"]

_COMMITTED = ".jsonl"


def read_committed(directory: str | Path, parse: Callable[[str], Any] = json.loads) -> list[Any]:
    """Every record committed to ``directory``, file by file in name order."""
    records: list[Any] = []
    for path in sorted(Path(directory).glob(f"*{_COMMITTED}")):
        with open(path, encoding="utf-8") as lines:
            records.extend(parse(line) for line in lines if line.strip())
    return records


class TransactionalFileSink(SinkFunction):
    """Writes records as lines to ``directory``, committed at checkpoints (see the module).

    Args:
        directory: Where the files go (created if missing); one set of files per instance.
        serialize: Turns a record into one line (default: JSON).
        prefix: File name prefix, ``<prefix>-<instance>-<sequence>.jsonl``.

    Without checkpoints the files are committed when the job ends cleanly.
    """

    def __init__(
        self,
        directory: str | Path,
        serialize: Callable[[Any], str] = json.dumps,
        prefix: str = "part",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.directory = Path(directory)
        self.serialize = serialize
        self.prefix = prefix
        self._seq = 0  # the next file's number
        self._pending: list[tuple[int, str]] = []  # (checkpoint id, pending file), pre-committed
        self._file: IO[str] | None = None
        self._lock = threading.Lock()  # commits run on the coordinator's thread

    # -- life cycle -------------------------------------------------------------------

    def _name(self, seq: int, suffix: str) -> Path:
        index = 0 if self.ctx is None else self.ctx.instance_index
        return self.directory / f"{self.prefix}-{index}-{seq:09d}{suffix}"

    def open(self, context: RuntimeContext) -> None:
        """Delete this instance's uncommitted files left by an earlier, failed attempt."""
        self.directory.mkdir(parents=True, exist_ok=True)
        keep = {name for _, name in self._pending}
        mine = re.compile(
            rf"{re.escape(self.prefix)}-{context.instance_index}-\d+\.(inprogress|pending)"
        )
        for path in self.directory.iterdir():
            if mine.fullmatch(path.name) and path.name not in keep:
                path.unlink(missing_ok=True)

    def execute(self, data: Any) -> None:
        """Append ``data`` to the in-progress file."""
        if self._file is None:
            path = self._name(self._seq, ".inprogress")
            self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - spans records
        self._file.write(self.serialize(data) + "\n")

    def close(self) -> None:
        """Close the in-progress file (an attempt that failed leaves it to be deleted)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- checkpoints ------------------------------------------------------------------

    def get_state(self, checkpoint_id: int) -> dict[str, Any]:
        """Pre-commit: close the in-progress file as ``.pending`` for ``checkpoint_id``."""
        with self._lock:
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self._file = None
                pending = self._name(self._seq, ".pending")
                os.replace(self._name(self._seq, ".inprogress"), pending)
                self._pending.append((checkpoint_id, pending.name))
                self._seq += 1
            return {"seq": self._seq, "pending": list(self._pending)}

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        """Commit the files pre-committed up to ``checkpoint_id``."""
        with self._lock:
            done = [entry for entry in self._pending if entry[0] <= checkpoint_id]
            for _, name in done:
                self._commit(name)
            self._pending = [entry for entry in self._pending if entry[0] > checkpoint_id]

    def restore_state(self, state: dict[str, Any]) -> None:
        """Resume from a checkpoint: commit what it pre-committed (once is enough)."""
        with self._lock:
            self._seq = int(state["seq"])
            for _, name in state["pending"]:
                self._commit(name)
            self._pending = []

    def _commit(self, name: str) -> None:
        pending = self.directory / name
        if pending.exists():  # else committed before (a restart after the commit)
            os.replace(pending, pending.with_suffix(_COMMITTED))
