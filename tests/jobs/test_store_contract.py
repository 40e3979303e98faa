"""One contract, both job stores: memory and Redis must behave the same."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from proxy.jobs.memory import MemoryJobStore
from proxy.jobs.models import Job, new_job_id
from proxy.jobs.redis import RedisJobStore
from proxy.jobs.store import JobStore

StoreFactory = Callable[..., JobStore]


@pytest.fixture(params=["memory", "redis"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    clients: list[Redis] = []

    def make(result_ttl_s: float = 60.0) -> JobStore:
        if request.param == "memory":
            return MemoryJobStore(result_ttl_s=result_ttl_s)
        client = Redis.from_url(request.getfixturevalue("redis_url"))
        clients.append(client)
        return RedisJobStore(client, prefix="t", result_ttl_s=result_ttl_s, op_timeout_s=2)

    yield make
    for client in clients:
        await client.aclose()


@pytest.fixture
def store(make_store: StoreFactory) -> JobStore:
    return make_store()


def job(tenant: str = "ta", *, score: float | None = None, **kw: Any) -> Job:
    now = time.time()
    return Job(
        id=new_job_id(),
        tenant=tenant,
        endpoint="/v1/chat/completions",
        body=b'{"model":"m"}',
        created_at=kw.pop("created_at", now),
        score=now - 1 if score is None else score,
        credential="Bearer sk-secret",
        **kw,
    )


async def put(store: JobStore, j: Job, key: str | None = None, max_active: int = 100) -> Job:
    out = await store.submit(j, idempotency_key=key, idempotency_ttl_s=60, max_active=max_active)
    assert out is not None
    return out[0]


async def test_submit_get_roundtrip_keeps_private_fields_private(store: JobStore) -> None:
    j = await put(store, job(metadata={"k": "v"}, headers={"OpenAI-Organization": "o"}))
    got = await store.get(j.id)
    assert got is not None
    assert (got.id, got.tenant, got.status, got.body, got.credential) == (
        j.id, "ta", "queued", j.body, "Bearer sk-secret"
    )  # fmt: skip
    assert got.metadata == {"k": "v"} and got.headers == {"OpenAI-Organization": "o"}
    public = got.public()
    assert "sk-secret" not in repr(public) and "credential" not in public
    assert await store.get("job_missing") is None


async def test_claim_orders_by_due_time_then_arrival_and_reports_next_due(store: JobStore) -> None:
    now = time.time()
    late = await put(store, job(score=now + 100))
    first = await put(store, job(score=now - 2))
    second = await put(store, job(score=now - 1))
    claimed, next_due = await store.claim(now=now, limit=10, lease_s=30, owner="w")
    assert [c.id for c in claimed] == [first.id, second.id]
    assert all(c.status == "in_progress" and c.attempts == 1 and c.token for c in claimed)
    assert claimed[0].credential == "Bearer sk-secret"
    assert next_due == pytest.approx(late.score)
    assert (await store.claim(now=now, limit=10, lease_s=30, owner="w"))[0] == []


async def test_result_recorded_once_and_stale_token_refused(store: JobStore) -> None:
    now = time.time()
    j = await put(store, job())
    (a,), _ = await store.claim(now=now, limit=1, lease_s=1, owner="a")
    # The lease lapses: another worker retakes the job.
    (b,), _ = await store.claim(now=now + 2, limit=1, lease_s=30, owner="b")
    assert b.id == j.id and b.attempts == 2 and b.token != a.token
    assert await store.renew(j.id, a.token, until=now + 60) == "lost"
    result = {"response": {"status_code": 200, "body": {"ok": True}}}
    done = await store.finish(j.id, b.token, status="completed", result=result, now=now)
    assert done is not None and done.writes == 1 and done.credential is None
    late = await store.finish(j.id, a.token, status="completed", result=result, now=now)
    assert late is None
    again = await store.finish(j.id, b.token, status="failed", result={}, now=now)
    assert again is None
    final = await store.get(j.id)
    assert final is not None and final.status == "completed" and final.writes == 1
    assert final.public()["response"] == {"status_code": 200, "body": {"ok": True}}
    assert final.credential is None


async def test_retry_requeues_at_run_at_and_release_does_not_count(store: JobStore) -> None:
    now = time.time()
    j = await put(store, job(score=now - 1))
    (c,), _ = await store.claim(now=now, limit=1, lease_s=30, owner="w")
    assert await store.retry(j.id, c.token, run_at=now + 5)
    assert await store.retry(j.id, c.token, run_at=now + 5) is False
    assert (await store.claim(now=now + 1, limit=1, lease_s=30, owner="w"))[0] == []
    (c,), _ = await store.claim(now=now + 6, limit=1, lease_s=30, owner="w")
    assert c.attempts == 2
    assert await store.release(j.id, c.token)
    got = await store.get(j.id)
    assert got is not None and got.status == "queued" and got.attempts == 1


async def test_a_retried_job_says_why_and_when_until_it_finishes(store: JobStore) -> None:
    now = time.time()
    j = await put(store, job(score=now - 1))
    (c,), _ = await store.claim(now=now, limit=1, lease_s=30, owner="w")
    assert "last_error" not in c.public() and "next_attempt_at" not in c.public()
    error = {"status": 429, "code": "rate_limit_exceeded", "message": "slow down"}
    assert await store.retry(j.id, c.token, run_at=now + 7.2, last_error=error)
    waiting = await store.get(j.id)
    assert waiting is not None and waiting.status == "queued"
    public = waiting.public()
    assert public["last_error"] == error and public["next_attempt_at"] == int(now + 7.2) + 1
    listed, _ = await store.page("ta", limit=10, after=None, status=None)
    assert listed[0].public()["last_error"] == error  # lists show it too
    # Running again: the last error stays (no next attempt is due); a release keeps both.
    (c,), _ = await store.claim(now=now + 8, limit=1, lease_s=30, owner="w")
    assert c.public()["last_error"] == error and "next_attempt_at" not in c.public()
    assert await store.release(j.id, c.token)
    again = await store.get(j.id)
    assert again is not None and again.public()["last_error"] == error
    (c,), _ = await store.claim(now=now + 8, limit=1, lease_s=30, owner="w")
    done = await store.finish(j.id, c.token, status="completed", result={"response": {}}, now=now)
    assert done is not None
    for finished_job in (done, await store.get(j.id)):
        assert finished_job is not None
        assert "last_error" not in finished_job.public()
        assert "next_attempt_at" not in finished_job.public()


async def test_cancel_queued_and_running(store: JobStore) -> None:
    now = time.time()
    queued = await put(store, job(score=now + 50))
    running = await put(store, job(score=now - 1))
    (c,), _ = await store.claim(now=now, limit=1, lease_s=30, owner="w")
    assert c.id == running.id
    gone = await store.cancel(queued.id, now=now)
    assert gone is not None and gone.status == "cancelled" and gone.completed_at is not None
    assert gone.public()["error"]["code"] == "cancelled"
    flagged = await store.cancel(running.id, now=now)
    assert flagged is not None and flagged.status == "in_progress" and flagged.cancel_requested
    assert await store.renew(running.id, c.token, until=now + 30) == "cancel"
    done = await store.finish(running.id, c.token, status="cancelled", result={}, now=now)
    assert done is not None and done.status == "cancelled"
    assert await store.cancel("job_nope", now=now) is None
    assert (await store.claim(now=now + 100, limit=5, lease_s=30, owner="w"))[0] == []


async def test_cancel_of_job_whose_worker_died_ends_cancelled(store: JobStore) -> None:
    now = time.time()
    j = await put(store, job())
    await store.claim(now=now, limit=1, lease_s=1, owner="dead")
    await store.cancel(j.id, now=now)
    assert (await store.claim(now=now + 5, limit=5, lease_s=30, owner="w"))[0] == []
    got = await store.get(j.id)
    assert got is not None and got.status == "cancelled" and got.writes == 1


async def test_idempotency_key_per_tenant(store: JobStore) -> None:
    first = await put(store, job("ta"), key="k1")
    again = await store.submit(job("ta"), idempotency_key="k1", idempotency_ttl_s=60, max_active=9)
    assert again is not None and again[0].id == first.id and again[1] is False
    other = await store.submit(job("tb"), idempotency_key="k1", idempotency_ttl_s=60, max_active=9)
    assert other is not None and other[1] is True and other[0].id != first.id


async def test_max_active_per_tenant(store: JobStore) -> None:
    now = time.time()
    j = await put(store, job("ta"), max_active=1)
    full = await store.submit(job("ta"), idempotency_key=None, idempotency_ttl_s=0, max_active=1)
    assert full is None
    assert await store.submit(job("tb"), idempotency_key=None, idempotency_ttl_s=0, max_active=1)
    (c,), _ = await store.claim(now=now, limit=1, lease_s=30, owner="w")
    assert c.tenant == "ta" or c.tenant == "tb"
    await store.cancel(j.id, now=now)
    if c.id == j.id:
        await store.finish(j.id, c.token, status="cancelled", result={}, now=now)
    assert await put(store, job("ta"), max_active=1)


async def test_page_newest_first_with_cursor_status_and_isolation(store: JobStore) -> None:
    base = time.time()
    ids = [
        (await put(store, job("ta", created_at=base + i, score=base + 100))).id for i in range(5)
    ]
    await put(store, job("tb"))
    page, more = await store.page("ta", limit=2, after=None, status=None)
    assert [j.id for j in page] == ids[::-1][:2] and more
    page2, more2 = await store.page("ta", limit=10, after=page[-1].id, status=None)
    assert [j.id for j in page2] == ids[::-1][2:] and not more2
    await store.cancel(ids[1], now=base)
    cancelled, _ = await store.page("ta", limit=10, after=None, status="cancelled")
    assert [j.id for j in cancelled] == [ids[1]]
    assert await store.page("tc", limit=10, after=None, status=None) == ([], False)


async def test_delete_only_finished(store: JobStore) -> None:
    now = time.time()
    j = await put(store, job())
    assert await store.delete(j.id) == "active"
    await store.cancel(j.id, now=now)
    assert await store.delete(j.id) == "deleted"
    assert await store.get(j.id) is None
    assert await store.delete(j.id) == "missing"
    assert await store.page("ta", limit=10, after=None, status=None) == ([], False)


async def test_finished_jobs_expire_after_result_ttl(make_store: StoreFactory) -> None:
    store = make_store(result_ttl_s=0.2)
    now = time.time()
    j = await put(store, job())
    await store.cancel(j.id, now=now)
    deadline = time.monotonic() + 5
    while await store.get(j.id) is not None:
        assert time.monotonic() < deadline, "finished job never expired"
        await asyncio.sleep(0.05)
    assert await store.page("ta", limit=10, after=None, status=None) == ([], False)


async def test_cancel_asked_while_running_wins_over_retry_and_release(store: JobStore) -> None:
    now = time.time()
    for back in ("retry", "release"):
        j = await put(store, job())
        (c,), _ = await store.claim(now=now, limit=1, lease_s=30, owner="w")
        await store.cancel(j.id, now=now)
        if back == "retry":
            await store.retry(j.id, c.token, run_at=now)
        else:
            await store.release(j.id, c.token)
        got = await store.get(j.id)
        assert got is not None and got.status == "cancelled" and got.writes == 1, back
        assert (await store.claim(now=now + 60, limit=5, lease_s=30, owner="w"))[0] == [], back


async def test_equal_due_times_are_taken_in_arrival_order(store: JobStore) -> None:
    due = time.time() - 1  # e.g. many jobs with the same run_after
    ids = [(await put(store, job(score=due))).id for _ in range(8)]
    claimed, _ = await store.claim(now=time.time(), limit=8, lease_s=30, owner="w")
    assert [c.id for c in claimed] == ids


async def test_idempotent_replay_never_reports_an_unstored_job(store: JobStore) -> None:
    first = await put(store, job(), key="k")

    async def vanished(job_id: str) -> Job | None:
        return None  # as if the first job expired between two steps of submit

    store.get = vanished  # type: ignore[method-assign]
    out = await store.submit(job(), idempotency_key="k", idempotency_ttl_s=60, max_active=9)
    assert out is not None
    replayed, created = out
    assert created is False and replayed.id == first.id


async def test_expiry_leaves_nothing_behind(make_store: StoreFactory) -> None:
    """A finished job past its TTL takes its tenant index entry, idempotency key and active
    count with it, without anyone listing the tenant's jobs."""
    store = make_store(result_ttl_s=0.2)
    now = time.time()
    ran = await put(store, job("ta"), key="k1")
    (c,), _ = await store.claim(now=now, limit=1, lease_s=30, owner="w")
    await store.finish(ran.id, c.token, status="completed", result={}, now=now)
    cancelled = await put(store, job("tb", score=now + 60), key="k2")
    await store.cancel(cancelled.id, now=now)
    deleted = await put(store, job("tc", score=now + 60), key="k3")
    await store.cancel(deleted.id, now=now)
    assert await store.delete(deleted.id) == "deleted"
    await asyncio.sleep(0.3)
    await store.claim(now=time.time(), limit=1, lease_s=30, owner="w")
    if isinstance(store, RedisJobStore):
        assert await store.redis.keys("*") == []
    else:
        assert isinstance(store, MemoryJobStore)
        state = (store._jobs, store._by_tenant, store._active, store._idem, store._idem_of)
        assert state == ({}, {}, {}, {}, {})
