"""Every recorded chat/completions stream carries usage, so it can answer a JSON request; each
client still gets exactly the stream it asked for (issue 13, item 2)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from proxy.cache.usage import without_usage
from proxy.keys import METRICS
from tests.cache.conftest import CHAT, post, wait_for
from tests.conftest import KEY_A, Fake, ProxyFactory
from tests.support.live import BackgroundLoop
from tests.support.redis_server import RedisServer

COMPLETIONS = "/v1/completions"
ASK = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "count my tokens"}]}
STREAM = {**ASK, "stream": True}
WITH_USAGE = {**STREAM, "stream_options": {"include_usage": True}}


@pytest.fixture(params=["memory", "redis"])
def config(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "memory":
        return {}
    return request.getfixturevalue("redis_proxy_config")  # type: ignore[no-any-return]


def _events(body: bytes) -> list[Any]:
    """The data of every event, parsed (``[DONE]`` as the string)."""
    out: list[Any] = []
    for block in body.split(b"\n\n"):
        if block.startswith(b"data: "):
            data = block[6:]
            out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


def _without_ids(events: list[Any]) -> list[Any]:
    # The fake derives ids from the request body, which differs once usage is asked for.
    return [{k: v for k, v in e.items() if k != "id"} if isinstance(e, dict) else e for e in events]


def _upstream_bodies(fake: Fake, path: str = CHAT) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in fake.state.requests if r.path == path]


def test_a_stream_without_usage_is_recorded_with_it(
    make_proxy: ProxyFactory, fake: Fake, config: dict[str, Any]
) -> None:
    direct = _events(post(fake.live.url, CHAT, STREAM).body)  # what the client asked for
    direct_json = post(fake.live.url, CHAT, ASK).json()
    fake.state.reset()
    proxy = make_proxy(config)
    first = post(proxy.url, CHAT, STREAM)
    assert first.cache == "MISS"
    sent = _upstream_bodies(fake)
    assert [b.get("stream_options") for b in sent] == [{"include_usage": True}]
    events = _events(first.body)
    assert events[-1] == "[DONE]"
    assert all("usage" not in e for e in events[:-1])  # neither the chunk nor the null fields
    assert _without_ids(events) == _without_ids(direct)
    as_json = post(proxy.url, CHAT, ASK)
    assert as_json.cache == "HIT"
    assert as_json.json()["usage"] == direct_json["usage"]
    assert as_json.json()["choices"][0]["message"] == direct_json["choices"][0]["message"]
    with_usage = post(proxy.url, CHAT, WITH_USAGE)
    assert with_usage.cache == "HIT"
    assert _events(with_usage.body)[-2]["usage"] == direct_json["usage"]
    again = post(proxy.url, CHAT, STREAM)
    assert again.cache == "HIT" and b'"usage"' not in again.body
    assert _without_ids(_events(again.body)) == _without_ids(direct)
    keys = {r.headers["x-cache-key"] for r in (first, as_json, with_usage, again)}
    assert len(keys) == 1  # asking for usage upstream did not change the key
    assert fake.state.calls[CHAT] == 1


def test_completions_streams_carry_usage_too(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy()
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "once upon", "stream": True}
    first = post(proxy.url, COMPLETIONS, body)
    assert first.cache == "MISS" and b'"usage"' not in first.body
    as_json = post(proxy.url, COMPLETIONS, {**body, "stream": False})
    assert as_json.cache == "HIT" and as_json.json()["usage"]["total_tokens"] > 0
    assert fake.state.calls[COMPLETIONS] == 1


def test_a_client_that_asks_for_usage_gets_its_request_unchanged(
    make_proxy: ProxyFactory, fake: Fake
) -> None:
    proxy = make_proxy()
    sent = json.dumps(WITH_USAGE).encode()
    answer = post(proxy.url, CHAT, sent)
    assert fake.state.requests[-1].body == sent
    usage = [e for e in _events(answer.body)[:-1] if e.get("usage")]
    assert len(usage) == 1 and usage[0]["choices"] == []


def test_include_usage_false_is_answered_without_usage(
    make_proxy: ProxyFactory, fake: Fake
) -> None:
    proxy = make_proxy()
    body = {**STREAM, "stream_options": {"include_usage": False}}
    answer = post(proxy.url, CHAT, body)
    assert b'"usage"' not in answer.body and answer.body.endswith(b"data: [DONE]\n\n")
    assert _upstream_bodies(fake)[-1]["stream_options"] == {"include_usage": True}
    assert post(proxy.url, CHAT, ASK).cache == "HIT"


def test_stream_usage_false_sends_the_body_as_it_came(make_proxy: ProxyFactory, fake: Fake) -> None:
    """For servers that refuse ``stream_options``: usage is never made up, so no cross hit."""
    upstream = {"name": "fake", "base_url": fake.url, "models": ["*"], "stream_usage": False}
    proxy = make_proxy({"upstreams": [upstream]})
    sent = json.dumps(STREAM).encode()
    assert post(proxy.url, CHAT, sent).cache == "MISS"
    assert fake.state.requests[-1].body == sent
    assert post(proxy.url, CHAT, ASK).cache == "MISS"
    assert post(proxy.url, CHAT, STREAM).cache == "HIT"
    assert fake.state.calls[CHAT] == 2


async def _stream(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> bytes:
    headers = {"Authorization": f"Bearer {KEY_A}"}
    async with session.post(f"{url}{CHAT}", json=body, headers=headers) as resp:
        assert resp.status == 200
        return await resp.read()


async def _new_event() -> asyncio.Event:
    return asyncio.Event()


async def _until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll until ``condition`` holds (bounded, so a broken proxy fails instead of hanging)."""
    deadline = asyncio.get_running_loop().time() + 10
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_coalesced_followers_each_get_their_own_form(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop
) -> None:
    """One upstream call serves a client without usage and one with it, each in its form."""
    proxy = make_proxy()
    gate = bg.run(_new_event())
    bg.call(lambda: setattr(fake.state, "stream_gate", gate))
    deduplicated = proxy.app[METRICS].deduplicated

    async def both() -> tuple[bytes, bytes, bytes]:
        async with aiohttp.ClientSession() as session:
            plain = asyncio.create_task(_stream(session, proxy.url, STREAM))
            await _until(lambda: _now(fake.state.calls[CHAT] == 1), "the first call")
            usage = asyncio.create_task(_stream(session, proxy.url, WITH_USAGE))
            plain_too = asyncio.create_task(_stream(session, proxy.url, STREAM))
            try:
                await _until(lambda: _now(deduplicated._value.get() == 2), "both to join")
            finally:
                gate.set()
            return await plain, await usage, await plain_too

    plain, usage, plain_too = bg.run(both())
    assert fake.state.calls[CHAT] == 1
    for body in (plain, plain_too):
        assert b'"usage"' not in body and body.endswith(b"data: [DONE]\n\n")
    with_usage = _events(usage)
    assert with_usage[-2]["choices"] == [] and with_usage[-2]["usage"]["total_tokens"] > 0
    assert all(e["usage"] is None for e in with_usage[:-2])
    assert _without_ids(_events(plain)) == _without_ids(
        [{k: v for k, v in e.items() if k != "usage"} for e in with_usage[:-2]] + ["[DONE]"]
    )


