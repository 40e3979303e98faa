"""One contract, both backends: get / set / delete / clear on bytes with a TTL, concurrently."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from proxy.cache.backend import CacheBackend
from tests.cache.conftest import make_memory, make_redis

A = "t_" + "a" * 32
B = "t_" + "b" * 32
D1, D2 = "1" * 64, "2" * 64


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[CacheBackend]:
    if request.param == "memory":
        store: CacheBackend = make_memory()
    else:
        store = make_redis(request.getfixturevalue("redis_url"))
    yield store
    await store.close()


async def test_absent_key_reads_none(backend: CacheBackend) -> None:
    assert await backend.get(f"{A}:{D1}") is None


async def test_set_then_get_returns_the_same_bytes(backend: CacheBackend) -> None:
    value = bytes(range(256)) * 40  # binary, and large enough to be compressed in Redis
    await backend.set(f"{A}:{D1}", value, ttl_s=60)
    await backend.set(f"{A}:{D2}", b"small", ttl_s=60)
    assert await backend.get(f"{A}:{D1}") == value
    assert await backend.get(f"{A}:{D2}") == b"small"


async def test_set_overwrites(backend: CacheBackend) -> None:
    await backend.set(f"{A}:{D1}", b"old", ttl_s=60)
    await backend.set(f"{A}:{D1}", b"new", ttl_s=60)
    assert await backend.get(f"{A}:{D1}") == b"new"


async def test_delete(backend: CacheBackend) -> None:
    await backend.set(f"{A}:{D1}", b"v", ttl_s=60)
    await backend.delete(f"{A}:{D1}")
    await backend.delete(f"{A}:{D2}")  # absent: no error
    assert await backend.get(f"{A}:{D1}") is None


async def test_entries_expire_after_their_ttl(backend: CacheBackend) -> None:
    await backend.set(f"{A}:{D1}", b"short", ttl_s=0.05)
    await backend.set(f"{A}:{D2}", b"long", ttl_s=60)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while await backend.get(f"{A}:{D1}") is not None:
        assert loop.time() < deadline, "entry outlived its TTL"
        await asyncio.sleep(0.01)
    assert await backend.get(f"{A}:{D2}") == b"long"


async def test_zero_ttl_stores_nothing(backend: CacheBackend) -> None:
    await backend.set(f"{A}:{D1}", b"v", ttl_s=0)
    assert await backend.get(f"{A}:{D1}") is None


async def test_clear_all(backend: CacheBackend) -> None:
    for key in (f"{A}:{D1}", f"{A}:{D2}", f"{B}:{D1}"):
        await backend.set(key, b"v", ttl_s=60)
    assert await backend.clear() == 3
    assert await backend.get(f"{B}:{D1}") is None


async def test_clear_one_scope_keeps_the_others(backend: CacheBackend) -> None:
    for key in (f"{A}:{D1}", f"{A}:{D2}", f"{B}:{D1}"):
        await backend.set(key, b"v", ttl_s=60)
    assert await backend.clear(scope=A) == 2
    assert await backend.get(f"{A}:{D1}") is None
    assert await backend.get(f"{B}:{D1}") == b"v"


async def test_clear_one_digest(backend: CacheBackend) -> None:
    for key in (f"{A}:{D1}", f"{A}:{D2}", f"{B}:{D1}"):
        await backend.set(key, b"v", ttl_s=60)
    assert await backend.clear(digest=D1) == 2
    assert await backend.get(f"{A}:{D2}") == b"v"
    assert await backend.clear(scope=A, digest=D2) == 1


async def test_concurrent_use(backend: CacheBackend) -> None:
    values = {f"{A}:{i:064x}": os.urandom(64 + i) for i in range(200)}
    await asyncio.gather(*(backend.set(k, v, ttl_s=60) for k, v in values.items()))
    got = await asyncio.gather(*(backend.get(k) for k in values))
    assert got == list(values.values())


async def test_healthy_backend_reports_no_problem(backend: CacheBackend) -> None:
    await backend.get(f"{A}:{D1}")
    assert backend.problem() is None
