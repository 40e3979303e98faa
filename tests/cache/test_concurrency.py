"""The Redis cache under many concurrent requests: found by the soak (bench/soak.py).

With 200 connections on one process, a pool of 32 cache connections made requests queue for a
connection past ``redis.op_timeout_ms``; each such wait counted as Redis being down and opened
the breaker, so the cache was off for most of the run (3,600 failed reads in 15 s, hit rate
about a quarter of what it was with the pool large enough)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from proxy.cache.redis import RedisBackend
from tests.cache.conftest import make_redis
from tests.support.faultproxy import FaultProxy
from tests.support.live import BackgroundLoop
from tests.support.redis_server import RedisServer

#: As many cache reads at once as the upstream's default pool lets requests be in flight.
CONCURRENT = 256
DELAY_S = 0.8


@pytest.fixture
def slow_redis(bg: BackgroundLoop, redis_url: str, redis_server: RedisServer) -> Iterator[str]:
    """A Redis URL whose every answer takes ``DELAY_S`` (a busy network), through a fault proxy."""
    fp = FaultProxy(bg, redis_server.port).start()
    fp.set("slow", delay_s=DELAY_S)
    yield f"redis://127.0.0.1:{fp.port}/0"
    fp.close()


async def test_concurrent_reads_do_not_wait_for_a_connection_past_the_bound(
    slow_redis: str, redis_server: RedisServer
) -> None:
    backend: RedisBackend = make_redis(slow_redis, op_timeout_ms=7 * DELAY_S * 1000)
    direct = redis_server.client()
    direct.set(backend.name("k"), b"\x00value")
    direct.close()
    try:
        # A read on a new connection takes 5 answers (redis-py's set-up, then GET): all of them
        # fit the 7-answer bound together only if they need not queue for a connection (in
        # turns of 32, the eighth ends after 8 answers at the very least).
        values = await asyncio.gather(*(backend.get("k") for _ in range(CONCURRENT)))
    finally:
        await backend.client.aclose()
    assert values == [b"value"] * CONCURRENT
    assert not backend.breaker.is_open
