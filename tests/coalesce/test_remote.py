"""Single flight across replicas: two proxies on one real Redis share one upstream call."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson

from bench.fake_upstream import Scripted
from proxy.coalesce.remote import FlightKeys, Record
from proxy.coalesce.singleflight import flight_key
from proxy.keys import AUTH, DOOR, SETTINGS
from tests.coalesce.helpers import CHAT, calls, metric, script, set_state, wait_until
from tests.conftest import KEY_A, Fake, Proxy, ProxyFactory
from tests.support.live import BackgroundLoop
from tests.support.redis_server import RedisServer

BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "shared across replicas"}],
}


def replica(make_proxy: ProxyFactory, redis_url: str, **coalescing: Any) -> Proxy:
    return make_proxy(
        {"cache": {"enabled": False}, "redis": {"url": redis_url}, "coalescing": coalescing}
    )


async def send(proxy: Proxy, body: dict[str, Any]) -> tuple[int, bytes, dict[str, str]]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY_A}"}) as session:
        async with session.post(f"{proxy.base_url}/chat/completions", json=body) as resp:
            return resp.status, await resp.read(), dict(resp.headers)


def claim_name(proxy: Proxy, body: dict[str, Any]) -> str:
    """The Redis key a replica claims for ``body`` (computed as the proxy does)."""
    return flight_keys(proxy, body).claim


def flight_keys(proxy: Proxy, body: dict[str, Any]) -> FlightKeys:
    identity = proxy.app[AUTH].identify({"Authorization": f"Bearer {KEY_A}"})
    call = proxy.app[DOOR].build_call(
        identity=identity,
        method="POST",
        path=CHAT,
        headers={},
        body=orjson.dumps(body),
        data=dict(body),
    )
    key = flight_key(call, proxy.app[SETTINGS].cache)
    assert key is not None
    return FlightKeys.of(proxy.app[SETTINGS].redis.key_prefix, key)


async def test_two_replicas_share_one_upstream_call(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop, redis_url: str
) -> None:
    a, b = replica(make_proxy, redis_url), replica(make_proxy, redis_url)
    set_state(bg, fake, latency_ms=500)
    first = asyncio.create_task(send(a, BODY))
    await wait_until(lambda: fake.state.in_flight == 1)
    (status_a, body_a, _), (status_b, body_b, headers_b) = await asyncio.gather(
        first, send(b, BODY)
    )
    assert status_a == status_b == 200
    assert body_a == body_b
    assert headers_b["X-Coalesced"] == "2"
    assert calls(fake, CHAT) == 1
    assert metric(b, "llm_proxy_deduplicated_total") == 1


async def test_streams_are_shared_across_replicas(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop, redis_url: str
) -> None:
    a, b = replica(make_proxy, redis_url), replica(make_proxy, redis_url)
    set_state(bg, fake, latency_ms=300)
    body = {**BODY, "stream": True}
    first = asyncio.create_task(send(a, body))
    await wait_until(lambda: fake.state.in_flight == 1)
    (_, stream_a, _), (_, stream_b, _) = await asyncio.gather(first, send(b, body))
    assert stream_a == stream_b and stream_a.endswith(b"data: [DONE]\n\n")
    assert calls(fake, CHAT) == 1


async def test_a_dead_leaders_claim_blocks_only_up_to_the_bound(
    make_proxy: ProxyFactory, fake: Fake, redis_server: RedisServer, redis_url: str
) -> None:
    proxy = replica(make_proxy, redis_url, cross_replica_wait_s=1.0)
    client = redis_server.client()
    client.set(claim_name(proxy, BODY), "a-replica-that-died", px=60_000)
    client.close()
    start = time.monotonic()
    status, _, _ = await send(proxy, BODY)
    waited = time.monotonic() - start
    assert status == 200
    assert 1.0 <= waited < 4
    assert calls(fake, CHAT) == 1


async def test_an_expired_claim_ends_the_wait_early(
    make_proxy: ProxyFactory, fake: Fake, redis_server: RedisServer, redis_url: str
) -> None:
    proxy = replica(make_proxy, redis_url, cross_replica_wait_s=30)
    client = redis_server.client()
    client.set(claim_name(proxy, BODY), "a-replica-that-died", px=400)
    client.close()
    start = time.monotonic()
    status, _, _ = await send(proxy, BODY)
    assert status == 200
    assert time.monotonic() - start < 4
    assert calls(fake, CHAT) == 1


async def test_redis_down_fails_open(
    make_proxy: ProxyFactory, fake: Fake, redis_server: RedisServer, redis_url: str
) -> None:
    proxy = replica(make_proxy, redis_url)
    redis_server.kill()
    try:
        status, _, _ = await send(proxy, BODY)
    finally:
        redis_server.start()
    assert status == 200
    assert calls(fake, CHAT) == 1
    assert metric(proxy, "llm_proxy_redis_errors_total", op="flight_claim") == 1


async def test_a_result_that_does_not_decode_fails_open(
    make_proxy: ProxyFactory, fake: Fake, redis_server: RedisServer, redis_url: str
) -> None:
    proxy = replica(make_proxy, redis_url, cross_replica_wait_s=5)
    claim = claim_name(proxy, BODY)
    client = redis_server.client()
    client.set(claim, "another-replica", px=60_000)
    client.set(claim.removesuffix(":claim") + ":result:another-replica", b"\x00garbage", px=60_000)
    client.close()
    status, _, _ = await send(proxy, BODY)
    assert status == 200  # went alone at once instead of failing every waiter
    assert calls(fake, CHAT) == 1
    assert metric(proxy, "llm_proxy_redis_errors_total", op="flight_decode") == 1


async def test_a_finished_calls_error_is_not_served_to_a_later_caller_on_another_replica(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop, redis_url: str
) -> None:
    """Issue 14 item 2: the upstream answers 503 then recovers. A's client gets the 503 and
    retries on A (which takes the claim again); B's client, arriving while that retry is in
    flight, must get the retry's answer, not the old 503 still stored for the first call."""
    a, b = replica(make_proxy, redis_url), replica(make_proxy, redis_url)
    error = {"error": {"message": "overloaded", "type": "server_error", "param": None}}
    script(bg, fake, Scripted(503, error, path=CHAT))
    status, _, _ = await send(a, BODY)
    assert status == 503
    set_state(bg, fake, latency_ms=500)
    retry = asyncio.create_task(send(a, BODY))
    await wait_until(lambda: fake.state.in_flight == 1)
    (status_a, body_a, _), (status_b, body_b, headers_b) = await asyncio.gather(
        retry, send(b, BODY)
    )
    assert (status_a, status_b) == (200, 200)
    assert body_a == body_b
    assert headers_b["X-Coalesced"] == "2"  # B waited for A's retry, not for its first call
    assert calls(fake, CHAT) == 2


