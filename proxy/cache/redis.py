"""The shared backend: one Redis (or Redis Cluster) for every replica of the proxy.

Keys are ``<redis.key_prefix>:cache:v<cache.key_version>:<scope>:<hash>``: one key per entry, no
hash tags, so a cluster spreads entries over its slots and no command ever spans two slots.
Values start with one byte: ``0`` raw, ``1`` zlib (above ``cache.compress_min_bytes``).

The cache must never make the proxy slower or less available than the upstream alone: every
operation is bounded by ``redis.op_timeout_ms``, and a failure opens a circuit breaker for
``redis.breaker_cooldown_s`` during which the backend reads as empty without trying.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from typing import Any

from redis.exceptions import RedisError, ResponseError

from ..breaker import Breaker
from ..config import CacheSettings, RedisSettings
from ..errors import StoreUnavailable
from ..metrics import Metrics
from ..redis_client import open_redis, reconnect_once

__all__ = ["RedisBackend", "open_cache_redis"]

log = logging.getLogger(__name__)

#: What a broken, slow or missing Redis raises.
REDIS_ERRORS = (RedisError, OSError, TimeoutError)
_RAW, _ZLIB = b"\x00", b"\x01"
_SCAN_COUNT = 1000
#: Connections per Redis node; a request beyond this waits (up to the op timeout) for one, and
#: a wait past the bound opens the breaker. One per request the upstream's default pool lets be
#: in flight: with fewer, a busy replica turned its own cache off (the soak, docs/reliability.md).
_MAX_CONNECTIONS = 256


def open_cache_redis(settings: RedisSettings) -> Any:
    """A client for the cache: short timeouts, no retries but one reconnection of a broken
    connection (the breaker decides when to try a Redis that is down again)."""
    timeout_s = settings.op_timeout_ms / 1000
    return open_redis(
        settings,
        max_connections=_MAX_CONNECTIONS,
        pool_timeout_s=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=reconnect_once(),
    )


class RedisBackend:
    """Entries in Redis with a TTL each, compressed above a size threshold; fails open."""

    def __init__(
        self,
        client: Any,
        *,
        redis: RedisSettings,
        cache: CacheSettings,
        metrics: Metrics | None = None,
    ) -> None:
        self.client = client
        self.prefix = f"{redis.key_prefix}:cache:v{cache.key_version}:"
        self.compress_min_bytes = cache.compress_min_bytes
        self.timeout_s = redis.op_timeout_ms / 1000
        self.max_ttl_s = cache.max_ttl_s
        self.breaker = Breaker(
            cooldown_s=redis.breaker_cooldown_s,
            name="cache redis",
            fallback="serving without cache",
        )
        self._metrics = metrics

    def name(self, key: str) -> str:
        return self.prefix + key

    async def get(self, key: str) -> bytes | None:
        if not self.breaker.allow():
            return None
        try:
            async with asyncio.timeout(self.timeout_s):
                raw = await self.client.get(self.prefix + key)
        except REDIS_ERRORS as exc:
            self._failed("get", exc)
            return None
        self.breaker.succeeded()
        return None if raw is None else self._unpack(raw)

    async def set(self, key: str, value: bytes, *, ttl_s: float) -> None:
        # Callers clamp already; this keeps a stray TTL from raising or reaching Redis as a
        # value it refuses (a refusal must not read as an outage: see below).
        if not ttl_s > 0 or not self.breaker.allow():  # (also NaN)
            return
        ttl_ms = max(1, int(min(ttl_s, self.max_ttl_s) * 1000))
        packed = self._pack(value)
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.client.set(self.prefix + key, packed, px=ttl_ms)
        except ResponseError as exc:
            # Redis is up and refused this one write (out of memory, say): count it, but do
            # not stop every tenant's reads for it.
            self._count("set", exc)
            return
        except REDIS_ERRORS as exc:
            self._failed("set", exc)
            return
        self.breaker.succeeded()
        if self._metrics is not None:
            self._metrics.cache_stores.inc()

    async def delete(self, key: str) -> None:
        if not self.breaker.allow():
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.client.unlink(self.prefix + key)
        except REDIS_ERRORS as exc:
            self._failed("delete", exc)

    async def clear(self, *, scope: str | None = None, digest: str | None = None) -> int:
        """SCAN (every primary, on a cluster) and UNLINK slot by slot: never cross-slot."""
        pattern = f"{_escape(self.prefix)}{_escape(scope) if scope else '*'}:"
        pattern += _escape(digest) if digest else "*"
        deleted = 0
        try:
            batch: list[Any] = []
            async for name in self.client.scan_iter(match=pattern, count=_SCAN_COUNT):
                batch.append(name)
                if len(batch) >= _SCAN_COUNT:
                    deleted += await self._unlink(batch)
                    batch = []
            deleted += await self._unlink(batch)
        except REDIS_ERRORS as exc:
            self._failed("clear", exc)
            raise StoreUnavailable("The cache's Redis is unavailable; nothing was cleared") from exc
        return deleted

    async def _unlink(self, names: list[Any]) -> int:
        # On a cluster, redis-py splits a multi-key UNLINK into one command per slot.
        return int(await self.client.unlink(*names)) if names else 0

    def problem(self) -> str | None:
        if not self.breaker.is_open:
            return None
        return "cache redis unavailable: serving without cache (circuit breaker open)"

    async def close(self) -> None:
        await self.client.aclose()

    def _pack(self, value: bytes) -> bytes:
        if len(value) >= self.compress_min_bytes:
            return _ZLIB + zlib.compress(value, 1)
        return _RAW + value

    def _unpack(self, raw: bytes) -> bytes | None:
        marker, body = raw[:1], raw[1:]
        if marker == _RAW:
            return body
        if marker == _ZLIB:
            try:
                return zlib.decompress(body)
            except zlib.error:
                pass
        if self._metrics is not None:
            self._metrics.redis_errors.labels(op="decode").inc()
        return None

    def _failed(self, op: str, exc: BaseException) -> None:
        self._count(op, exc)
        self.breaker.failed(op, exc)

    def _count(self, op: str, exc: BaseException) -> None:
        log.debug("cache redis %s failed: %s: %s", op, type(exc).__name__, exc)
        if self._metrics is not None:
            self._metrics.redis_errors.labels(op=op).inc()


def _escape(text: str) -> str:
    """``text`` as a literal in a SCAN ``MATCH`` glob."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
