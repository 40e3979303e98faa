"""The shared job store: Redis, one Lua script per state change, so every change is atomic.

Layout (see :mod:`proxy.jobs.keys`): a ZSET queue scored by due time, a ZSET of leases scored
by deadline, a hash per job, a per-tenant ZSET for listing, a hash of active counts, and a ZSET
of finished jobs scored by expiry, swept on every claim.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis

from ..redis_client import store_op
from .keys import JobKeys
from .models import CANCELLED, Job, JobStatus
from .store import Deleted, Lease

__all__ = ["RedisJobStore"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# What every finished job needs: no credential or body kept, one active job less for its
# tenant (the field goes at zero), the hash expiring after the result TTL, and an entry in the
# expiry ZSET naming everything that points at the job (the tenant index, the idempotency key),
# so that the sweep in _CLAIM removes those too. The member is "<id>\t<tenant>\t<idem key>".
_DONE = """
local function member(id, key)
  local f = redis.call('HMGET', key, 'tenant', 'idem')
  return id .. '\t' .. f[1] .. '\t' .. (f[2] or '')
end
local function done(key, id, tenant, active, expiry, now, ttl_ms)
  redis.call('HINCRBY', key, 'writes', 1)
  redis.call('HDEL', key, 'credential', 'body')
  if redis.call('HINCRBY', active, tenant, -1) <= 0 then redis.call('HDEL', active, tenant) end
  redis.call('PEXPIRE', key, ttl_ms)
  redis.call('ZADD', expiry, tonumber(now) + tonumber(ttl_ms) / 1000, member(id, key))
end
local function cancel_now(key, id, tenant, active, expiry, now, ttl_ms, cancelled)
  redis.call('HSET', key, 'status', 'cancelled', 'token', '', 'result', cancelled,
             'completed_at', now)
  done(key, id, tenant, active, expiry, now, ttl_ms)
end
local function forget(m, tenant_prefix, job_prefix)
  local id, tenant, idem = string.match(m, '^([^\t]*)\t([^\t]*)\t(.*)$')
  redis.call('DEL', job_prefix .. id)
  redis.call('ZREM', tenant_prefix .. tenant, id)
  if idem ~= '' and redis.call('GET', idem) == id then redis.call('DEL', idem) end
end
"""

# KEYS: job, queue, tenant index, active, idempotency.
# ARGV: id, tenant, score, created_at, max_active, idempotency ttl ms (0: none), job prefix,
# then the job's fields as name, value pairs.
_SUBMIT = """
if ARGV[6] ~= '0' then
  local known = redis.call('GET', KEYS[5])
  if known then
    local earlier = redis.call('HGETALL', ARGV[7] .. known)
    if #earlier > 0 then return {0, known, earlier} end
  end
end
if tonumber(redis.call('HGET', KEYS[4], ARGV[2]) or '0') >= tonumber(ARGV[5]) then
  return {-1, ''}
end
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('HINCRBY', KEYS[4], ARGV[2], 1)
if ARGV[6] ~= '0' then
  redis.call('SET', KEYS[5], ARGV[1], 'PX', ARGV[6])
  redis.call('HSET', KEYS[1], 'idem', KEYS[5])
end
return {1, ARGV[1]}
"""

# Sweep finished jobs past their TTL, requeue expired leases, then take due jobs.
# KEYS: queue, leases, active, expiry.
# ARGV: now, limit, lease deadline, job prefix, token prefix, ttl ms, cancelled result,
# tenant index prefix.
_CLAIM = (
    _DONE
    + """
local now = ARGV[1]
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 1000)) do
  forget(m, ARGV[8], ARGV[4])
  redis.call('ZREM', KEYS[4], m)
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[2], id)
  local key = ARGV[4] .. id
  local f = redis.call('HMGET', key, 'status', 'cancel', 'score', 'tenant')
  if f[1] == 'in_progress' then
    if f[2] == '1' then
      cancel_now(key, id, f[4], KEYS[3], KEYS[4], now, ARGV[6], ARGV[7])
    else
      redis.call('HSET', key, 'status', 'queued', 'token', '')
      redis.call('ZADD', KEYS[1], f[3], id)
    end
  end
end
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for i, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local key = ARGV[4] .. id
  if redis.call('HGET', key, 'status') == 'queued' then
    redis.call('HSET', key, 'status', 'in_progress', 'token', ARGV[5] .. i)
    redis.call('HINCRBY', key, 'attempts', 1)
    redis.call('ZADD', KEYS[2], ARGV[3], id)
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGETALL', key)
  end
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {out, head[2] or ''}
"""
)

# KEYS: job, leases. ARGV: token, deadline, id.
_RENEW = """
local f = redis.call('HMGET', KEYS[1], 'token', 'status', 'cancel')
if f[1] ~= ARGV[1] or f[2] ~= 'in_progress' then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
if f[3] == '1' then return 2 end
return 1
"""

# KEYS: job, leases, active, expiry. ARGV: token, status, result, now, ttl ms, id.
_FINISH = (
    _DONE
    + """