def test_across_replicas_each_client_gets_its_form(
    make_proxy: ProxyFactory,
    fake: Fake,
    bg: BackgroundLoop,
    redis_proxy_config: dict[str, Any],
    redis_server: RedisServer,
) -> None:
    """A stream without usage on one replica answers JSON and usage streams on another, and a
    client on the other replica that waited for the same call gets it without usage."""
    one, two = make_proxy(redis_proxy_config), make_proxy(redis_proxy_config)
    gate = bg.run(_new_event())
    bg.call(lambda: setattr(fake.state, "stream_gate", gate))
    redis = redis_server.client()

    def waiting() -> bool:
        return bool(redis.pubsub_channels("llmproxy:flight:*"))

    async def both() -> tuple[bytes, bytes]:
        async with aiohttp.ClientSession() as session:
            first = asyncio.create_task(_stream(session, one.url, STREAM))
            await _until(lambda: _now(fake.state.calls[CHAT] == 1), "the first call")
            second = asyncio.create_task(_stream(session, two.url, STREAM))
            try:
                await _until(lambda: asyncio.to_thread(waiting), "the other replica to wait")
            finally:
                gate.set()
            return await first, await second

    try:
        first, second = bg.run(both())
    finally:
        redis.close()
    assert fake.state.calls[CHAT] == 1
    for body in (first, second):
        assert b'"usage"' not in body and body.endswith(b"data: [DONE]\n\n")
    assert _without_ids(_events(first)) == _without_ids(_events(second))
    wait_for(lambda: post(two.url, CHAT, ASK).cache == "HIT", what="the stored stream")
    as_json = post(two.url, CHAT, ASK)
    assert as_json.json()["usage"]["total_tokens"] > 0
    assert post(one.url, CHAT, WITH_USAGE).cache == "HIT"
    assert fake.state.calls[CHAT] == 1


async def _now(value: bool) -> bool:
    return value


async def _chunks(pieces: list[bytes]) -> list[bytes]:
    async def source() -> Any:
        for piece in pieces:
            yield piece

    return [c async for c in without_usage(source())]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_the_filter_does_not_depend_on_chunk_boundaries(bg: BackgroundLoop, eol: bytes) -> None:
    sep = eol + eol
    head = b'{"id":"c","object":"chat.completion.chunk","choices":'
    stream = (
        b"data: " + head + b'[{"index":0,"delta":{"content":"hi"}}],"usage":null}' + sep
        + b"data: " + head + b'[],"usage":{"total_tokens":3}}' + sep
        + b"data: [DONE]" + sep
    )  # fmt: skip
    expected = b"data: " + head + b'[{"index":0,"delta":{"content":"hi"}}]}' + sep
    expected += b"data: [DONE]" + sep
    whole = bg.run(_chunks([stream]))
    bytewise = bg.run(_chunks([stream[i : i + 1] for i in range(len(stream))]))
    assert b"".join(whole) == b"".join(bytewise) == expected
    untouched = b'data: {"choices":[]}' + sep + b"data: [DONE]" + sep
    assert bg.run(_chunks([untouched])) == [untouched]  # no usage field: byte for byte
