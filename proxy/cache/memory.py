"""The in-process backend: bounded by entries and bytes, LRU / LFU / FIFO, per-entry TTL.

Eviction order is kept by ``cachetools`` (``LRUCache``, ``LFUCache``, ``FIFOCache``); its
``maxsize`` is the byte budget, with each entry weighed as its value plus a fixed overhead, and
the entry-count bound is enforced on top. Expired entries are dropped when read, and swept in
expiry order (a heap) on every write, so that no policy keeps dead entries: LFU would otherwise
hold a once-popular expired entry for ever. Nothing here awaits, so concurrent tasks cannot
interleave inside an operation.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from typing import Literal, NamedTuple

from cachetools import Cache, FIFOCache, LFUCache, LRUCache

from ..metrics import Metrics

__all__ = ["ENTRY_OVERHEAD_BYTES", "MemoryBackend"]

#: What one entry costs beyond its value: key string, tuple, dict and order-structure slots.
ENTRY_OVERHEAD_BYTES = 320


class _Item(NamedTuple):
    expires_at: float
    value: bytes


def _weight(item: _Item) -> int:
    return len(item.value) + ENTRY_OVERHEAD_BYTES


_POLICIES: dict[str, type[Cache[str, _Item]]] = {
    "lru": LRUCache,
    "lfu": LFUCache,
    "fifo": FIFOCache,
}


class MemoryBackend:
    """A bounded in-memory cache of byte values (one process; lost on restart)."""

    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int,
        eviction: Literal["lru", "lfu", "fifo"] = "lru",
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._store: Cache[str, _Item] = _POLICIES[eviction](maxsize=max_bytes, getsizeof=_weight)
        self._metrics = metrics
        self._clock = clock
        #: (expires_at, key) of every write; stale pairs (overwritten or evicted keys) are skipped.
        self._expiries: list[tuple[float, str]] = []

    @property
    def bytes_held(self) -> int:
        """Accounted size of every entry (values plus per-entry overhead)."""
        return int(self._store.currsize)

    def __len__(self) -> int:
        return len(self._store)

    async def get(self, key: str) -> bytes | None:
        item = self._store.get(key)
        if item is None:
            return None
        if item.expires_at <= self._clock():
            del self._store[key]
            self._gauges()
            return None
        return item.value

    async def set(self, key: str, value: bytes, *, ttl_s: float) -> None:
        if not ttl_s > 0:  # (also NaN)
            return
        store = self._store
        now = self._clock()
        self._sweep(now)
        item = _Item(now + ttl_s, value)
        if _weight(item) > self.max_bytes:
            await self.delete(key)  # a newer answer that does not fit must not leave the old one
            return
        evicted = 0
        if key not in store:
            # Make room first: inserted first, a new entry would be LFU's own victim.
            while len(store) >= self.max_entries:
                store.popitem()
                evicted += 1
        before = len(store) + (0 if key in store else 1)
        store[key] = item  # evicts by the policy, before inserting, to stay within max_bytes
        evicted += before - len(store)
        heapq.heappush(self._expiries, (item.expires_at, key))
        if self._metrics is not None:
            self._metrics.cache_stores.inc()
            if evicted:
                self._metrics.cache_evictions.inc(evicted)
        self._gauges()

    async def delete(self, key: str) -> None:
        if self._store.pop(key, None) is not None:
            self._gauges()

    async def clear(self, *, scope: str | None = None, digest: str | None = None) -> int:
        doomed = [k for k in self._store if _matches(k, scope, digest)]
        for key in doomed:
            del self._store[key]
        self._gauges()
        return len(doomed)

    def problem(self) -> str | None:
        return None

    def _peek(self, key: str) -> _Item | None:
        """The item without counting it as a use (no LRU move, no LFU count)."""
        return Cache.__getitem__(self._store, key) if key in self._store else None

    def _sweep(self, now: float) -> None:
        heap = self._expiries
        while heap and heap[0][0] <= now:
            expires_at, key = heapq.heappop(heap)
            item = self._peek(key)
            if item is not None and item.expires_at == expires_at:
                del self._store[key]
        if len(heap) > 2 * len(self._store) + 1024:  # mostly stale pairs: rebuild
            heap[:] = [(self._peek(k).expires_at, k) for k in self._store]  # type: ignore[union-attr]
            heapq.heapify(heap)

    async def close(self) -> None:
        self._store.clear()
        self._expiries.clear()
        self._gauges()

    def _gauges(self) -> None:
        if self._metrics is not None:
            self._metrics.cache_bytes.set(self._store.currsize)
            self._metrics.cache_entries.set(len(self._store))


def _matches(key: str, scope: str | None, digest: str | None) -> bool:
    key_scope, _, key_digest = key.rpartition(":")
    return (scope is None or key_scope == scope) and (digest is None or key_digest == digest)
