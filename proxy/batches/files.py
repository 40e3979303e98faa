"""``/v1/files`` for batches: streamed uploads into chunks, streamed downloads, ownership."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from ..config import FilesSettings
from ..errors import InvalidRequest, NotFound, PayloadTooLarge
from .lines import chunks_of
from .models import FileMeta, new_id
from .store import FileStore

__all__ = ["CHUNK_BYTES", "FileService", "FileWriter"]

#: Size of the pieces a file is stored in: what one step holds of a file at most.
CHUNK_BYTES = 256 * 1024
#: The purposes this proxy stores (its own output files are ``batch_output``).
PURPOSES = ("batch",)


class FileWriter:
    """Writes a file chunk by chunk as its bytes arrive; ``commit`` makes it a file."""

    def __init__(self, store: FileStore, file_id: str, *, ttl_s: float, max_bytes: int) -> None:
        self.store = store
        self.id = file_id
        self.ttl_s = ttl_s
        self.max_bytes = max_bytes
        self.bytes = 0
        self.lines = 0
        self._last = b"\n"
        self._buffer = bytearray()

    async def write(self, data: bytes) -> None:
        if not data:
            return
        self.bytes += len(data)
        if self.bytes > self.max_bytes:
            raise PayloadTooLarge(f"A file may be at most {self.max_bytes} bytes (files.max_bytes)")
        self.lines += data.count(b"\n")
        self._last = data[-1:]
        self._buffer += data
        while len(self._buffer) >= CHUNK_BYTES:  # whole chunks: a big read is split, not kept
            chunk = bytes(self._buffer[:CHUNK_BYTES])
            del self._buffer[:CHUNK_BYTES]
            await self.store.append(self.id, chunk, ttl_s=self.ttl_s)

    async def _flush(self) -> None:
        if self._buffer:
            chunk = bytes(self._buffer)
            self._buffer.clear()
            await self.store.append(self.id, chunk, ttl_s=self.ttl_s)

    async def commit(self, *, tenant: str, filename: str, purpose: str) -> FileMeta:
        await self._flush()
        now = time.time()
        meta = FileMeta(
            id=self.id,
            tenant=tenant,
            filename=filename,
            purpose=purpose,
            bytes=self.bytes,
            created_at=now,
            expires_at=now + self.ttl_s,
            lines=self.lines + (self._last != b"\n"),
        )
        await self.store.commit(meta)
        return meta

    async def abort(self) -> None:
        self._buffer.clear()
        await self.store.delete(self.id)


class FileService:
    def __init__(self, store: FileStore, settings: FilesSettings) -> None:
        self.store = store
        self.settings = settings

    def writer(self, file_id: str | None = None) -> FileWriter:
        return FileWriter(
            self.store,
            file_id or new_id("file-"),
            ttl_s=self.settings.ttl_s,
            max_bytes=self.settings.max_bytes,
        )

    @staticmethod
    def check_purpose(purpose: str | None) -> str:
        if purpose not in PURPOSES:
            raise InvalidRequest(
                f"'purpose' must be one of {list(PURPOSES)}: this proxy stores batch input files "
                "(batches.mode: passthrough forwards /v1/files to the upstream instead)",
                param="purpose",
            )
        return purpose

    async def upload(
        self, tenant: str, *, filename: str, purpose: str, chunks: AsyncIterator[bytes]
    ) -> FileMeta:
        """Store ``chunks`` as they arrive; 413 past ``files.max_bytes`` (nothing is kept)."""
        writer = self.writer()
        try:
            async for chunk in chunks:
                await writer.write(chunk)
            return await writer.commit(tenant=tenant, filename=filename, purpose=purpose)
        except BaseException:
            await writer.abort()
            raise

    async def get(self, tenant: str, file_id: str) -> FileMeta:
        meta = await self.store.get(file_id) if file_id.startswith("file-") else None
        if meta is None or meta.tenant != tenant:
            raise NotFound(f"No such File object: {file_id}", param="id")
        return meta

    async def content(self, tenant: str, file_id: str) -> tuple[FileMeta, AsyncIterator[bytes]]:
        meta = await self.get(tenant, file_id)
        return meta, chunks_of(self.store, file_id)

    async def page(
        self, tenant: str, *, limit: int, after: str | None, newest_first: bool, purpose: str | None
    ) -> tuple[list[FileMeta], bool]:
        return await self.store.page(
            tenant, limit=limit, after=after, newest_first=newest_first, purpose=purpose
        )

    async def delete(self, tenant: str, file_id: str) -> None:
        await self.get(tenant, file_id)
        await self.store.delete(file_id)