WORDS = " ".join(f"word{i}" for i in range(150))
LONG: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": WORDS}]}


async def test_an_answer_past_the_bound_is_not_published_to_other_replicas(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop, redis_url: str
) -> None:
    """Issue 14 item 8: Redis does not hold an answer larger than ``cache.max_entry_bytes``;
    the waiter on the other replica then makes its own call."""
    bound = {"enabled": False, "max_entry_bytes": 1024}
    a, b = (
        make_proxy({"cache": bound, "redis": {"url": redis_url}}),
        make_proxy({"cache": bound, "redis": {"url": redis_url}}),
    )
    set_state(bg, fake, latency_ms=300)
    first = asyncio.create_task(send(a, LONG))
    await wait_until(lambda: fake.state.in_flight == 1)
    (status_a, body_a, _), (status_b, body_b, headers_b) = await asyncio.gather(
        first, send(b, LONG)
    )
    assert (status_a, status_b) == (200, 200)
    assert len(body_a) > 1024 and body_a == body_b
    assert "X-Coalesced" not in headers_b
    assert calls(fake, CHAT) == 2


async def test_a_stream_past_the_bound_sends_other_replicas_on_their_own_at_once(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop, redis_url: str
) -> None:
    bound = {"enabled": False, "max_entry_bytes": 4096}
    a, b = (
        make_proxy({"cache": bound, "redis": {"url": redis_url}}),
        make_proxy({"cache": bound, "redis": {"url": redis_url}}),
    )
    set_state(bg, fake, chunk_delay_ms=10)  # ~150 chunks of ~200 bytes: about 1.5 s
    body = {**LONG, "stream": True}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY_A}"}) as session:
        async with session.post(f"{a.base_url}/chat/completions", json=body) as leader:
            head = await leader.content.readexactly(8192)  # A's flight is past the bound
            async with session.post(f"{b.base_url}/chat/completions", json=body) as other:
                first = await other.content.readuntil(b"\n\n")
                assert fake.state.completed_streams == 0  # B did not wait for A's end
                other_whole = first + await other.read()
            leader_whole = head + await leader.read()
    assert leader_whole == other_whole and leader_whole.endswith(b"data: [DONE]\n\n")
    assert calls(fake, CHAT) == 2


async def test_a_waiter_follows_the_claim_that_replaced_the_one_it_found(
    make_proxy: ProxyFactory, fake: Fake, redis_server: RedisServer, redis_url: str
) -> None:
    """The claim a waiter found is replaced (its holder gave up, another replica took it): the
    waiter takes the new holder's result, not nothing and not its own call."""
    proxy = replica(make_proxy, redis_url, cross_replica_wait_s=10)
    keys = flight_keys(proxy, BODY)
    client = redis_server.client()
    client.set(keys.claim, "gave-up", px=60_000)
    waiter = asyncio.create_task(send(proxy, BODY))
    await wait_until(lambda: dict(client.pubsub_numsub(keys.channel))[keys.channel.encode()] == 1)
    answer = Record(200, [("Content-Type", "application/json")], b'{"from": "newer"}')
    with client.pipeline() as pipe:  # MULTI: the new holder and its result appear together
        pipe.set(keys.claim, "newer", px=60_000)
        pipe.set(keys.result("newer"), answer.encode(), px=60_000)
        pipe.execute()
    client.close()
    status, body, _ = await waiter
    assert (status, body) == (200, b'{"from": "newer"}')
    assert calls(fake, CHAT) == 0
