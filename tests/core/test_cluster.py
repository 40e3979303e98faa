"""The whole proxy on a Redis Cluster (``redis.cluster: true``): cache, jobs and single flight
shared between two replicas, with no cross-slot command (the server would refuse it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import aiohttp
import pytest

from tests.conftest import KEY_A, Fake, ProxyFactory
from tests.support import http
from tests.support.live import BackgroundLoop
from tests.support.redis_server import RedisClusterNode

AUTH = {"Authorization": f"Bearer {KEY_A}"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "cluster"}]}


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterNode]:
    node = RedisClusterNode()
    yield node
    node.stop()


def config(cluster: RedisClusterNode) -> dict[str, object]:
    return {
        "redis": {"url": cluster.url, "cluster": True},
        "cache": {"backend": "redis"},
        "jobs": {"poll_interval_s": 0.05},
    }


def test_cache_and_jobs_are_shared_across_replicas(
    make_proxy: ProxyFactory, fake: Fake, cluster: RedisClusterNode
) -> None:
    a, b = make_proxy(config(cluster)), make_proxy(config(cluster))
    assert http.get(f"{a.url}/readyz").status == 200
    first = http.post(f"{a.base_url}/chat/completions", CHAT, AUTH)
    again = http.post(f"{b.base_url}/chat/completions", CHAT, AUTH)
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("MISS", "HIT")
    assert again.body == first.body

    job = {"endpoint": "/v1/embeddings", "body": {"model": "text-embedding-3-small", "input": "x"}}
    accepted = http.post(f"{a.base_url}/jobs", job, AUTH)
    assert accepted.status == 202, accepted.body
    job_id = accepted.json()["id"]
    deadline = time.monotonic() + 20
    while (seen := http.get(f"{b.base_url}/jobs/{job_id}", AUTH).json())["status"] != "completed":
        assert seen["status"] in ("queued", "in_progress"), seen
        assert time.monotonic() < deadline, "job did not complete"
        time.sleep(0.05)
    assert seen["response"]["status_code"] == 200


async def test_single_flight_across_replicas(
    make_proxy: ProxyFactory, fake: Fake, cluster: RedisClusterNode, bg: BackgroundLoop
) -> None:
    a, b = make_proxy(config(cluster)), make_proxy(config(cluster))
    bg.call(lambda: setattr(fake.state, "latency_ms", 300))
    body = {**CHAT, "messages": [{"role": "user", "content": "flight"}]}
    async with aiohttp.ClientSession(headers=AUTH) as session:

        async def ask(url: str) -> bytes:
            async with session.post(f"{url}/chat/completions", json=body) as resp:
                assert resp.status == 200
                return await resp.read()

        first = asyncio.create_task(ask(a.base_url))
        deadline = time.monotonic() + 5
        while fake.state.in_flight == 0:  # replica A has claimed the call and sent it
            assert time.monotonic() < deadline, "replica A never called the upstream"
            await asyncio.sleep(0.01)
        second = await ask(b.base_url)
        assert await first == second
    assert fake.state.calls["/v1/chat/completions"] == 1
