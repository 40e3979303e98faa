"""One contract, both batch and file stores: memory and Redis must behave the same."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from proxy.batches.memory import MemoryBatchStore, MemoryFileStore
from proxy.batches.models import Batch, FileMeta, new_id
from proxy.batches.redis import RedisBatchStore, RedisFileStore
from proxy.batches.store import BatchStore, FileStore


@pytest.fixture(params=["memory", "redis"])
async def stores(request: pytest.FixtureRequest) -> AsyncIterator[tuple[BatchStore, FileStore]]:
    if request.param == "memory":
        yield MemoryBatchStore(), MemoryFileStore()
        return
    client = Redis.from_url(request.getfixturevalue("redis_url"))
    yield (
        RedisBatchStore(client, prefix="t", op_timeout_s=2),
        RedisFileStore(client, prefix="t", op_timeout_s=2),
    )
    await client.aclose()


def batch(tenant: str = "ta", **kw: Any) -> Batch:
    now = time.time()
    return Batch(
        id=new_id("batch_"),
        tenant=tenant,
        endpoint="/v1/chat/completions",
        input_file_id="file-x",
        created_at=now,
        expires_at=now + 60,
        metadata={"k": "v"},
        headers={"User-Agent": "t"},
        credential="Bearer sk-secret",
        **kw,
    )


async def test_claim_record_once_and_finish(stores: tuple[BatchStore, FileStore]) -> None:
    store, _ = stores
    b = batch()
    await store.create(b)
    assert await store.get(b.id) == b
    (held,) = await store.claim(now=time.time(), limit=5, lease_s=30, owner="o")
    assert held.token and held.id == b.id
    assert await store.claim(now=time.time(), limit=5, lease_s=30, owner="o") == []
    assert await store.update(
        b.id, held.token, {"phase": "run", "total": 3, "status": "in_progress"}
    )
    args: dict[str, Any] = {"ok": True, "line": b'{"x":1}', "tokens": (3, 4)}
    assert await store.record(b.id, held.token, 1, **args)
    assert not await store.record(b.id, held.token, 1, **args)  # once per line
    assert not await store.record(b.id, "stale", 2, **args)
    assert await store.record(b.id, held.token, 2, ok=False, line=b"e", tokens=(0, 0))
    assert await store.done(b.id) == {1, 2}
    assert await store.results(b.id, [2, 1, 3]) == [b"ee", b'o{"x":1}', None]
    now = await store.get(b.id)
    assert now is not None
    assert (now.completed, now.failed, now.input_tokens, now.output_tokens) == (1, 1, 3, 4)
    assert (now.status, now.phase, now.total) == ("in_progress", "run", 3)
    changes = {"status": "completed", "completed_at": 5.0, "output_file_id": "file-o"}
    assert await store.finish(b.id, "stale", changes, ttl_s=60) is None
    done = await store.finish(b.id, held.token, changes, ttl_s=60)
    assert done is not None and done.status == "completed" and done.phase == "done"
    assert done.credential is None and done.token == "" and done.output_file_id == "file-o"
    assert await store.done(b.id) == set()
    assert await store.claim(now=time.time() + 100, limit=5, lease_s=30, owner="o") == []


async def test_a_lapsed_lease_is_taken_over(stores: tuple[BatchStore, FileStore]) -> None:
    store, _ = stores
    b = batch()
    await store.create(b)
    (first,) = await store.claim(now=time.time(), limit=1, lease_s=1, owner="a")
    assert await store.renew(b.id, first.token, until=time.time() + 1) == "held"
    (second,) = await store.claim(now=time.time() + 5, limit=1, lease_s=30, owner="b")
    assert second.token != first.token
    assert await store.renew(b.id, first.token, until=time.time() + 1) == "lost"
    assert not await store.update(b.id, first.token, {"phase": "run"})
    await store.release(b.id, second.token)
    (third,) = await store.claim(now=time.time(), limit=1, lease_s=30, owner="c")
    assert third.id == b.id


async def test_cancel_owns_the_status(stores: tuple[BatchStore, FileStore]) -> None:
    store, _ = stores
    b = batch()
    await store.create(b)
    (held,) = await store.claim(now=time.time(), limit=1, lease_s=30, owner="a")
    cancelled = await store.cancel(b.id, now=7.0)
    assert cancelled is not None and cancelled.status == "cancelling"
    assert cancelled.cancelling_at == 7.0 and cancelled.cancel_requested
    assert await store.renew(b.id, held.token, until=time.time() + 5) == "cancel"
    assert await store.update(b.id, held.token, {"status": "in_progress", "phase": "run"})
    now = await store.get(b.id)
    assert now is not None and (now.status, now.phase) == ("cancelling", "run")
    assert await store.cancel("batch_missing", now=1.0) is None


async def test_pages_newest_first(stores: tuple[BatchStore, FileStore]) -> None:
    store, _ = stores
    ids = []
    for _ in range(5):
        b = batch()
        await store.create(b)
        ids.append(b.id)
    await store.create(batch("other"))
    page, more = await store.page("ta", limit=2, after=None)
    assert [p.id for p in page] == ids[::-1][:2] and more
    page, more = await store.page("ta", limit=10, after=ids[2])
    assert [p.id for p in page] == [ids[1], ids[0]] and not more


async def test_files_in_chunks(stores: tuple[BatchStore, FileStore]) -> None:
    _, files = stores
    file_id = new_id("file-")
    for part in (b"ab", b"cd", b"e"):
        await files.append(file_id, part, ttl_s=60)
    assert await files.get(file_id) is None  # not a file before commit
    now = time.time()
    meta = FileMeta(file_id, "ta", "f.jsonl", "batch", 5, now, now + 60, 1)
    await files.commit(meta)
    assert await files.get(file_id) == meta
    assert [await files.chunk(file_id, i) for i in range(4)] == [b"ab", b"cd", b"e", None]
    listed, more = await files.page("ta", limit=10, after=None, newest_first=True, purpose=None)
    assert listed == [meta] and not more
    none, _ = await files.page("ta", limit=10, after=None, newest_first=True, purpose="x")
    assert none == []
    assert await files.delete(file_id)
    assert await files.get(file_id) is None and await files.chunk(file_id, 0) is None
    assert not await files.delete(file_id)