local f = redis.call('HMGET', KEYS[1], 'token', 'status', 'tenant')
if f[1] ~= ARGV[1] or f[2] ~= 'in_progress' then return false end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'token', '', 'result', ARGV[3],
           'completed_at', ARGV[4])
redis.call('ZREM', KEYS[2], ARGV[6])
done(KEYS[1], ARGV[6], f[3], KEYS[3], KEYS[4], ARGV[4], ARGV[5])
return redis.call('HGETALL', KEYS[1])
"""
)

# Back to the queue (a retry at `score`, or a release in the old place with the attempt not
# counted); a job whose cancel was asked for is cancelled instead.
# KEYS: job, leases, queue, active, expiry. ARGV: token, score ('' keeps it), id,
# attempts delta, now, ttl ms, cancelled result, last error ('' keeps it).
_REQUEUE = (
    _DONE
    + """
local f = redis.call('HMGET', KEYS[1], 'token', 'status', 'cancel', 'tenant', 'score')
if f[1] ~= ARGV[1] or f[2] ~= 'in_progress' then return 0 end
redis.call('ZREM', KEYS[2], ARGV[3])
if f[3] == '1' then
  cancel_now(KEYS[1], ARGV[3], f[4], KEYS[4], KEYS[5], ARGV[5], ARGV[6], ARGV[7])
  return 2
end
local score = ARGV[2]
if score == '' then score = f[5] end
redis.call('HSET', KEYS[1], 'status', 'queued', 'token', '', 'score', score)
redis.call('HINCRBY', KEYS[1], 'attempts', tonumber(ARGV[4]))
if ARGV[8] ~= '' then redis.call('HSET', KEYS[1], 'last_error', ARGV[8]) end
redis.call('ZADD', KEYS[3], score, ARGV[3])
return 1
"""
)

# KEYS: job, queue, active, expiry. ARGV: id, now, ttl ms, cancelled result.
_CANCEL = (
    _DONE
    + """
local f = redis.call('HMGET', KEYS[1], 'status', 'tenant')
if not f[1] then return 0 end
if f[1] == 'queued' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  cancel_now(KEYS[1], ARGV[1], f[2], KEYS[3], KEYS[4], ARGV[2], ARGV[3], ARGV[4])
elseif f[1] == 'in_progress' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
end
return 1
"""
)

# KEYS: job, expiry. ARGV: id, tenant index prefix, job prefix.
_DELETE = (
    _DONE
    + """
