"""Where completed checkpoints are kept: in memory, and in ``checkpoint_dir`` when given.

A checkpoint is the snapshot of every task of the job, taken at the same barrier. Each is
written to ``<checkpoint_dir>/<job>/chk-<id>.ckpt`` through a temporary file and an atomic
rename, so a crash while writing never leaves a torn checkpoint; the latest
:data:`KEEP` are kept. The files are pickles written by this process for its own restarts:
never point ``checkpoint_dir`` at files from a source you do not trust.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["KEEP", "Checkpoint", "CheckpointStore"]

logger = logging.getLogger(__name__)

KEEP = 3
_NAME = re.compile(r"chk-(\d+)\.ckpt")


@dataclass(frozen=True)
class Checkpoint:
    """A completed checkpoint: each task's snapshot (pickled) at barrier ``id``."""

    id: int
    snapshots: dict[str, bytes] = field(default_factory=dict)


class CheckpointStore:
    """Keeps the latest completed checkpoint of a job (and writes it to disk if asked).

    Args:
        directory: Parent directory of the job's checkpoints, or ``None`` for memory only.
        job: The job's name (the subdirectory).
    """

    def __init__(self, directory: Path | None, job: str) -> None:
        self.directory = None if directory is None else Path(directory) / job
        self._latest: Checkpoint | None = None
        self._lock = threading.Lock()
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    def save(self, checkpoint: Checkpoint) -> None:
        """Keep ``checkpoint`` as the latest (written durably before it counts)."""
        if self.directory is not None:
            path = self.directory / f"chk-{checkpoint.id:09d}.ckpt"
            tmp = path.with_suffix(".tmp")
            with open(tmp, "wb") as out:
                pickle.dump(checkpoint, out, protocol=pickle.HIGHEST_PROTOCOL)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
            self._prune()
        with self._lock:
            self._latest = checkpoint
        logger.debug("checkpoint %d saved (%d tasks)", checkpoint.id, len(checkpoint.snapshots))

    def latest(self) -> Checkpoint | None:
        """The latest completed checkpoint, if any."""
        with self._lock:
            return self._latest

    def _prune(self) -> None:
        assert self.directory is not None
        found = sorted(
            (int(m.group(1)), p)
            for p in self.directory.iterdir()
            if (m := _NAME.fullmatch(p.name)) is not None
        )
        for _, old in found[:-KEEP]:
            old.unlink(missing_ok=True)
