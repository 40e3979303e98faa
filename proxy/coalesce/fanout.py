"""A recorded chunk stream that any number of readers follow: from the start, then live.

There is no pump task between the upstream and the readers: whichever reader needs the next
chunk first reads it from the source itself (the *driver*) and appends it to the log, waking the
others. So the first reader gets every chunk exactly as a direct read would, and a follower gets
it one loop turn later. The source must be safe to cancel mid-read (a class whose ``__anext__``
is one awaited read, not a generator): when the driver's client goes away, its read is cancelled,
and the next waiting reader takes over from the same point.

With ``max_bytes`` the log keeps the whole stream for late joiners only up to that many bytes (as
the cache stops recording at ``cache.max_entry_bytes``). Past it the log is no longer ``whole``:
no new reader may start, and it keeps only the chunks some attached reader has yet to read, so
that a long stream shared by many callers is not held until the last one finishes.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator

from ..errors import ProxyError

__all__ = ["ChunkLog"]


class ChunkLog:
    """Chunks of one stream; ``source`` is read on demand by the readers (``None``: complete)."""

    def __init__(
        self, source: AsyncIterator[bytes] | None = None, *, max_bytes: int | None = None
    ) -> None:
        #: The chunks kept, from the stream's chunk number ``first`` on (all of them while whole).
        self.chunks: list[bytes] = []
        self.first = 0
        self.size = 0  # bytes appended so far
        self.whole = True
        self.done = False
        self.error: ProxyError | None = None
        self._max_bytes = max_bytes
        self._readers: set[_Reader] = set()
        self._source = source
        self._driving = False
        self._changed = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._finished: asyncio.Future[bool] = loop.create_future()
        self._kept: asyncio.Future[bool] = loop.create_future()

    @property
    def held_bytes(self) -> int:
        return sum(len(chunk) for chunk in self.chunks)

    def append(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        if self.whole and self._max_bytes is not None and self.size > self._max_bytes:
            self.whole = False
            _settle(self._kept, False)
        if not self.whole:
            self._trim()
        self._wake()

    def finish(self, error: ProxyError | None = None) -> None:
        if self.done:
            return
        self.done = True
        self.error = error
        self._source = None
        _settle(self._finished, error is None)
        _settle(self._kept, self.whole)
        self._wake()

    async def finished(self) -> bool:
        """Wait for the end of the stream: ``True`` when it ended well."""
        return await asyncio.shield(self._finished)

    async def kept(self) -> bool:
        """Wait for the end of the stream (``True``: kept whole) or for it to outgrow the bound
        (``False``), whichever comes first."""
        return await asyncio.shield(self._kept)

    def _trim(self) -> None:
        """Drop the chunks every attached reader has read (only once the log is not whole)."""
        end = self.first + len(self.chunks)
        keep_from = min((reader.next for reader in self._readers), default=end)
        if keep_from > self.first:
            del self.chunks[: keep_from - self.first]
            self.first = keep_from

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
        """A reader from the first chunk; only while the log is ``whole``."""
        if not self.whole:
            raise RuntimeError("the stream outgrew the log: a late joiner must make its own call")
        reader = _Reader(self)
        self._readers.add(reader)
        return reader

    def _leave(self, reader: _Reader) -> None:
        self._readers.discard(reader)
        if not self.whole:
            self._trim()


def _settle(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)


class _Reader:
    """Iterates a :class:`ChunkLog` (a class, not a generator: nothing to finalise).

    ``close`` it when done early, so that the log stops keeping chunks for it."""

    __slots__ = ("_log", "next")

    def __init__(self, log: ChunkLog) -> None:
        self._log = log
        self.next = 0  # the stream's number of the next chunk to read

    def __aiter__(self) -> _Reader:
        return self

    def close(self) -> None:
        self._log._leave(self)

    async def __anext__(self) -> bytes:
        log = self._log
        while self.next >= log.first + len(log.chunks):
            if log.done:
                self.close()
                if log.error is not None:
                    raise copy.copy(log.error)
                raise StopAsyncIteration
            if log._source is not None and not log._driving:
                await log._pull()
            else:
                await log._changed.wait()
        chunk = log.chunks[self.next - log.first]
        self.next += 1
        return chunk
