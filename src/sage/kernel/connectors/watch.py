"""``DirectoryWatcher``: wakes a source when something changes under a directory.

It runs ``watchfiles`` (inotify on Linux, through the Rust ``notify`` crate) on a thread of
its own and gathers the changed paths until a source asks for them. Where inotify cannot run
(its watch limit reached, a file system without it) it falls back to polling: a scan every
``poll_delay_ms`` that compares each file's inode, size and modification time in
nanoseconds (``watchfiles``' own polling watcher misses a file replaced by another of the
same size within the same second).

The watcher only says *which* paths to look at; the sources read the files themselves and
decide what changed, so a missed or merged notification costs latency, never correctness.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sage.common.errors import SageError

__all__ = ["DirectoryWatcher", "WatcherError"]

logger = logging.getLogger(__name__)


class WatcherError(SageError):
    """The watcher stopped: its cause is chained."""


class DirectoryWatcher:
    """Changed paths under ``root``, gathered on a background thread (thread-safe).

    Args:
        root: The directory to watch (it must exist).
        recursive: Watch subdirectories too.
        polling: ``None``: inotify, else polling when inotify fails to start; ``True``:
            polling only; ``False``: inotify only (fail if it cannot start).
        step_ms: A batch of changes is handed over once no new change came for this long
            (``watchfiles``' ``step``): low for freshness, higher to merge bursts.
        debounce_ms: Longest a batch of changes is held while changes keep coming.
        poll_delay_ms: The polling watcher's period.
        name: Names the thread.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        recursive: bool = True,
        polling: bool | None = None,
        step_ms: int = 10,
        debounce_ms: int = 100,
        poll_delay_ms: int = 200,
        name: str = "sage-watch",
    ) -> None:
        self.root = Path(root)
        self.recursive = recursive
        self.polling = polling
        self.step_ms = step_ms
        self.debounce_ms = debounce_ms
        self.poll_delay_ms = poll_delay_ms
        self.name = name
        self.mode: str | None = None  # "inotify" or "polling", once started
        self._cond = threading.Condition()
        self._changed: set[str] = set()
        self._error: BaseException | None = None
        self._ready = threading.Event()  # the watches are in place
        self._settled = threading.Event()  # ready, or failed before it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start watching; return once the watches are in place (changes from then on are
        seen), so that a scan made afterwards misses nothing.

        Raises:
            WatcherError: the watcher could not start within ``timeout`` seconds.
        """
        if not self.root.is_dir():
            raise WatcherError(f"cannot watch {self.root}: it is not a directory; create it first")
        modes = [True] if self.polling else [False] if self.polling is False else [False, True]
        for force_polling in modes:
            self._error = None
            self._ready.clear()
            self._settled.clear()
            self._stop.clear()
            thread = threading.Thread(
                target=self._run, args=(force_polling,), name=self.name, daemon=True
            )
            thread.start()
            if not self._settled.wait(timeout):  # ready, or the thread failed trying
                self._stop.set()
                raise WatcherError(f"watching {self.root} did not start in {timeout:g} s")
            if self._ready.is_set():
                self._thread = thread
                self.mode = "polling" if force_polling else "inotify"
                return
            if force_polling is False and len(modes) > 1:
                logger.warning(
                    "inotify could not watch %s (%s); polling every %d ms instead",
                    self.root,
                    self._error,
                    self.poll_delay_ms,
                )
        raise WatcherError(f"cannot watch {self.root}: {self._error}") from self._error

    def changes(self, timeout: float) -> set[str]:
        """The absolute paths changed since the last call, waiting up to ``timeout`` seconds
        for the first (empty: none came).

        Raises:
            WatcherError: the watcher failed (the cause is chained).
        """
        with self._cond:
            if not self._changed and self._error is None:
                self._cond.wait(timeout)
            if self._error is not None and self._ready.is_set():
                raise WatcherError(f"watching {self.root} failed: {self._error}") from self._error
            changed, self._changed = self._changed, set()
            return changed

    def stop(self) -> None:
        """Stop the thread (idempotent)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)

    def _batches(self) -> Iterator[set[tuple[Any, str]]]:
        import watchfiles

        return watchfiles.watch(
            self.root,
            watch_filter=None,
            debounce=self.debounce_ms,
            step=self.step_ms,
            stop_event=self._stop,
            rust_timeout=200,  # an empty batch this often: the first one says "ready"
            yield_on_timeout=True,
            raise_interrupt=False,
            force_polling=False,
            recursive=self.recursive,
            ignore_permission_denied=True,
        )

    def _run(self, force_polling: bool) -> None:
        try:
            if force_polling:
                self._poll()
                return
            for batch in self._batches():
                self._ready.set()
                self._settled.set()
                if batch:
                    with self._cond:
                        self._changed.update(path for _, path in batch)
                        self._cond.notify_all()
                if self._stop.is_set():
                    return
        except BaseException as exc:  # reported to the source by changes()
            with self._cond:
                self._error = exc
                self._cond.notify_all()
            self._settled.set()

    def _snapshot(self) -> dict[str, tuple[int, int, int]]:
        """Every file and directory under the root: (inode, size, mtime in ns)."""
        found: dict[str, tuple[int, int, int]] = {}
        for top, dirs, files in os.walk(self.root):
            if not self.recursive:
                dirs[:] = []
            for name in (*dirs, *files):
                path = os.path.join(top, name)
                try:
                    st = os.stat(path, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                found[path] = (st.st_ino, st.st_size, st.st_mtime_ns)
        return found

    def _poll(self) -> None:
        """The polling watcher: compare a new snapshot with the last, every period."""
        last = self._snapshot()
        self._ready.set()
        self._settled.set()
        period = self.poll_delay_ms / 1000
        while not self._stop.wait(period):  # the polling period is the point of this wait
            now = self._snapshot()
            changed = {p for p in now.keys() | last.keys() if now.get(p) != last.get(p)}
            last = now
            if changed:
                with self._cond:
                    self._changed.update(changed)
                    self._cond.notify_all()
