"""The id -> upstream memory: one contract for memory and Redis, and the stage that fills it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from multidict import CIMultiDict
from redis.asyncio import Redis

from proxy.call import Call, Reply
from proxy.config import CacheSettings
from proxy.responses.origins import MemoryOrigins, Origin, Origins, OriginStage, RedisOrigins


@pytest.fixture(params=["memory", "redis"])
async def origins(request: pytest.FixtureRequest) -> AsyncIterator[Origins]:
    if request.param == "memory":
        yield MemoryOrigins()
        return
    client = Redis.from_url(request.getfixturevalue("redis_url"))
    yield RedisOrigins(client, prefix="testprefix", op_timeout_s=1.0)
    await client.aclose()


async def test_remember_lookup_forget(origins: Origins) -> None:
    assert await origins.lookup("resp_1") is None
    await origins.remember("resp_1", Origin("second", "t_x:abc"), ttl_s=60)
    await origins.remember("resp_2", Origin("first"), ttl_s=60)
    assert await origins.lookup("resp_1") == Origin("second", "t_x:abc")
    assert await origins.lookup("resp_2") == Origin("first", None)
    await origins.forget("resp_1")
    assert await origins.lookup("resp_1") is None
    assert await origins.lookup("resp_2") == Origin("first", None)


async def test_redis_keys_carry_the_prefix_and_the_ttl(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        await RedisOrigins(client, prefix="pfx", op_timeout_s=1.0).remember(
            "resp_9", Origin("up"), ttl_s=30
        )
        assert await client.keys("*") == [b"pfx:responses:origin:resp_9"]
        assert 29_000 < await client.pttl("pfx:responses:origin:resp_9") <= 30_000
    finally:
        await client.aclose()


async def test_a_redis_that_is_down_reads_as_unknown() -> None:
    client = Redis.from_url("redis://127.0.0.1:9/0")  # nothing listens on the discard port
    try:
        down = RedisOrigins(client, prefix="p", op_timeout_s=0.5, breaker_cooldown_s=60)
        await down.remember("resp_1", Origin("up"), ttl_s=30)
        assert down.breaker.is_open  # the next requests do not wait for Redis
        assert await down.lookup("resp_1") is None
    finally:
        await client.aclose()


class _Up:
    name = "second"


async def _chunks(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_stream_ids_are_found_past_comments_and_split_chunks() -> None:
    memory = MemoryOrigins()
    stage = OriginStage(memory, cache=CacheSettings())
    event = b'event: response.created\ndata: {"type":"response.created","response":{"id":"resp_s"}}'
    source = _chunks(b": keep-alive\n\n", event[:30], event[30:] + b"\n\n", b"event: x\n\n")

    async def upstream(call: Call) -> Reply:
        headers = CIMultiDict({"Content-Type": "text/event-stream"})
        return Reply(200, headers, stream=source)

    call: Any = Call(
        tenant="t", upstream=_Up(), method="POST", path="/v1/responses", body=b"{}", json={},
        key="t:k", stream=True,
    )  # fmt: skip
    reply = await stage.wrap(upstream)(call)
    assert reply.stream is not None
    passed = [chunk async for chunk in reply.stream]
    assert b"".join(passed) == b": keep-alive\n\n" + event + b"\n\nevent: x\n\n"
    assert await memory.lookup("resp_s") == Origin("second", "t:k", "t")
