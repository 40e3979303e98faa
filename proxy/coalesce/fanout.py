"""A recorded chunk stream that any number of readers follow: from the start, then live."""

from __future__ import annotations

import asyncio
import copy

from ..errors import ProxyError

__all__ = ["ChunkLog"]


class ChunkLog:
    """Chunks appended by one writer; each reader yields all of them from index 0, then waits.

    The writer never waits for readers, so the first reader gets each chunk one loop turn after
    it arrives, like a direct read.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done = False
        self.error: ProxyError | None = None
        self._changed = asyncio.Event()

    def append(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self._wake()

    def finish(self, error: ProxyError | None = None) -> None:
        self.done = True
        self.error = error
        self._wake()

    def _wake(self) -> None:
        # A fresh event per change: readers cancelled while waiting cannot disturb the others.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def reader(self) -> _Reader:
        return _Reader(self)


class _Reader:
    """Iterates a :class:`ChunkLog` (a class, not a generator: nothing to finalise)."""

    __slots__ = ("_log", "_next")

    def __init__(self, log: ChunkLog) -> None:
        self._log = log
        self._next = 0

    def __aiter__(self) -> _Reader:
        return self

    async def __anext__(self) -> bytes:
        log = self._log
        while self._next >= len(log.chunks):
            if log.done:
                if log.error is not None:
                    raise copy.copy(log.error)
                raise StopAsyncIteration
            await log._changed.wait()
        chunk = log.chunks[self._next]
        self._next += 1
        return chunk
