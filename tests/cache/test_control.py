"""Per-request control (Cache-Control, X-Cache-TTL), TTLs, and what is never stored."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from bench.fake_upstream import Scripted
from tests.cache.conftest import CHAT, HELLO, post, wait_for
from tests.conftest import KEY_A, Fake, ProxyFactory
from tests.support.live import BackgroundLoop


def test_no_cache_skips_the_read_and_refreshes(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy()
    assert post(proxy.url, CHAT, HELLO).cache == "MISS"
    refreshed = post(proxy.url, CHAT, HELLO, headers={"Cache-Control": "no-cache"})
    assert refreshed.cache == "BYPASS"
    assert fake.state.calls[CHAT] == 2
    hit = post(proxy.url, CHAT, HELLO)
    assert hit.cache == "HIT"
    assert fake.state.calls[CHAT] == 2


def test_no_cache_replaces_the_entry(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop
) -> None:
    proxy = make_proxy()
    post(proxy.url, CHAT, HELLO)
    newer = {"id": "chatcmpl-newer", "object": "chat.completion", "choices": []}
    bg.call(lambda: fake.state.script.append(Scripted(200, newer, path=CHAT)))
    post(proxy.url, CHAT, HELLO, headers={"Cache-Control": "no-cache"})
    assert post(proxy.url, CHAT, HELLO).json()["id"] == "chatcmpl-newer"


def test_no_store_neither_reads_nor_writes(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy()
    post(proxy.url, CHAT, HELLO)  # stored
    bypass = post(proxy.url, CHAT, HELLO, headers={"Cache-Control": "no-store"})
    assert bypass.cache == "BYPASS" and bypass.status == 200
    other = {**HELLO, "messages": [{"role": "user", "content": "private"}]}
    assert post(proxy.url, CHAT, other, headers={"Cache-Control": "no-store"}).cache == "BYPASS"
    assert post(proxy.url, CHAT, other).cache == "MISS"  # was not written
    assert fake.state.calls[CHAT] == 4


def test_only_if_cached(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy()
    miss = post(proxy.url, CHAT, HELLO, headers={"Cache-Control": "only-if-cached"})
    assert miss.status == 504
    assert miss.json()["error"]["code"] == "not_cached"
    assert miss.cache == "MISS"
    assert fake.state.calls[CHAT] == 0
    post(proxy.url, CHAT, HELLO)
    hit = post(proxy.url, CHAT, HELLO, headers={"Cache-Control": "only-if-cached"})
    assert (hit.status, hit.cache) == (200, "HIT")
    assert fake.state.calls[CHAT] == 1


def test_max_age(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy()
    post(proxy.url, CHAT, HELLO)
    assert post(proxy.url, CHAT, HELLO, headers={"Cache-Control": "max-age=3600"}).cache == "HIT"
    # Any stored entry is older than 0 s: too old for this client, so it is fetched again.
    assert post(proxy.url, CHAT, HELLO, headers={"Cache-Control": "max-age=0"}).cache == "MISS"
    assert fake.state.calls[CHAT] == 2


def test_x_cache_ttl_sets_the_entry_lifetime(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy()
    assert post(proxy.url, CHAT, HELLO, headers={"X-Cache-TTL": "0.3"}).cache == "MISS"
    long_lived = {**HELLO, "messages": [{"role": "user", "content": "keep me"}]}
    post(proxy.url, CHAT, long_lived)
    wait_for(lambda: post(proxy.url, CHAT, HELLO).cache == "MISS", what="the 0.3 s entry to expire")
    assert post(proxy.url, CHAT, long_lived).cache == "HIT"


def test_route_ttl_from_config(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy({"cache": {"route_ttl_s": {"/v1/embeddings": 0.3}}})
    body = {"model": "text-embedding-3-small", "input": "short lived"}
    assert post(proxy.url, "/v1/embeddings", body).cache == "MISS"
    post(proxy.url, CHAT, HELLO)
    assert post(proxy.url, "/v1/embeddings", body).cache == "HIT"
    wait_for(lambda: post(proxy.url, "/v1/embeddings", body).cache == "MISS", what="expiry")
    assert post(proxy.url, CHAT, HELLO).cache == "HIT"  # the default TTL is an hour


@pytest.mark.parametrize("status", [400, 429, 500, 503])
def test_errors_are_not_stored(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop, status: int
) -> None:
    proxy = make_proxy()
    error = {"error": {"message": "nope", "type": "server_error", "param": None, "code": None}}
    bg.call(lambda: fake.state.script.append(Scripted(status, error, path=CHAT)))
    first = post(proxy.url, CHAT, HELLO)
    assert (first.status, first.cache) == (status, "MISS")
    second = post(proxy.url, CHAT, HELLO)
    assert (second.status, second.cache) == (200, "MISS")
    assert fake.state.calls[CHAT] == 2


def test_upstream_no_store_is_respected(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop
) -> None:
    proxy = make_proxy()
    answer = {"id": "chatcmpl-x", "object": "chat.completion", "choices": []}
    scripted = Scripted(200, answer, headers={"Cache-Control": "no-store"}, path=CHAT)
    bg.call(lambda: fake.state.script.append(scripted))
    assert post(proxy.url, CHAT, HELLO).cache == "MISS"
    assert post(proxy.url, CHAT, HELLO).cache == "MISS"
    assert fake.state.calls[CHAT] == 2


def test_upstream_stream_broken_off_is_not_stored(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop
) -> None:
    """A stream that ends without ``data: [DONE]`` is incomplete."""
    proxy = make_proxy()
    cut = b'data: {"id":"c","object":"chat.completion.chunk","choices":[]}\n\n'
    scripted = Scripted(200, cut, headers={"Content-Type": "text/event-stream"}, path=CHAT)
    bg.call(lambda: fake.state.script.append(scripted))
    body = {**HELLO, "stream": True}
    assert post(proxy.url, CHAT, body).body == cut
    second = post(proxy.url, CHAT, body)
    assert second.cache == "MISS" and second.body.endswith(b"data: [DONE]\n\n")
    assert post(proxy.url, CHAT, body).cache == "HIT"
    assert fake.state.calls[CHAT] == 2


def test_stream_the_client_left_is_not_stored(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop
) -> None:
    proxy = make_proxy()
    gate = bg.run(_new_event())
    bg.call(lambda: setattr(fake.state, "stream_gate", gate))
    body = {**HELLO, "stream": True}

    async def leave_early() -> None:
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": f"Bearer {KEY_A}"}
            async with session.post(
                f"{proxy.base_url}/chat/completions", json=body, headers=headers
            ) as resp:
                assert resp.headers["X-Cache"] == "MISS"
                await resp.content.readuntil(b"\n\n")  # the first event, then hang up

    bg.run(leave_early())
    wait_for(lambda: bg.call(lambda: fake.state.cancelled_streams) == 1, what="upstream cancel")
    bg.call(gate.set)
    again = post(proxy.url, CHAT, body)
    assert again.cache == "MISS"
    assert fake.state.calls[CHAT] == 2


async def _new_event() -> asyncio.Event:
    return asyncio.Event()


def test_only_deterministic(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy({"cache": {"only_deterministic": True}})
    sampled = {**HELLO, "temperature": 0.7}
    assert [post(proxy.url, CHAT, sampled).cache for _ in range(2)] == ["BYPASS", "BYPASS"]
    for body in ({**HELLO, "temperature": 0}, {**HELLO, "seed": 7}):
        assert [post(proxy.url, CHAT, body).cache for _ in range(2)] == ["MISS", "HIT"]
    embedding = {"model": "text-embedding-3-small", "input": "no sampling here"}
    assert [post(proxy.url, "/v1/embeddings", embedding).cache for _ in range(2)] == ["MISS", "HIT"]


def test_routes_outside_the_list_carry_no_cache_headers(make_proxy: ProxyFactory) -> None:
    proxy = make_proxy({"cache": {"routes": ["/v1/embeddings"]}})
    for _ in range(2):
        answer = post(proxy.url, CHAT, HELLO)
        assert answer.status == 200 and "x-cache" not in answer.headers


def test_metrics_count_hits_misses_bypasses(make_proxy: ProxyFactory) -> None:
    from proxy.keys import METRICS

    proxy = make_proxy()
    post(proxy.url, CHAT, HELLO)
    post(proxy.url, CHAT, HELLO)
    post(proxy.url, CHAT, HELLO)
    post(proxy.url, CHAT, HELLO, headers={"Cache-Control": "no-store"})
    metrics = proxy.app[METRICS]
    assert metrics.hit_rate() == pytest.approx(0.5)
    text = metrics.export().decode()
    assert 'llm_proxy_cache_hits_total{route="/v1/chat/completions"} 2.0' in text
    assert 'llm_proxy_cache_misses_total{route="/v1/chat/completions"} 1.0' in text
    assert 'llm_proxy_cache_bypasses_total{route="/v1/chat/completions"} 1.0' in text
    assert "llm_proxy_cache_stores_total 1.0" in text
    assert "llm_proxy_cache_entries 1.0" in text
    assert json.dumps(HELLO["messages"][0]["content"]) not in text


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_an_error_inside_a_2xx_answer_is_not_stored(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop, stream: bool
) -> None:
    """Some servers answer 200 with an error object, or send one mid-stream before ``[DONE]``."""
    proxy = make_proxy()
    error = {"error": {"message": "overloaded", "type": "server_error", "code": None}}
    if stream:
        chunk = {"id": "c", "object": "chat.completion.chunk", "choices": []}
        body = (
            b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in (chunk, error))
            + b"data: [DONE]\n\n"
        )
        scripted = Scripted(200, body, headers={"Content-Type": "text/event-stream"}, path=CHAT)
    else:
        scripted = Scripted(200, error, path=CHAT)
    bg.call(lambda: fake.state.script.append(scripted))
    request = {**HELLO, "stream": stream}
    assert post(proxy.url, CHAT, request).cache == "MISS"
    again = post(proxy.url, CHAT, request)
    assert again.cache == "MISS" and b"overloaded" not in again.body
    assert post(proxy.url, CHAT, request).cache == "HIT"  # a proper answer is stored
    assert fake.state.calls[CHAT] == 2
