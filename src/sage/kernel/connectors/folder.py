"""``FolderSource``: the files of a folder as a never-ending stream of added, changed and
deleted documents.

At start it scans the folder and emits every file as ``added``; then a
:class:`~sage.kernel.connectors.watch.DirectoryWatcher` wakes it whenever something changes
and it emits what did. What it knows of the folder (each file's content digest) is its
checkpointed position: after a restart it scans again and emits exactly the difference
between that and the folder as it is now (files added, changed or deleted meanwhile), so a
consumer that applies the events in order always ends with the folder's current state.

Each event carries a ``version`` from a hybrid logical clock (``max(last + 1, time_ns())``,
itself in the checkpoints): later events of a file always have higher versions, across
restarts too, so a store can refuse an older update that arrives after a newer one.

Example:
    >>> env.from_source(FolderSource, "docs/", patterns=["*.md"])   # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sage.common.errors import ConfigError
from sage.kernel.connectors.base import ConnectorSource
from sage.kernel.connectors.watch import DirectoryWatcher

__all__ = ["ADDED", "CHANGED", "DELETED", "FileEvent", "FolderSource"]

logger = logging.getLogger(__name__)

ADDED, CHANGED, DELETED = "added", "changed", "deleted"
_IGNORED = (".*", "*~", "*.swp", "*.tmp", "*.part", "__pycache__")


@dataclass(frozen=True, slots=True)
class FileEvent:
    """One file added, changed or deleted.

    Attributes:
        kind: ``"added"``, ``"changed"`` or ``"deleted"``.
        path: Relative to the folder, ``/``-separated: the document's id.
        text: The file's content (``None`` for a deleted file).
        version: Increases with every event of the source, across restarts.
        observed_at: ``time.time()`` when the source read the file (or saw it gone).
        digest: The content's BLAKE2b digest (``None`` for a deleted file).
    """

    kind: str
    path: str
    text: str | None
    version: int
    observed_at: float
    digest: str | None = None


class FolderSource(ConnectorSource):
    """Follows the files of ``folder``; see the module docstring.

    Args:
        folder: The directory to follow (it must exist).
        patterns: Glob patterns of the file names to follow (default: every file).
        ignore: Glob patterns of file and directory names to skip (default: hidden files,
            editor and partial-download files).
        recursive: Follow subdirectories too.
        polling: ``None``: inotify with a polling fallback; ``True``: poll only.
        encoding: How file contents are decoded (undecodable bytes are replaced).
        max_bytes: Larger files are skipped with a warning.
        batch: Most files read per poll (bounds the work between two checkpoints).
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        patterns: list[str] | tuple[str, ...] = ("*",),
        ignore: list[str] | tuple[str, ...] = _IGNORED,
        recursive: bool = True,
        polling: bool | None = None,
        encoding: str = "utf-8",
        max_bytes: int = 16 * 1024 * 1024,
        batch: int = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(patterns, str) or isinstance(ignore, str):  # type: ignore[unreachable]
            raise ConfigError(
                "FolderSource: patterns and ignore are lists of globs, e.g. patterns=['*.md']"
            )
        self.folder = Path(folder)
        self.patterns = tuple(patterns)
        self.ignore = tuple(ignore)
        self.recursive = recursive
        self.polling = polling
        self.encoding = encoding
        self.max_bytes = max_bytes
        self.batch = batch
        self._known: dict[str, str] = {}  # relative path -> digest of the content emitted
        self._clock = 0
        self._dirty: dict[str, None] = {}  # paths to look at, in order
        self._watcher: DirectoryWatcher | None = None

    # -- the connector --------------------------------------------------------------------

    def connect(self, position: Any) -> None:
        if not self.folder.is_dir():
            raise ConfigError(
                f"FolderSource: {self.folder} is not a directory; create it or pass the "
                "folder to follow"
            )
        if position is not None:
            self._known = dict(position["files"])
            self._clock = int(position["clock"])
        name = self.ctx.operator_name if self.ctx is not None else "folder"
        self._watcher = DirectoryWatcher(
            self.folder, recursive=self.recursive, polling=self.polling, name=f"sage-{name}"
        )
        self._watcher.start()  # before the scan: a change during it is seen afterwards
        found = sorted(self._scan(self.folder))
        self._dirty = dict.fromkeys([*found, *sorted(self._known.keys() - set(found))])
        logger.info(
            "%s: following %d files in %s (%s)",
            name,
            len(found),
            self.folder,
            self._watcher.mode,
        )

    def poll(self, timeout: float) -> list[FileEvent]:
        assert self._watcher is not None, "FolderSource.poll() before connect()"
        if not self._dirty:
            for path in sorted(self._watcher.changes(timeout)):
                self._mark(path)
        events: list[FileEvent] = []
        while self._dirty and len(events) < self.batch:
            rel = next(iter(self._dirty))
            del self._dirty[rel]
            event = self._examine(rel)
            if event is not None:
                events.append(event)
        return events

    def position(self) -> dict[str, Any]:
        return {"files": dict(self._known), "clock": self._clock}

    def disconnect(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None

    # -- internals ------------------------------------------------------------------------

    def _wanted(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.patterns) and not self._ignored(name)

    def _ignored(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.ignore)

    def _scan(self, directory: Path) -> list[str]:
        """Relative paths of the wanted files under ``directory``."""
        found: list[str] = []
        for top, dirs, files in os.walk(directory):
            dirs[:] = [d for d in dirs if self.recursive and not self._ignored(d)]
            for name in files:
                if self._wanted(name):
                    found.append(Path(top, name).relative_to(self.folder).as_posix())
        return found

    def _mark(self, absolute: str) -> None:
        """Queue what a change at ``absolute`` may have touched: the file, or every file
        under a directory (created, or moved in or out as a whole)."""
        try:
            rel = Path(absolute).relative_to(self.folder).as_posix()
        except ValueError:
            return
        parts = rel.split("/")
        if any(self._ignored(part) for part in parts[:-1]):
            return
        if os.path.isdir(absolute):
            for found in self._scan(Path(absolute)):
                self._dirty[found] = None
        prefix = rel + "/"
        for known in [k for k in self._known if k.startswith(prefix)]:
            self._dirty[known] = None
        if self._wanted(parts[-1]):
            self._dirty[rel] = None

    def _tick(self) -> int:
        self._clock = max(self._clock + 1, time.time_ns())
        return self._clock

    def _examine(self, rel: str) -> FileEvent | None:
        """The event that brings ``rel`` up to date, or ``None`` if it is."""
        path = self.folder / rel
        try:
            size = path.stat().st_size
            if not path.is_file():
                raise FileNotFoundError(rel)
            if size > self.max_bytes:
                logger.warning(
                    "%s: %d bytes, over max_bytes=%d: skipped", path, size, self.max_bytes
                )
                data = None
            else:
                data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            data = None
            if rel not in self._known:
                return None
            del self._known[rel]
            return FileEvent(DELETED, rel, None, self._tick(), time.time())
        except PermissionError as exc:
            logger.warning("%s cannot be read (%s): skipped until it changes again", path, exc)
            return None
        if data is None:
            return None
        digest = hashlib.blake2b(data, digest_size=16).hexdigest()
        previous = self._known.get(rel)
        if previous == digest:
            return None
        self._known[rel] = digest
        text = data.decode(self.encoding, errors="replace")
        kind = ADDED if previous is None else CHANGED
        return FileEvent(kind, rel, text, self._tick(), time.time(), digest)
