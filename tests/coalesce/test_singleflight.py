"""Single flight: identical calls in flight share one upstream call (plain and streamed)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import openai
import pytest
from multidict import CIMultiDict

from bench.fake_upstream import Scripted
from proxy.call import Call, Reply
from proxy.coalesce.singleflight import SingleFlight
from proxy.keys import AUTH, DOOR, SETTINGS
from proxy.metrics import Metrics
from tests.coalesce.helpers import (
    CHAT,
    calls,
    metric,
    open_gate,
    release,
    script,
    set_state,
    wait_until,
)
from tests.conftest import KEY_A, KEY_B, Fake, Proxy, ProxyFactory
from tests.support import http
from tests.support.live import BackgroundLoop

MESSAGES: Any = [{"role": "user", "content": "one two three four five"}]
BODY = {"model": "gpt-4o-mini", "messages": MESSAGES}
STREAM = {**BODY, "stream": True}
KW: Any = {"model": "gpt-4o-mini", "messages": MESSAGES}


@pytest.fixture
def proxy(make_proxy: ProxyFactory) -> Proxy:
    """Cache off, so every repeat would reach the upstream without single flight."""
    return make_proxy({"cache": {"enabled": False}})


async def test_identical_calls_share_one_upstream_call(
    proxy: Proxy, fake: Fake, bg: BackgroundLoop
) -> None:
    set_state(bg, fake, latency_ms=300)
    async with proxy.async_client() as client:
        outs = await asyncio.gather(
            *(
                client.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini", messages=MESSAGES
                )
                for _ in range(10)
            )
        )
    assert calls(fake, CHAT) == 1
    bodies = {o.content for o in outs}
    assert len(bodies) == 1
    assert outs[0].parse().choices[0].message.content == "echo: one two three four five"
    assert {o.headers["x-coalesced"] for o in outs} == {"10"}
    assert metric(proxy, "llm_proxy_deduplicated_total") == 9


async def test_sequential_calls_are_not_shared(proxy: Proxy, fake: Fake) -> None:
    client = proxy.client()
    first = client.chat.completions.with_raw_response.create(**KW)
    second = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    assert calls(fake, CHAT) == 2
    assert "x-coalesced" not in first.headers and "x-coalesced" not in second.headers


async def test_streams_share_one_call_and_get_every_chunk(
    proxy: Proxy, fake: Fake, bg: BackgroundLoop
) -> None:
    set_state(bg, fake, latency_ms=300)
    async with proxy.async_client() as client:

        async def one() -> str:
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True
            )
            parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            return "".join(parts)

        texts = await asyncio.gather(*(one() for _ in range(8)))
    assert texts == ["echo: one two three four five"] * 8
    assert calls(fake, CHAT) == 1


async def _read_sse(resp: aiohttp.ClientResponse) -> bytes:
    return b"".join([chunk async for chunk in resp.content.iter_any()])


async def test_late_joiner_gets_the_chunks_already_sent(
    proxy: Proxy, fake: Fake, bg: BackgroundLoop
) -> None:
    gate = open_gate(bg, fake)
    url = f"{proxy.base_url}/chat/completions"
    headers = {"Authorization": f"Bearer {KEY_A}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(url, json=STREAM) as leader:
            first = await leader.content.readuntil(b"\n\n")  # the fake holds after this one
            assert first.startswith(b"data: ")
            late = asyncio.create_task(session.post(url, json=STREAM))
            await wait_until(lambda: metric(proxy, "llm_proxy_deduplicated_total") == 1)
            release(bg, gate)
            rest = await _read_sse(leader)
            async with await late as follower:
                assert follower.headers["X-Coalesced"] == "2"
                whole = await _read_sse(follower)
    assert whole == first + rest
    assert whole.endswith(b"data: [DONE]\n\n")
    assert calls(fake, CHAT) == 1


async def test_leader_leaving_does_not_stop_the_followers(
    proxy: Proxy, fake: Fake, bg: BackgroundLoop
) -> None:
    gate = open_gate(bg, fake)
    url = f"{proxy.base_url}/chat/completions"
    async with aiohttp.ClientSession() as leader_session, aiohttp.ClientSession() as other:
        leader = await leader_session.post(url, json=STREAM)
        await leader.content.readuntil(b"\n\n")
        follower = await other.post(url, json=STREAM)
        await wait_until(lambda: metric(proxy, "llm_proxy_deduplicated_total") == 1)
        leader.close()  # the leader's client goes away mid-stream
        await leader_session.close()
        release(bg, gate)
        whole = await _read_sse(follower)
        follower.release()
    assert whole.endswith(b"data: [DONE]\n\n")
    assert b"five" in whole
    assert fake.state.completed_streams == 1 and fake.state.cancelled_streams == 0


async def test_upstream_call_is_cancelled_when_everybody_leaves(
    proxy: Proxy, fake: Fake, bg: BackgroundLoop
) -> None:
    open_gate(bg, fake)
    url = f"{proxy.base_url}/chat/completions"
    sessions = [aiohttp.ClientSession() for _ in range(2)]
    try:
        first = await sessions[0].post(url, json=STREAM)
        await first.content.readuntil(b"\n\n")
        second = await sessions[1].post(url, json=STREAM)
        await second.content.readuntil(b"\n\n")
        for resp in (first, second):
            resp.close()
    finally:
        for session in sessions:
            await session.close()
    await wait_until(lambda: fake.state.cancelled_streams == 1)
    assert calls(fake, CHAT) == 1
    # The next identical call starts afresh instead of joining the abandoned one.
    bg.call(lambda: setattr(fake.state, "stream_gate", None))
    out = proxy.client().chat.completions.create(**KW)
    assert out.choices[0].message.content == "echo: one two three four five"
    assert calls(fake, CHAT) == 2


async def test_upstream_error_is_given_to_every_waiter(
    proxy: Proxy, fake: Fake, bg: BackgroundLoop
) -> None:
    error = {
        "error": {"message": "overloaded", "type": "server_error", "param": None, "code": None}
    }
    script(bg, fake, Scripted(503, error, path=CHAT, delay_ms=300))
    url = f"{proxy.base_url}/chat/completions"
    outs = await asyncio.gather(*(asyncio.to_thread(http.post, url, BODY) for _ in range(5)))
    assert [o.status for o in outs] == [503] * 5
    assert {o.body for o in outs} == {outs[0].body}
    assert outs[0].json()["error"]["message"] == "overloaded"
    assert calls(fake, CHAT) == 1
    async with proxy.async_client() as client:
        # The SDK sees the same error (the script is used up: this one succeeds afresh).
        out = await client.chat.completions.create(**KW)
    assert out.choices[0].message.content


async def test_followers_do_not_wait_past_the_leaders_timeout(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop
) -> None:
    upstream = {"name": "fake", "base_url": fake.url, "models": ["*"], "total_timeout_s": 0.5}
    proxy = make_proxy({"cache": {"enabled": False}, "upstreams": [upstream]})
    set_state(bg, fake, latency_ms=5000)
    start = time.monotonic()
    async with proxy.async_client() as client:
        outs = await asyncio.gather(
            *(client.chat.completions.create(**KW) for _ in range(4)),
            return_exceptions=True,
        )
    assert time.monotonic() - start < 3
    assert all(isinstance(o, openai.APIStatusError) and o.status_code == 504 for o in outs)
    assert calls(fake, CHAT) == 1


async def test_tenants_and_no_cache_are_not_shared(
    proxy: Proxy, fake: Fake, bg: BackgroundLoop
) -> None:
    set_state(bg, fake, latency_ms=300)
    a, b = proxy.async_client(KEY_A), proxy.async_client(KEY_B)
    no_cache = proxy.async_client(KEY_A, default_headers={"Cache-Control": "no-cache"})
    async with a, b, no_cache:
        outs = await asyncio.gather(
            a.chat.completions.with_raw_response.create(**KW),
            b.chat.completions.with_raw_response.create(**KW),
            no_cache.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=MESSAGES
            ),
        )
    assert calls(fake, CHAT) == 3
    assert all("x-coalesced" not in o.headers for o in outs)


async def test_stream_and_plain_calls_are_separate_flights(
    proxy: Proxy, fake: Fake, bg: BackgroundLoop
) -> None:
    set_state(bg, fake, latency_ms=300)
    async with proxy.async_client() as client:
        plain, stream = await asyncio.gather(
            client.chat.completions.create(**KW),
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True),
        )
        chunks = [c async for c in stream]
    assert plain.choices[0].message.content == "echo: one two three four five"
    assert chunks and chunks[0].object == "chat.completion.chunk"
    assert calls(fake, CHAT) == 2


async def test_shared_cache_still_calls_with_each_clients_own_key(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop
) -> None:
    """Passthrough auth, ``cache.shared``: B must not get the 401 or 429 of A's key."""
    proxy = make_proxy({"cache": {"shared": True}})
    error = {"error": {"message": "Incorrect API key provided: sk-ten***", "code": "invalid"}}
    script(bg, fake, Scripted(401, error, path=CHAT, delay_ms=300))
    a, b = proxy.async_client(KEY_A), proxy.async_client(KEY_B)
    async with a, b:
        first = asyncio.create_task(a.chat.completions.with_raw_response.create(**KW))
        await wait_until(lambda: fake.state.in_flight == 1)
        outs = await asyncio.gather(
            b.chat.completions.with_raw_response.create(**KW), first, return_exceptions=True
        )
    assert isinstance(outs[1], openai.AuthenticationError)
    assert not isinstance(outs[0], BaseException) and outs[0].status_code == 200
    assert calls(fake, CHAT) == 2
    sent = [r.headers["Authorization"] for r in fake.state.requests]
    assert sent == [f"Bearer {KEY_A}", f"Bearer {KEY_B}"]


