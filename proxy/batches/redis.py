"""Files and batches in Redis, shared by every replica; each state change is one Lua script.

A file is a LIST of chunks (appended as the upload arrives, read one chunk at a time) and a
JSON meta string; a batch is a hash, its line results another hash (HSETNX: a line is recorded
once), and unfinished batches sit in a ZSET scored by their runner's lease deadline.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable
from typing import Any, TypeVar

from redis.asyncio import Redis

from ..redis_client import store_op
from .models import Batch, FileMeta, changed_fields
from .store import BatchKeys, Lease

__all__ = ["RedisBatchStore", "RedisFileStore"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class _Base:
    def __init__(self, redis: Redis, *, prefix: str, op_timeout_s: float) -> None:
        self.redis = redis
        self.keys = BatchKeys(prefix)
        self._timeout_s = op_timeout_s

    async def _op(self, aw: Awaitable[T]) -> T:
        return await store_op(
            aw,
            timeout_s=self._timeout_s,
            log=log,
            store="batch store",
            unavailable="The batch store (Redis) is unavailable. Try again later.",
        )


class RedisFileStore(_Base):
    async def append(self, file_id: str, chunk: bytes, *, ttl_s: float) -> None:
        key = self.keys.file_data(file_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.rpush(key, chunk)
        pipe.pexpire(key, int(ttl_s * 1000))
        await self._op(pipe.execute())

    async def commit(self, meta: FileMeta) -> None:
        k = self.keys
        at_ms = int(meta.expires_at * 1000)
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(k.file(meta.id), meta.to_bytes(), pxat=at_ms)
        pipe.pexpireat(k.file_data(meta.id), at_ms)
        pipe.zadd(k.files_of(meta.tenant), {meta.id: meta.created_at})
        await self._op(pipe.execute())

    async def get(self, file_id: str) -> FileMeta | None:
        raw: bytes | None = await self._op(
            self.redis.get(self.keys.file(file_id))  # type: ignore[arg-type]
        )
        return FileMeta.from_bytes(raw) if raw else None

    async def chunk(self, file_id: str, index: int) -> bytes | None:
        return await self._op(
            self.redis.lindex(self.keys.file_data(file_id), index)  # type: ignore[arg-type]
        )

    async def page(
        self, tenant: str, *, limit: int, after: str | None, newest_first: bool, purpose: str | None
    ) -> tuple[list[FileMeta], bool]:
        index = self.keys.files_of(tenant)
        ids: list[bytes] = await self._op(
            (self.redis.zrevrange if newest_first else self.redis.zrange)(  # type: ignore[arg-type]
                index, 0, -1
            )
        )
        names = [i.decode() for i in ids]
        if after is not None:
            names = names[names.index(after) + 1 :] if after in names else []
        out: list[FileMeta] = []
        for start in range(0, len(names), 100):
            part = names[start : start + 100]
            raws: list[bytes | None] = await self._op(
                self.redis.mget([self.keys.file(i) for i in part])  # type: ignore[arg-type]
            )
            gone = [i for i, raw in zip(part, raws, strict=True) if raw is None]
            if gone:  # expired: drop them from the index on the way
                await self._op(self.redis.zrem(index, *gone))
            for raw in raws:
                if raw is None:
                    continue
                meta = FileMeta.from_bytes(raw)
                if purpose is None or meta.purpose == purpose:
                    if len(out) == limit:
                        return out, True
                    out.append(meta)
        return out, False

    async def delete(self, file_id: str) -> bool:
        k = self.keys
        meta = await self.get(file_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.unlink(k.file(file_id), k.file_data(file_id))
        if meta is not None:
            pipe.zrem(k.files_of(meta.tenant), file_id)
        removed, *_ = await self._op(pipe.execute())
        return bool(removed)


# KEYS: active. ARGV: now, limit, lease deadline, token prefix, batch key prefix.
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for i, id in ipairs(ids) do
  local key = ARGV[5] .. id
  if redis.call('EXISTS', key) == 1 then
    redis.call('ZADD', KEYS[1], ARGV[3], id)
    redis.call('HSET', key, 'token', ARGV[4] .. i)
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGETALL', key)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""

# KEYS: batch, active. ARGV: token, deadline, id.
_RENEW = """
local f = redis.call('HMGET', KEYS[1], 'token', 'cancel')
if f[1] ~= ARGV[1] or ARGV[1] == '' then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
if f[2] == '1' then return 2 end
return 1
"""

# KEYS: batch, active. ARGV: token, id.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] or ARGV[1] == '' then return 0 end
redis.call('HSET', KEYS[1], 'token', '')
redis.call('ZADD', KEYS[2], 0, ARGV[2])
return 1
"""

# KEYS: batch. ARGV: token, then field/value pairs. Once a cancel was asked for, the cancel
# owns the status until the batch ends.
_UPDATE = """
local f = redis.call('HMGET', KEYS[1], 'token', 'cancel')
if f[1] ~= ARGV[1] or ARGV[1] == '' then return 0 end
for i = 2, #ARGV, 2 do
  if not (ARGV[i] == 'status' and f[2] == '1') then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
"""

# KEYS: batch, results. ARGV: token, index, output, counter, input tokens, output tokens.
_RECORD = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] or ARGV[1] == '' then return 0 end
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[4], 1)
redis.call('HINCRBY', KEYS[1], 'input_tokens', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'output_tokens', ARGV[6])
return 1
"""

# KEYS: batch, results, active. ARGV: token, id, ttl ms, then field/value pairs.
_FINISH = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] or ARGV[1] == '' then return false end
redis.call('HSET', KEYS[1], 'token', '', 'phase', 'done', unpack(ARGV, 4))
redis.call('HDEL', KEYS[1], 'credential')
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: batch. ARGV: now.
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
if status == 'validating' or status == 'in_progress' then
  redis.call('HSET', KEYS[1], 'cancel', '1', 'status', 'cancelling', 'cancelling_at', ARGV[1])
end
return 1
"""


