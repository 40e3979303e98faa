"""Files and batches in this process's memory: the embedded default (nothing survives a restart).

No method awaits inside, so each is atomic on the event loop, as the Redis scripts are.
"""

from __future__ import annotations

import bisect
import time
from typing import Any

from .models import Batch, FileMeta
from .store import Lease

__all__ = ["MemoryBatchStore", "MemoryFileStore"]


def _page(ids: list[str], after: str | None, newest_first: bool) -> list[str]:
    ordered = ids[::-1] if newest_first else ids
    if after is None:
        return ordered
    if after not in ordered:
        return []
    return ordered[ordered.index(after) + 1 :]


class MemoryFileStore:
    def __init__(self) -> None:
        self._data: dict[str, list[bytes]] = {}
        self._meta: dict[str, FileMeta] = {}
        self._ids: dict[str, list[str]] = {}  # tenant -> ids in creation order

    async def append(self, file_id: str, chunk: bytes, *, ttl_s: float) -> None:
        self._data.setdefault(file_id, []).append(chunk)

    async def commit(self, meta: FileMeta) -> None:
        self._sweep()
        self._data.setdefault(meta.id, [])
        self._meta[meta.id] = meta
        bisect.insort(self._ids.setdefault(meta.tenant, []), meta.id)

    def _sweep(self) -> None:
        now = time.time()
        for meta in [m for m in self._meta.values() if m.expires_at <= now]:
            self._forget(meta.id)

    def _forget(self, file_id: str) -> bool:
        self._data.pop(file_id, None)
        meta = self._meta.pop(file_id, None)
        if meta is None:
            return False
        self._ids[meta.tenant].remove(file_id)
        return True

    async def get(self, file_id: str) -> FileMeta | None:
        meta = self._meta.get(file_id)
        if meta is not None and meta.expires_at <= time.time():
            self._forget(file_id)
            return None
        return meta

    async def chunk(self, file_id: str, index: int) -> bytes | None:
        chunks = self._data.get(file_id, [])
        return chunks[index] if index < len(chunks) else None

    async def page(
        self, tenant: str, *, limit: int, after: str | None, newest_first: bool, purpose: str | None
    ) -> tuple[list[FileMeta], bool]:
        self._sweep()
        metas = [self._meta[i] for i in _page(self._ids.get(tenant, []), after, newest_first)]
        metas = [m for m in metas if purpose is None or m.purpose == purpose]
        return metas[:limit], len(metas) > limit

    async def delete(self, file_id: str) -> bool:
        if self._forget(file_id):
            return True
        return self._data.pop(file_id, None) is not None


class MemoryBatchStore:
    def __init__(self) -> None:
        self._batches: dict[str, Batch] = {}
        self._results: dict[str, dict[int, bytes]] = {}
        self._ids: dict[str, list[str]] = {}
        self._deadline: dict[str, float] = {}  # unfinished batches -> lease deadline
        self._expiry: dict[str, float] = {}
        self._tokens = 0

    async def create(self, batch: Batch) -> None:
        self._sweep()
        self._batches[batch.id] = batch
        self._results[batch.id] = {}
        self._deadline[batch.id] = 0.0
        bisect.insort(self._ids.setdefault(batch.tenant, []), batch.id)

    def _sweep(self) -> None:
        now = time.time()
        for batch_id in [b for b, t in self._expiry.items() if t <= now]:
            del self._expiry[batch_id]
            batch = self._batches.pop(batch_id)
            self._ids[batch.tenant].remove(batch_id)

    async def get(self, batch_id: str) -> Batch | None:
        self._sweep()
        return self._batches.get(batch_id)

    async def page(self, tenant: str, *, limit: int, after: str | None) -> tuple[list[Batch], bool]:
        self._sweep()
        ids = _page(self._ids.get(tenant, []), after, True)
        return [self._batches[i] for i in ids[:limit]], len(ids) > limit

    async def claim(self, *, now: float, limit: int, lease_s: float, owner: str) -> list[Batch]:
        out: list[Batch] = []
        for batch_id, deadline in list(self._deadline.items()):
            if len(out) == limit:
                break
            if deadline <= now:
                self._tokens += 1
                batch = self._batches[batch_id].but(token=f"{owner}:{self._tokens}")
                self._batches[batch_id] = batch
                self._deadline[batch_id] = now + lease_s
                out.append(batch)
        return out

    def _held(self, batch_id: str, token: str) -> Batch | None:
        batch = self._batches.get(batch_id)
        if batch is None or not token or batch.token != token or batch_id not in self._deadline:
            return None
        return batch

    async def renew(self, batch_id: str, token: str, *, until: float) -> Lease:
        batch = self._held(batch_id, token)
        if batch is None:
            return "lost"
        self._deadline[batch_id] = until
        return "cancel" if batch.cancel_requested else "held"

    async def release(self, batch_id: str, token: str) -> None:
        batch = self._held(batch_id, token)
        if batch is not None:
            self._batches[batch_id] = batch.but(token="")
            self._deadline[batch_id] = 0.0

    async def update(self, batch_id: str, token: str, changes: dict[str, Any]) -> bool:
        batch = self._held(batch_id, token)
        if batch is None:
            return False
        if batch.cancel_requested:  # the cancel owns the status until the batch ends
            changes = {k: v for k, v in changes.items() if k != "status"}
        self._batches[batch_id] = batch.but(**changes)
        return True

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
        batch = self._held(batch_id, token)
        results = self._results.get(batch_id)
        if batch is None or results is None or index in results:
            return False
        results[index] = (b"o" if ok else b"e") + line
        self._batches[batch_id] = batch.but(
            completed=batch.completed + ok,
            failed=batch.failed + (not ok),
            input_tokens=batch.input_tokens + tokens[0],
            output_tokens=batch.output_tokens + tokens[1],
        )
        return True

    async def done(self, batch_id: str) -> set[int]:
        return set(self._results.get(batch_id, {}))

    async def results(self, batch_id: str, indexes: list[int]) -> list[bytes | None]:
        results = self._results.get(batch_id, {})
        return [results.get(i) for i in indexes]

    async def finish(
        self, batch_id: str, token: str, changes: dict[str, Any], *, ttl_s: float
    ) -> Batch | None:
        batch = self._held(batch_id, token)
        if batch is None:
            return None
        batch = batch.but(**changes, token="", credential=None, phase="done")
        self._batches[batch_id] = batch
        self._results.pop(batch_id, None)
        self._deadline.pop(batch_id, None)
        self._expiry[batch_id] = time.time() + ttl_s
        return batch

    async def cancel(self, batch_id: str, *, now: float) -> Batch | None:
        batch = self._batches.get(batch_id)
        if batch is None:
            return None
        if batch.status in ("validating", "in_progress"):
            batch = batch.but(status="cancelling", cancelling_at=now, cancel_requested=True)
            self._batches[batch_id] = batch
        return batch