LONG: Any = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": " ".join(f"word{i}" for i in range(150))}],
    "stream": True,
}


async def test_a_stream_past_the_bound_is_not_kept_for_late_joiners(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop
) -> None:
    """Issue 14 item 8: past ``cache.max_entry_bytes`` a late joiner makes its own call (and
    gets a whole answer from it), while the callers already attached get every chunk."""
    proxy = make_proxy({"cache": {"enabled": False, "max_entry_bytes": 4096}})
    gate = open_gate(bg, fake)
    set_state(bg, fake, chunk_delay_ms=10)  # ~150 chunks of ~200 bytes: about 1.5 s
    url = f"{proxy.base_url}/chat/completions"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY_A}"}) as session:
        async with session.post(url, json=LONG) as leader, session.post(url, json=LONG) as early:
            await wait_until(lambda: metric(proxy, "llm_proxy_deduplicated_total") == 1)
            release(bg, gate)
            head = await leader.content.readexactly(8192)  # so the flight is past the bound
            assert fake.state.completed_streams == 0  # ... and still in flight
            async with session.post(url, json=LONG) as late:
                assert "X-Coalesced" not in late.headers
                late_whole = await _read_sse(late)
            leader_whole = head + await _read_sse(leader)
            early_whole = await _read_sse(early)
    assert leader_whole == early_whole == late_whole
    assert leader_whole.count(b"data: ") == 154 and leader_whole.endswith(b"data: [DONE]\n\n")
    assert calls(fake, CHAT) == 2
    assert metric(proxy, "llm_proxy_deduplicated_total") == 1


