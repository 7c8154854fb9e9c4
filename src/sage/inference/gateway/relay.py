"""Relaying a streamed answer from an instance to the client, chunk by chunk, holding the
request's slot on the instance until the stream ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from time import perf_counter

__all__ = ["StreamRelay"]


class StreamRelay:
    """A streamed answer passed on from an instance chunk by chunk (an async iterator).

    It holds the request's slot on the instance until the stream ends or :meth:`aclose`,
    which also works before the first chunk was asked for (a client that left while its
    request waited): an async generator's ``finally`` never runs if it never started, so the
    slot would stay taken and the instance look busy for good.

    Args:
        chunks: The instance's streamed body.
        settle: Called once, with whether the stream failed and when its first chunk came.
        timeout_s: Longest to wait for the instance's first chunk when closing unstarted.
        chunk_timeout_s: Longest to wait for each chunk; past it the stream fails (an
            instance that stalls mid-answer must not hold the slot and the client for ever).
    """

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        settle: Callable[[bool, float | None], None],
        timeout_s: float,
        chunk_timeout_s: float | None = None,
    ) -> None:
        self._chunks = chunks
        self._settle = settle
        self._timeout_s = timeout_s
        self._chunk_timeout_s = chunk_timeout_s
        self._started = False
        self._first: float | None = None
        self._closed = False

    def __aiter__(self) -> StreamRelay:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        self._started = True
        try:
            chunk = await asyncio.wait_for(anext(self._chunks), self._chunk_timeout_s)
        except StopAsyncIteration:
            await self._close(failed=False)
            raise
        except BaseException:
            await self._close(failed=True)
            raise
        if self._first is None:
            self._first = perf_counter()
        return chunk

    async def aclose(self) -> None:
        """Stop relaying (the client went away): give the slot and the connection back."""
        await self._close(failed=True)

    async def _close(self, failed: bool) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if not self._started:
                # The upstream body is a generator too: start it so that closing it releases
                # its connection (it was answering, so its first chunk is on the way).
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(anext(self._chunks), self._timeout_s)
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            self._settle(failed, self._first)
