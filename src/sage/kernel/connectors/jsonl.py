"""``JsonLinesSource``: follows a JSON-lines file as it grows, across rotations.

The position is the file's inode and the byte offset after the last complete line handed
out: a line still being written (no newline yet) waits for its end, and after a restart
reading goes on at that offset of that same file, found by its inode even if it has been
renamed since (``app.jsonl`` -> ``app.jsonl.1``, as ``logrotate`` does): the rest of the
rotated file is read first, then the new one from its start. A file truncated in place
(``copytruncate``) is read again from its start.

:class:`LineReader` does the reading without any waiting, so that other sources (the HTTP
ingest source's journal) can wake it their own way.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import orjson

from sage.common.errors import ConfigError
from sage.kernel.connectors.base import ConnectorSource
from sage.kernel.connectors.watch import DirectoryWatcher

__all__ = ["JsonLinesSource", "LineReader"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_ON_ERROR = ("raise", "skip")


class LineReader:
    """Complete lines of a growing file, decoded; see the module docstring.

    Args:
        path: The file (it may not exist yet).
        parse: ``"json"``: each line is a JSON value; ``"text"``: each line as a ``str``.
        on_error: A line that is not JSON: ``"raise"`` (the job fails, naming the file and
            offset) or ``"skip"`` (logged and counted in :attr:`skipped`).
    """

    def __init__(self, path: str | os.PathLike[str], parse: str = "json", on_error: str = "raise"):
        if parse not in ("json", "text"):
            raise ConfigError(f"parse={parse!r} is invalid; use 'json' or 'text'")
        if on_error not in _ON_ERROR:
            raise ConfigError(f"on_error={on_error!r} is invalid; use 'raise' or 'skip'")
        self.path = Path(path)
        self.parse = parse
        self.on_error = on_error
        self.skipped = 0
        self._fh: Any = None
        self._inode: int | None = None
        self._offset = 0

    def open(self, position: dict[str, int] | None, at_end: bool = False) -> None:
        """Start after ``position`` (see :meth:`position`), else at the start (or the end)
        of the file."""
        if position is None:
            self._open_current(at_end)
            return
        found = self._find(int(position["inode"]))
        if found is None:
            logger.warning(
                "%s: the file read before the restart (inode %s) is gone; reading the "
                "current file from its start",
                self.path,
                position["inode"],
            )
            self._open_current(False)
            return
        self._fh = open(found, "rb")  # noqa: SIM115 (kept open while following)
        self._inode = int(position["inode"])
        self._offset = int(position["offset"])

    def position(self) -> dict[str, int] | None:
        """``{"inode", "offset"}`` after the last line returned (``None``: no file yet)."""
        if self._inode is None:
            return None
        return {"inode": self._inode, "offset": self._offset}

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def read(self, most: int) -> list[Any]:
        """Up to ``most`` records from the complete lines not read yet (never blocks)."""
        if self._fh is None:
            self._open_current(False)
            if self._fh is None:
                return []
        records = self._lines(most)
        if records:
            return records
        try:
            current = os.stat(self.path)
        except FileNotFoundError:  # rotated away, the new file not created yet
            return []
        if current.st_ino != self._inode:  # rotated: the old file is read to its end
            tail = self._last_line()
            self._fh.close()
            self._open_current(False)
            return tail + self._lines(most)
        if current.st_size < self._offset:
            logger.warning("%s was truncated; reading it again from its start", self.path)
            self._offset = 0
            return self._lines(most)
        return []

    # -- internals ------------------------------------------------------------------------

    def _open_current(self, at_end: bool) -> None:
        try:
            self._fh = open(self.path, "rb")  # noqa: SIM115 (kept open while following)
        except FileNotFoundError:
            self._fh = None
            return
        stat = os.fstat(self._fh.fileno())
        self._inode = stat.st_ino
        self._offset = stat.st_size if at_end else 0

    def _find(self, inode: int) -> Path | None:
        """The file with ``inode``: the path itself, or a rotated sibling of it."""
        directory = self.path.parent
        candidates = [self.path, *sorted(directory.glob(self.path.name + "*"))]
        for candidate in candidates:
            try:
                if candidate.stat().st_ino == inode:
                    return candidate
            except FileNotFoundError:
                continue
        return None

    def _lines(self, most: int) -> list[Any]:
        fh = self._fh
        fh.seek(self._offset)
        data = fh.read(_CHUNK)
        end = data.rfind(b"\n")
        while end < 0 and len(data) % _CHUNK == 0 and data:  # one line longer than a chunk
            more = fh.read(_CHUNK)
            if not more:
                break
            data += more
            end = data.rfind(b"\n")
        if end < 0:
            return []
        records: list[Any] = []
        consumed = 0
        for line in data[: end + 1].split(b"\n")[:-1]:
            start = self._offset + consumed
            consumed += len(line) + 1
            if line.strip():
                self._decode(line, start, records)
                if len(records) >= most:
                    break
        self._offset += consumed
        return records

    def _last_line(self) -> list[Any]:
        """A rotated file's last line, complete though it has no newline."""
        self._fh.seek(self._offset)
        rest = self._fh.read()
        records: list[Any] = []
        if rest.strip():
            self._decode(rest, self._offset, records)
        return records

    def _decode(self, line: bytes, offset: int, into: list[Any]) -> None:
        if self.parse == "text":
            into.append(line.decode("utf-8", errors="replace").rstrip("\r"))
            return
        try:
            into.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            if self.on_error == "raise":
                raise ValueError(
                    f"{self.path}: the line at byte {offset} is not JSON ({exc}): "
                    f"{line[:80]!r}; fix what writes it, or pass on_error='skip'"
                ) from None
            self.skipped += 1
            logger.warning("%s: skipped the line at byte %d: not JSON (%s)", self.path, offset, exc)


class JsonLinesSource(ConnectorSource):
    """Each line of a JSON-lines file as it is appended; see the module docstring.

    Args:
        path: The file to follow (it may be created later).
        start: ``"beginning"``: every line of the file; ``"end"``: only lines appended
            after the job starts (a restart always resumes where it was).
        parse: ``"json"`` or ``"text"`` (each line as a string).
        on_error: A line that is not JSON: ``"raise"`` or ``"skip"`` (see :class:`LineReader`).
        polling: ``None``: inotify with a polling fallback; ``True``: poll only.
        batch: Most records per poll.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        start: str = "beginning",
        parse: str = "json",
        on_error: str = "raise",
        polling: bool | None = None,
        batch: int = 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if start not in ("beginning", "end"):
            raise ConfigError(f"start={start!r} is invalid; use 'beginning' or 'end'")
        self.reader = LineReader(path, parse, on_error)
        self.start = start
        self.polling = polling
        self.batch = batch
        self._watcher: DirectoryWatcher | None = None

    def connect(self, position: Any) -> None:
        directory = self.reader.path.parent
        if not directory.is_dir():
            raise ConfigError(f"JsonLinesSource: the directory {directory} does not exist")
        self._watcher = DirectoryWatcher(directory, recursive=False, polling=self.polling)
        self._watcher.start()
        self.reader.open(position, at_end=self.start == "end")

    def poll(self, timeout: float) -> list[Any]:
        assert self._watcher is not None, "JsonLinesSource.poll() before connect()"
        records = self.reader.read(self.batch)
        if records or not self._watcher.changes(timeout):
            return records
        return self.reader.read(self.batch)

    def position(self) -> Any:
        return self.reader.position()

    def disconnect(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        self.reader.close()