def _pairs(fields: dict[str, str | bytes]) -> list[Any]:
    out: list[Any] = []
    for name, value in fields.items():
        out += (name, value)
    return out


def _batch(batch_id: str, raw: list[bytes]) -> Batch:
    return Batch.from_fields(batch_id, dict(zip(raw[::2], raw[1::2], strict=True)))


class RedisBatchStore(_Base):
    def __init__(self, redis: Redis, *, prefix: str, op_timeout_s: float) -> None:
        super().__init__(redis, prefix=prefix, op_timeout_s=op_timeout_s)
        self._claim = redis.register_script(_CLAIM)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._update = redis.register_script(_UPDATE)
        self._record = redis.register_script(_RECORD)
        self._finish = redis.register_script(_FINISH)
        self._cancel = redis.register_script(_CANCEL)

    async def create(self, batch: Batch) -> None:
        k = self.keys
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(k.batch(batch.id), mapping=batch.to_fields())  # type: ignore[arg-type]
        pipe.zadd(k.batches_of(batch.tenant), {batch.id: batch.created_at})
        pipe.zadd(k.active, {batch.id: 0})
        await self._op(pipe.execute())

    async def get(self, batch_id: str) -> Batch | None:
        raw: dict[bytes, bytes] = await self._op(
            self.redis.hgetall(self.keys.batch(batch_id))  # type: ignore[arg-type]
        )
        return Batch.from_fields(batch_id, raw) if raw else None

    async def page(self, tenant: str, *, limit: int, after: str | None) -> tuple[list[Batch], bool]:
        index = self.keys.batches_of(tenant)
        start = 0
        if after is not None:
            rank: int | None = await self._op(self.redis.zrevrank(index, after))  # type: ignore[arg-type]
            if rank is None:
                return [], False
            start = rank + 1
        out: list[Batch] = []
        while True:
            ids: list[bytes] = await self._op(
                self.redis.zrevrange(index, start, start + limit)  # type: ignore[arg-type]
            )
            if not ids:
                return out, False
            start += len(ids)
            pipe = self.redis.pipeline(transaction=False)
            for batch_id in ids:
                pipe.hgetall(self.keys.batch(batch_id.decode()))
            rows = await self._op(pipe.execute())
            gone = [i for i, row in zip(ids, rows, strict=True) if not row]
            if gone:  # expired: drop them from the index on the way
                await self._op(self.redis.zrem(index, *gone))
            for batch_id, row in zip(ids, rows, strict=True):
                if row:
                    if len(out) == limit:
                        return out, True
                    out.append(Batch.from_fields(batch_id.decode(), row))

    async def claim(self, *, now: float, limit: int, lease_s: float, owner: str) -> list[Batch]:
        k = self.keys
        token = f"{owner}:{secrets.token_hex(6)}:"
        argv: list[Any] = [repr(now), limit, repr(now + lease_s), token, k.batch_prefix]
        flat = await self._op(self._claim([k.active], argv))
        return [_batch(flat[i].decode(), flat[i + 1]) for i in range(0, len(flat), 2)]

    async def renew(self, batch_id: str, token: str, *, until: float) -> Lease:
        keys = [self.keys.batch(batch_id), self.keys.active]
        code = await self._op(self._renew(keys, [token, repr(until), batch_id]))
        return "held" if code == 1 else "cancel" if code == 2 else "lost"

    async def release(self, batch_id: str, token: str) -> None:
        keys = [self.keys.batch(batch_id), self.keys.active]
        await self._op(self._release(keys, [token, batch_id]))

    async def update(self, batch_id: str, token: str, changes: dict[str, Any]) -> bool:
        argv = [token, *_pairs(changed_fields(changes))]
        return bool(await self._op(self._update([self.keys.batch(batch_id)], argv)))

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
        keys = [self.keys.batch(batch_id), self.keys.results(batch_id)]
        counter = "completed" if ok else "failed"
        argv: list[Any] = [token, index, (b"o" if ok else b"e") + line, counter, *tokens]
        return bool(await self._op(self._record(keys, argv)))

    async def done(self, batch_id: str) -> set[int]:
        keys: list[bytes] = await self._op(
            self.redis.hkeys(self.keys.results(batch_id))  # type: ignore[arg-type]
        )
        return {int(k) for k in keys}

    async def results(self, batch_id: str, indexes: list[int]) -> list[bytes | None]:
        if not indexes:
            return []
        return await self._op(
            self.redis.hmget(self.keys.results(batch_id), indexes)  # type: ignore[arg-type]
        )

    async def finish(
        self, batch_id: str, token: str, changes: dict[str, Any], *, ttl_s: float
    ) -> Batch | None:
        k = self.keys
        keys = [k.batch(batch_id), k.results(batch_id), k.active]
        argv = [token, batch_id, int(ttl_s * 1000), *_pairs(changed_fields(changes))]
        raw = await self._op(self._finish(keys, argv))
        return _batch(batch_id, raw) if raw else None

    async def cancel(self, batch_id: str, *, now: float) -> Batch | None:
        found = await self._op(self._cancel([self.keys.batch(batch_id)], [repr(now)]))
        return await self.get(batch_id) if found else None
