"""The stores of the Batch API emulation: narrow Protocols, two implementations each.

Files are kept in chunks (never one value of a whole file), so that uploads and downloads
stream. A batch's line results are recorded at most once per line (``record``), and only while
the runner's lease ``token`` still holds the batch: a replica that lost its lease cannot write.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from .models import Batch, FileMeta

__all__ = ["BatchKeys", "BatchStore", "FileStore", "Lease"]

#: ``held``: renewed; ``cancel``: renewed, and a cancel was asked for; ``lost``: not ours.
Lease = Literal["held", "cancel", "lost"]


class BatchKeys:
    """Every Redis key of files and batches, from ``redis.key_prefix``, under one hash tag
    (``{<prefix>:batches}``): the scripts touch a batch, its results and the active set
    together, so on Redis Cluster they share a slot."""

    def __init__(self, prefix: str) -> None:
        self.tag = f"{{{prefix}:batches}}"
        #: ZSET batch id -> lease deadline (0: waiting for a runner); unfinished batches only.
        self.active = f"{self.tag}:active"
        self.batch_prefix = f"{self.tag}:batch:"

    def batch(self, batch_id: str) -> str:
        return self.batch_prefix + batch_id

    def results(self, batch_id: str) -> str:
        """HASH line index -> the line's output (``o``/``e`` + JSON line)."""
        return f"{self.tag}:results:{batch_id}"

    def batches_of(self, tenant: str) -> str:
        return f"{self.tag}:batches:{tenant}"

    def file(self, file_id: str) -> str:
        return f"{self.tag}:file:{file_id}"

    def file_data(self, file_id: str) -> str:
        """LIST of the file's chunks, in order."""
        return f"{self.tag}:data:{file_id}"

    def files_of(self, tenant: str) -> str:
        return f"{self.tag}:files:{tenant}"


class FileStore(Protocol):
    async def append(self, file_id: str, chunk: bytes, *, ttl_s: float) -> None:
        """Add the next chunk of a file being written (not listed until ``commit``)."""
        ...

    async def commit(self, meta: FileMeta) -> None:
        """Make the written chunks a file, listed and readable until ``meta.expires_at``."""
        ...

    async def get(self, file_id: str) -> FileMeta | None: ...

    async def chunk(self, file_id: str, index: int) -> bytes | None:
        """The file's ``index``-th chunk; ``None`` past the end."""
        ...

    async def page(
        self, tenant: str, *, limit: int, after: str | None, newest_first: bool, purpose: str | None
    ) -> tuple[list[FileMeta], bool]: ...

    async def delete(self, file_id: str) -> bool:
        """Delete a file, or the chunks of one never committed; whether it existed."""
        ...


class BatchStore(Protocol):
    async def create(self, batch: Batch) -> None: ...

    async def get(self, batch_id: str) -> Batch | None: ...

    async def page(self, tenant: str, *, limit: int, after: str | None) -> tuple[list[Batch], bool]:
        """The tenant's batches, newest first, after the batch ``after``; whether more follow."""
        ...

    async def claim(self, *, now: float, limit: int, lease_s: float, owner: str) -> list[Batch]:
        """Up to ``limit`` unfinished batches nobody holds (new, or their lease ran out),
        each with a fresh lease token."""
        ...

    async def renew(self, batch_id: str, token: str, *, until: float) -> Lease: ...

    async def release(self, batch_id: str, token: str) -> None:
        """Give the batch back at once (shutdown), for any replica to take."""
        ...

    async def update(self, batch_id: str, token: str, changes: dict[str, Any]) -> bool:
        """Apply ``changes`` (fields of :class:`Batch`) if ``token`` holds the batch."""
        ...

    async def record(
        self,
        batch_id: str,
        token: str,
        index: int,
        *,
        ok: bool,
        line: bytes,
        tokens: tuple[int, int],
    ) -> bool:
        """Store line ``index``'s output once and count it (completed or failed, and its
        input/output tokens); ``False`` if it was recorded before or the token is stale."""
        ...

    async def done(self, batch_id: str) -> set[int]:
        """The indexes of the lines recorded so far."""
        ...

    async def results(self, batch_id: str, indexes: list[int]) -> list[bytes | None]: ...

    async def finish(
        self, batch_id: str, token: str, changes: dict[str, Any], *, ttl_s: float
    ) -> Batch | None:
        """The terminal change: drop the results, the credential and the lease; keep the batch
        object ``ttl_s``. The batch after it, or ``None`` if ``token`` is stale."""
        ...

    async def cancel(self, batch_id: str, *, now: float) -> Batch | None:
        """Ask for a cancel (``cancelling``) unless it is finishing or finished already."""
        ...