class _Burst:
    """A stream whose chunks are all there at once (reads never suspend): 3 x 2000 bytes."""

    def __init__(self) -> None:
        self.left = 3

    def __aiter__(self) -> _Burst:
        return self

    async def __anext__(self) -> bytes:
        if not self.left:
            raise StopAsyncIteration
        self.left -= 1
        return b"x" * 2000


async def test_a_waiter_that_finds_its_stream_past_the_bound_makes_its_own_call(
    make_proxy: ProxyFactory,
) -> None:
    """Two waiters of one flight: the first reads past the bound before the second gets to the
    log, which no longer has the first chunks: the second makes its own call, whole."""
    proxy = make_proxy({"cache": {"enabled": False, "max_entry_bytes": 1024}})
    identity = proxy.app[AUTH].identify({"Authorization": f"Bearer {KEY_A}"})
    call = proxy.app[DOOR].build_call(
        identity=identity, method="POST", path=CHAT, headers={}, body=b"{}", data=dict(STREAM)
    )
    sent = 0
    gate = asyncio.Event()

    async def upstream(_: Call) -> Reply:
        nonlocal sent
        sent += 1
        await gate.wait()
        return Reply(200, CIMultiDict({"Content-Type": "text/event-stream"}), stream=_Burst())

    stage = SingleFlight(cache=proxy.app[SETTINGS].cache, metrics=Metrics()).wrap(upstream)

    async def read() -> bytes:
        reply = await stage(call)
        assert reply.stream is not None
        try:
            return b"".join([chunk async for chunk in reply.stream])
        finally:
            await reply.aclose()

    waiters = [asyncio.create_task(read()) for _ in range(2)]
    await wait_until(lambda: sent == 1)
    gate.set()
    assert await asyncio.gather(*waiters) == [b"x" * 6000] * 2
    assert sent == 2
