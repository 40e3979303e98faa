"""The chunk log shared streams are followed through: bounded like the cache's recording."""

from __future__ import annotations

import asyncio

import pytest

from proxy.coalesce.fanout import ChunkLog

CHUNK = 100


class Source:
    """``count`` chunks of ``CHUNK`` bytes; each read is one awaited step (cancel-safe)."""

    def __init__(self, count: int) -> None:
        self.left = count
        self.sent = 0

    def __aiter__(self) -> Source:
        return self

    async def __anext__(self) -> bytes:
        await asyncio.sleep(0)
        if self.left == 0:
            raise StopAsyncIteration
        self.left -= 1
        self.sent += 1
        return bytes([self.sent % 256]) * CHUNK


def expected(count: int) -> list[bytes]:
    return [bytes([i % 256]) * CHUNK for i in range(1, count + 1)]


async def test_memory_held_stays_bounded_and_attached_readers_get_every_chunk() -> None:
    log = ChunkLog(Source(200), max_bytes=1000)
    readers = [log.reader() for _ in range(3)]
    got: list[list[bytes]] = [[], [], []]
    held = 0

    async def read(i: int) -> None:
        nonlocal held
        async for chunk in readers[i]:
            got[i].append(chunk)
            held = max(held, log.held_bytes)

    await asyncio.gather(*(read(i) for i in range(3)))
    assert got == [expected(200)] * 3
    assert log.size == 200 * CHUNK
    assert held <= 1000 + 2 * CHUNK  # the bound, plus what the slowest reader has yet to read
    assert not log.whole
    assert await log.finished() and not await log.kept()


async def test_a_late_joiner_cannot_start_once_the_log_outgrew_the_bound() -> None:
    log = ChunkLog(Source(30), max_bytes=1000)
    first = log.reader()
    early = [await first.__anext__() for _ in range(5)]
    late = log.reader()  # 500 bytes so far: still whole, so this one gets everything
    rest = [chunk async for chunk in first]
    assert early + rest == expected(30)
    with pytest.raises(RuntimeError):
        log.reader()
    assert [chunk async for chunk in late] == expected(30)


async def test_a_reader_that_leaves_does_not_pin_the_log() -> None:
    log = ChunkLog(Source(100), max_bytes=500)
    staying, leaving = log.reader(), log.reader()
    await leaving.__anext__()
    leaving.close()
    assert len([chunk async for chunk in staying]) == 100
    assert log.held_bytes <= 2 * CHUNK


async def test_a_stream_within_the_bound_is_kept_whole() -> None:
    log = ChunkLog(Source(10), max_bytes=1000)
    assert len([chunk async for chunk in log.reader()]) == 10
    assert log.whole and await log.kept()
    assert log.chunks == expected(10)
    assert [chunk async for chunk in log.reader()] == expected(10)
