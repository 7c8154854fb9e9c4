"""Small synchronisation helpers shared by services, servers and clients."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, Self, TypeVar

__all__ = ["BackgroundServer", "LoopThread", "RWLock", "run_loop"]

T = TypeVar("T")


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a new uvloop event loop (asyncio's where uvloop is not
    installed) in this thread; the blocking entry point of servers and command-line tools."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is installed on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)


async def _cancel_other_tasks() -> None:
    current = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not current]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
    for _ in range(3):  # transports those tasks closed finish closing on later iterations
        await asyncio.sleep(0)


class LoopThread:
    """An event loop (uvloop) running on its own daemon thread.

    For serving from synchronous code (examples, tests, benchmarks, embedded engines): submit
    coroutines with :meth:`call` and get their results back on the calling thread.

    Args:
        name: The thread's name.
    """

    def __init__(self, name: str = "sage-loop") -> None:
        import uvloop

        self.loop = uvloop.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(started.set)
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.thread.start()
        started.wait()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop; return its result (or raise its exception)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> Any:
        """Start ``coro`` on the loop; return its ``concurrent.futures.Future``."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel and await the tasks still on the loop (as ``asyncio.run`` does on exit, so
        none is destroyed pending mid-connect), stop the loop, join the thread, close the
        loop (idempotent)."""
        if self.loop.is_closed():
            return
        with contextlib.suppress(Exception):  # stop the thread even if a task will not end
            self.call(_cancel_other_tasks(), timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class BackgroundServer:
    """``start()``/``stop()``/``with`` for an asyncio server, served from its own thread.

    A subclass implements ``start_async()`` (listen on the running loop, return the port)
    and ``stop_async()``; this runs them on a :class:`LoopThread` for synchronous callers.
    """

    thread_name = "sage-http"
    _thread: LoopThread | None = None

    async def start_async(self) -> int:
        raise NotImplementedError

    async def stop_async(self) -> None:
        raise NotImplementedError

    def start(self) -> int:
        """Serve from a background thread; return the port once listening."""
        self._thread = LoopThread(self.thread_name)
        try:
            return self._thread.call(self.start_async())
        except BaseException:
            self._thread.stop()
            self._thread = None
            raise

    def stop(self) -> None:
        """Stop a server started with :meth:`start`; idempotent."""
        if self._thread is None:
            return
        try:
            self._thread.call(self.stop_async())
        finally:
            self._thread.stop()
            self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation).

    Example:
        >>> lock = RWLock()
        >>> with lock.read():
        ...     pass
        >>> with lock.write():
        ...     pass
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        """Hold the lock shared."""
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        """Hold the lock exclusively."""
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
