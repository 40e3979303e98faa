"""Reading JSONL from chunks: lines across chunk boundaries, long lines, the last line."""

from __future__ import annotations

from collections.abc import AsyncIterator

from proxy.batches.files import CHUNK_BYTES, FileWriter
from proxy.batches.lines import read_lines
from proxy.batches.memory import MemoryFileStore


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _lines(*parts: bytes, max_line_bytes: int = 100) -> list[tuple[int, bytes | None]]:
    return [x async for x in read_lines(_chunks(*parts), max_line_bytes=max_line_bytes)]


async def test_lines_span_chunks_and_the_last_needs_no_newline() -> None:
    assert await _lines(b"ab", b"c\nd", b"", b"e\n\nf") == [
        (1, b"abc"),
        (2, b"de"),
        (3, b""),
        (4, b"f"),
    ]
    assert await _lines(b"a\n") == [(1, b"a")]
    assert await _lines() == []


async def test_a_line_over_the_limit_is_none_and_the_next_one_is_whole() -> None:
    got = await _lines(b"x" * 6, b"x" * 6 + b"\nok\n", b"y" * 20, max_line_bytes=10)
    assert got == [(1, None), (2, b"ok"), (3, None)]
    assert await _lines(b"x" * 10 + b"\n", max_line_bytes=10) == [(1, b"x" * 10)]


async def test_a_large_write_is_stored_in_whole_chunks() -> None:
    """One read larger than a chunk (a fast client, a big TCP read) is split, never kept whole:
    no stored piece is above CHUNK_BYTES (a 317 KiB piece was seen under load)."""
    store = MemoryFileStore()
    writer = FileWriter(store, "file-x", ttl_s=60, max_bytes=10 * CHUNK_BYTES)
    data = bytes(range(256)) * (CHUNK_BYTES * 5 // 2 // 256)
    await writer.write(data)
    await writer.commit(tenant="t", filename="f.jsonl", purpose="batch")
    pieces = []
    while (piece := await store.chunk("file-x", len(pieces))) is not None:
        pieces.append(piece)
    assert b"".join(pieces) == data
    assert max(len(p) for p in pieces) <= CHUNK_BYTES