local f = redis.call('HMGET', KEYS[1], 'status', 'tenant')
if not f[1] then return 0 end
if f[1] == 'queued' or f[1] == 'in_progress' then return -1 end
local m = member(ARGV[1], KEYS[1])
forget(m, ARGV[2], ARGV[3])
redis.call('ZREM', KEYS[2], m)
return 1
"""
)

#: Fields a list needs (not the body or the credential).
_LIST_FIELDS = (
    "tenant", "status", "attempts", "score", "doc", "token", "writes", "cancel",
    "completed_at", "result", "last_error",
)  # fmt: skip


class RedisJobStore:
    """Jobs in Redis, shared by every replica; survives any replica's death."""

    def __init__(
        self, redis: Redis, *, prefix: str, result_ttl_s: float, op_timeout_s: float
    ) -> None:
        self.redis = redis
        self.keys = JobKeys(prefix)
        self._ttl_ms = str(int(result_ttl_s * 1000))
        self._timeout_s = op_timeout_s
        self._cancelled = orjson.dumps(CANCELLED)
        self._submit = redis.register_script(_SUBMIT)
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)
        self._finish = redis.register_script(_FINISH)
        self._requeue = redis.register_script(_REQUEUE)
        self._cancel = redis.register_script(_CANCEL)
        self._delete = redis.register_script(_DELETE)

    async def _op(self, aw: Awaitable[T]) -> T:
        """Bound and translate one Redis operation."""
        return await store_op(
            aw,
            timeout_s=self._timeout_s,
            log=log,
            store="job store",
            unavailable="The job store (Redis) is unavailable; the job was not stored. "
            "Try again later.",
        )

    async def submit(
        self, job: Job, *, idempotency_key: str | None, idempotency_ttl_s: float, max_active: int
    ) -> tuple[Job, bool] | None:
        k = self.keys
        idem_key = k.idempotency(job.tenant, idempotency_key or "")
        idem_ttl = str(int(idempotency_ttl_s * 1000)) if idempotency_key else "0"
        fields: list[Any] = []
        for name, value in job.to_fields().items():
            fields += (name, value)
        keys = [k.job(job.id), k.queue, k.tenant(job.tenant), k.active, idem_key]
        argv: list[Any] = [job.id, job.tenant, repr(job.score), repr(job.created_at), max_active]
        argv.append(idem_ttl)
        code, job_id, *earlier = await self._op(self._submit(keys, [*argv, k.job_prefix, *fields]))
        if code == -1:
            return None
        if code == 1:
            return job, True
        # The earlier job comes back from the same script: it may expire any moment after.
        raw = earlier[0]
        return Job.from_fields(job_id.decode(), dict(zip(raw[::2], raw[1::2], strict=True))), False

    async def get(self, job_id: str) -> Job | None:
        raw: dict[bytes, bytes] = await self._op(
            self.redis.hgetall(self.keys.job(job_id))  # type: ignore[arg-type]
        )
        return Job.from_fields(job_id, raw) if raw else None

    async def page(
        self, tenant: str, *, limit: int, after: str | None, status: str | None
    ) -> tuple[list[Job], bool]:
        index = self.keys.tenant(tenant)
        start = 0
        if after is not None:
            rank: int | None = await self._op(
                self.redis.zrevrank(index, after)  # type: ignore[arg-type]
            )
            if rank is None:
                return [], False
            start = rank + 1
        out: list[Job] = []
        chunk = max(limit + 1, 100)
        for _ in range(100):  # bounds the scan when a status filter matches little
            ids: list[bytes] = await self._op(
                self.redis.zrevrange(index, start, start + chunk - 1)  # type: ignore[arg-type]
            )
            if not ids:
                return out, False
            start += len(ids)
            for job in await self._fetch(index, [i.decode() for i in ids]):
                if status is None or job.status == status:
                    if len(out) == limit:
                        return out, True
                    out.append(job)
        return out, True

    async def _fetch(self, index: str, ids: list[str]) -> list[Job]:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self.keys.job(job_id), _LIST_FIELDS)
        rows = await self._op(pipe.execute())
        jobs: list[Job] = []
        gone: list[str] = []
        for job_id, row in zip(ids, rows, strict=True):
            if row[0] is None:
                gone.append(job_id)  # expired: drop it from the index on the way
                continue
            raw = {n.encode(): v for n, v in zip(_LIST_FIELDS, row, strict=True) if v is not None}
            jobs.append(Job.from_fields(job_id, raw))
        if gone:
            await self._op(self.redis.zrem(index, *gone))
        return jobs

    async def claim(
        self, *, now: float, limit: int, lease_s: float, owner: str
    ) -> tuple[list[Job], float | None]:
        k = self.keys
        token = f"{owner}:{secrets.token_hex(6)}:"
        argv: list[Any] = [repr(now), limit, repr(now + lease_s), k.job_prefix, token, self._ttl_ms]
        argv += [self._cancelled, k.tenant_prefix]
        flat, head = await self._op(self._claim([k.queue, k.leases, k.active, k.expiry], argv))
        jobs = []
        for i in range(0, len(flat), 2):
            raw = flat[i + 1]
            fields: dict[bytes, bytes] = dict(zip(raw[::2], raw[1::2], strict=True))
            jobs.append(Job.from_fields(flat[i].decode(), fields))
        return jobs, float(head) if head else None

    async def renew(self, job_id: str, token: str, *, until: float) -> Lease:
        keys = [self.keys.job(job_id), self.keys.leases]
        code = await self._op(self._renew(keys, [token, repr(until), job_id]))
        return "held" if code == 1 else "cancel" if code == 2 else "lost"

    async def finish(
        self, job_id: str, token: str, *, status: JobStatus, result: dict[str, Any], now: float
    ) -> Job | None:
        k = self.keys
        argv: list[Any] = [token, status, orjson.dumps(result), repr(now), self._ttl_ms, job_id]
        keys = [k.job(job_id), k.leases, k.active, k.expiry]
        raw = await self._op(self._finish(keys, argv))
        if not raw:
            return None
        return Job.from_fields(job_id, dict(zip(raw[::2], raw[1::2], strict=True)))

    async def retry(
        self, job_id: str, token: str, *, run_at: float, last_error: dict[str, Any] | None = None
    ) -> bool:
        error = b"" if last_error is None else orjson.dumps(last_error)
        return await self._back(job_id, token, score=repr(run_at), attempts=0, error=error)

    async def release(self, job_id: str, token: str) -> bool:
        return await self._back(job_id, token, score="", attempts=-1, error=b"")

    async def _back(
        self, job_id: str, token: str, *, score: str, attempts: int, error: bytes
    ) -> bool:
        k = self.keys
        keys = [k.job(job_id), k.leases, k.queue, k.active, k.expiry]
        argv: list[Any] = [token, score, job_id, attempts, repr(time.time()), self._ttl_ms]
        argv += [self._cancelled, error]
        return bool(await self._op(self._requeue(keys, argv)))

    async def cancel(self, job_id: str, *, now: float) -> Job | None:
        k = self.keys
        keys = [k.job(job_id), k.queue, k.active, k.expiry]
        argv: list[Any] = [job_id, repr(now), self._ttl_ms, self._cancelled]
        found = await self._op(self._cancel(keys, argv))
        return await self.get(job_id) if found else None

    async def delete(self, job_id: str) -> Deleted:
        k = self.keys
        argv = [job_id, k.tenant_prefix, k.job_prefix]
        code = await self._op(self._delete([k.job(job_id), k.expiry], argv))
        return "deleted" if code == 1 else "active" if code == -1 else "missing"

    async def close(self) -> None:
        pass  # the Redis client belongs to the app (redis_ctx)

    async def queued(self) -> int:
        return int(await self._op(self.redis.zcard(self.keys.queue)))
