"""The memory backend: each eviction policy's order, the entry and byte bounds, its gauges."""

from __future__ import annotations

import pytest

from proxy.cache.memory import ENTRY_OVERHEAD_BYTES, MemoryBackend
from proxy.metrics import Metrics
from tests.cache.conftest import make_memory


def k(name: str) -> str:
    return f"t_x:{name}"


async def _present(backend: MemoryBackend, names: str) -> str:
    return "".join([n for n in names if await backend.get(k(n)) is not None])


async def test_lru_evicts_the_least_recently_used() -> None:
    backend = make_memory(max_entries=3, eviction="lru")
    for name in "abc":
        await backend.set(k(name), b"v", ttl_s=60)
    await backend.get(k("a"))  # a is now the most recently used
    await backend.set(k("d"), b"v", ttl_s=60)
    assert await _present(backend, "abcd") == "acd"


async def test_lfu_evicts_the_least_frequently_used() -> None:
    backend = make_memory(max_entries=3, eviction="lfu")
    for name in "abc":
        await backend.set(k(name), b"v", ttl_s=60)
    for _ in range(3):
        await backend.get(k("a"))
        await backend.get(k("c"))
    await backend.get(k("b"))
    await backend.set(k("d"), b"v", ttl_s=60)  # b has the fewest uses
    assert await _present(backend, "abcd") == "acd"


async def test_fifo_evicts_the_oldest_regardless_of_use() -> None:
    backend = make_memory(max_entries=3, eviction="fifo")
    for name in "abc":
        await backend.set(k(name), b"v", ttl_s=60)
    await backend.get(k("a"))
    await backend.set(k("d"), b"v", ttl_s=60)
    assert await _present(backend, "abcd") == "bcd"


@pytest.mark.parametrize("eviction", ["lru", "lfu", "fifo"])
async def test_byte_bound_holds(eviction: str) -> None:
    metrics = Metrics()
    max_bytes = 64 * 1024
    backend = make_memory(
        max_entries=10_000, max_bytes=max_bytes, eviction=eviction, metrics=metrics
    )
    for i in range(500):
        await backend.set(k(f"{i:04}"), bytes(1000 + i % 300), ttl_s=60)
        assert backend.bytes_held <= max_bytes
    assert backend.bytes_held > max_bytes * 0.9  # and the budget is used, not wasted
    assert metrics.cache_bytes._value.get() == backend.bytes_held
    assert metrics.cache_entries._value.get() == len(backend)
    assert metrics.cache_evictions._value.get() == 500 - len(backend)


async def test_entry_bound_holds_and_counts_evictions() -> None:
    metrics = Metrics()
    backend = make_memory(max_entries=10, metrics=metrics)
    for i in range(25):
        await backend.set(k(str(i)), b"v", ttl_s=60)
    assert len(backend) == 10
    assert metrics.cache_evictions._value.get() == 15
    assert metrics.cache_stores._value.get() == 25


async def test_a_value_larger_than_the_budget_is_not_kept() -> None:
    backend = make_memory(max_bytes=4096)
    await backend.set(k("a"), b"old", ttl_s=60)
    await backend.set(k("a"), bytes(4096), ttl_s=60)
    assert await backend.get(k("a")) is None
    assert backend.bytes_held == 0


async def test_expired_entries_read_as_absent_and_free_their_bytes() -> None:
    now = [1000.0]
    backend = make_memory(clock=lambda: now[0])
    await backend.set(k("a"), bytes(100), ttl_s=5)
    now[0] += 4.9
    assert await backend.get(k("a")) is not None
    now[0] += 0.2
    assert await backend.get(k("a")) is None
    assert backend.bytes_held == 0


async def test_overwrite_replaces_the_size() -> None:
    backend = make_memory()
    await backend.set(k("a"), bytes(1000), ttl_s=60)
    await backend.set(k("a"), bytes(10), ttl_s=60)
    assert backend.bytes_held == 10 + ENTRY_OVERHEAD_BYTES


@pytest.mark.parametrize("eviction", ["lru", "lfu", "fifo"])
async def test_expired_entries_are_swept_on_write_even_if_popular(eviction: str) -> None:
    now = [1000.0]
    backend = make_memory(eviction=eviction, clock=lambda: now[0])
    await backend.set(k("popular"), bytes(1000), ttl_s=5)
    for _ in range(50):
        assert await backend.get(k("popular")) is not None
    await backend.set(k("other"), bytes(10), ttl_s=60)
    now[0] += 10
    await backend.set(k("new"), bytes(10), ttl_s=60)
    assert len(backend) == 2  # the expired entry is gone without being read
    assert backend.bytes_held == 2 * (10 + ENTRY_OVERHEAD_BYTES)


async def test_overwritten_entries_keep_their_newest_expiry() -> None:
    now = [1000.0]
    backend = make_memory(clock=lambda: now[0])
    await backend.set(k("a"), b"first", ttl_s=5)
    await backend.set(k("a"), b"second", ttl_s=60)
    now[0] += 10
    await backend.set(k("b"), b"v", ttl_s=60)  # sweeps the stale (t+5, a) pair: a must stay
    assert await backend.get(k("a")) == b"second"
    for _ in range(3000):  # many overwrites: the expiry heap stays proportional to the store
        await backend.set(k("a"), b"v", ttl_s=60)
    assert len(backend._expiries) <= 2 * len(backend) + 1024
