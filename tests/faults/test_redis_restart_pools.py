"""After a Redis restart, connections pooled before it are dead; using one must not fail a
request once Redis is back. Found by the soak (bench/soak.py): job submissions got 503s for up to
a second after Redis had returned, one per pooled connection, and the cache's breaker opened
again (the cache off for another cooldown)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from tests.cache.conftest import CHAT, HELLO, make_redis
from tests.conftest import ProxyFactory
from tests.jobs.conftest import http
from tests.support.redis_server import RedisServer

#: Requests at once: enough that the pools hold many connections when Redis goes away.
AT_ONCE = 24


def _restart(server: RedisServer) -> None:
    server.kill()
    server.start()


def _submit_at_once(url: str) -> list[int]:
    def submit(i: int) -> int:
        body = {**HELLO, "messages": [{"role": "user", "content": f"job {i}"}]}
        return http("POST", f"{url}/v1/jobs", {"endpoint": CHAT, "body": body}).status

    with ThreadPoolExecutor(AT_ONCE) as pool:
        return list(pool.map(submit, range(AT_ONCE)))


def test_job_submissions_after_a_redis_restart_are_accepted(
    make_proxy: ProxyFactory, redis_url: str, redis_server: RedisServer
) -> None:
    proxy = make_proxy({"redis": {"url": redis_url}, "jobs": {"store": "redis"}})
    assert _submit_at_once(proxy.url) == [202] * AT_ONCE  # the pool now holds connections
    _restart(redis_server)
    assert _submit_at_once(proxy.url) == [202] * AT_ONCE


async def test_cache_reads_after_a_redis_restart_neither_miss_nor_open_the_breaker(
    redis_url: str, redis_server: RedisServer
) -> None:
    backend = make_redis(redis_url)
    try:
        await backend.set("k", b"value", ttl_s=60)
        await asyncio.gather(*(backend.get("k") for _ in range(AT_ONCE)))
        await asyncio.to_thread(_restart, redis_server)  # (no persistence: the entry is gone)
        await asyncio.gather(*(backend.set(f"k{i}", b"v", ttl_s=60) for i in range(AT_ONCE)))
        assert not backend.breaker.is_open
        values = await asyncio.gather(*(backend.get(f"k{i}") for i in range(AT_ONCE)))
    finally:
        await backend.client.aclose()
    assert values == [b"v"] * AT_ONCE
