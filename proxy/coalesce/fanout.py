"""A recorded chunk stream that any number of readers follow: from the start, then live.

There is no pump task between the upstream and the readers: whichever reader needs the next
chunk first reads it from the source itself (the *driver*) and appends it to the log, waking the
others. So the first reader gets every chunk exactly as a direct read would, and a follower gets
it one loop turn later. The source must be safe to cancel mid-read (a class whose ``__anext__``
is one awaited read, not a generator): when the driver's client goes away, its read is cancelled,
and the next waiting reader takes over from the same point.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator

from ..errors import ProxyError

__all__ = ["ChunkLog"]


class ChunkLog:
    """Chunks of one stream; ``source`` is read on demand by the readers (``None``: complete)."""

    def __init__(self, source: AsyncIterator[bytes] | None = None) -> None:
        self.chunks: list[bytes] = []
        self.done = False
        self.error: ProxyError | None = None
        self._source = source
        self._driving = False
        self._changed = asyncio.Event()
        self._finished: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def append(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self._wake()

    def finish(self, error: ProxyError | None = None) -> None:
        if self.done:
            return
        self.done = True
        self.error = error
        self._source = None
        if not self._finished.done():
            self._finished.set_result(error is None)
        self._wake()

    async def finished(self) -> bool:
        """Wait for the end of the stream: ``True`` when it ended well."""
        return await asyncio.shield(self._finished)

    def _wake(self) -> None:
        # A fresh event per change: readers cancelled while waiting cannot disturb the others.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _pull(self) -> None:
        """Read one chunk from the source as the driver; a cancelled read hands over."""
        assert self._source is not None
        self._driving = True
        try:
            chunk = await self._source.__anext__()
        except StopAsyncIteration:
            self._driving = False
            self.finish()
        except ProxyError as exc:
            self._driving = False
            self.finish(exc)
        except asyncio.CancelledError:
            self._driving = False
            self._wake()  # this reader's client went away: another reader takes over
            raise
        else:
            self._driving = False
            self.append(chunk)

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
            if log._source is not None and not log._driving:
                await log._pull()
            else:
                await log._changed.wait()
        chunk = log.chunks[self._next]
        self._next += 1
        return chunk
