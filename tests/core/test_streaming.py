"""Streams: chunks go out as they arrive, end as the upstream's did, and die with the client."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import orjson
import pytest

from tests.conftest import Fake, Proxy
from tests.support.live import BackgroundLoop

STREAM = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "one two three four five"}],
    "stream": True,
}


def gate(bg: BackgroundLoop, fake: Fake) -> asyncio.Event:
    def make() -> asyncio.Event:
        fake.state.stream_gate = asyncio.Event()
        return fake.state.stream_gate

    return bg.call(make)


async def wait_until(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_first_chunk_arrives_before_the_upstream_finishes(
    proxy: Proxy, fake: Fake, bg: BackgroundLoop
) -> None:
    event = gate(bg, fake)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{proxy.base_url}/chat/completions", json=STREAM) as resp:
            assert resp.status == 200
            # The upstream holds the rest of the stream until the gate opens: if the proxy
            # accumulated chunks, this read would never complete.
            first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
            assert first.startswith(b"data: {")
            assert fake.state.completed_streams == 0
            bg.loop.call_soon_threadsafe(event.set)
            rest = await resp.read()
    assert rest.endswith(b"data: [DONE]\n\n")


async def test_client_disconnect_cancels_the_upstream_request(
    proxy: Proxy, fake: Fake, bg: BackgroundLoop
) -> None:
    gate(bg, fake)  # never opened: the upstream stream stays open until cancelled
    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"{proxy.base_url}/chat/completions", json=STREAM)
        await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
        assert fake.state.in_flight == 1
        resp.close()  # the client goes away mid-stream
    await wait_until(lambda: fake.state.cancelled_streams == 1)
    assert fake.state.in_flight == 0
    assert fake.state.completed_streams == 0


async def test_chunk_gaps_are_preserved(proxy: Proxy, fake: Fake) -> None:
    fake.state.chunk_delay_ms = 30
    arrivals: list[float] = []
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{proxy.base_url}/chat/completions", json=STREAM) as resp:
            async for _ in resp.content.iter_any():
                arrivals.append(time.monotonic())
    # 1 role chunk + 5 words + final + [DONE], each written separately 30 ms apart: they must
    # reach the client as separate arrivals, not batched into one.
    assert len(arrivals) >= 6
    assert arrivals[-1] - arrivals[0] >= 0.1


async def test_upstream_breaking_mid_stream_ends_with_an_error_event(
    proxy: Proxy, fake: Fake, bg: BackgroundLoop
) -> None:
    gate(bg, fake)
    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"{proxy.base_url}/chat/completions", json=STREAM)
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
        # Stop the fake upstream: its open stream is cut without the final chunk.
        await asyncio.get_running_loop().run_in_executor(None, fake.live.stop)
        rest = await asyncio.wait_for(resp.read(), 5)
    # A cut stream must not look complete: no [DONE], and a last event in the OpenAI error
    # convention that the SDKs turn into an APIError.
    assert first.startswith(b"data: {")
    assert b"[DONE]" not in rest
    last = rest.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert last.startswith(b"data: ")
    error = orjson.loads(last[len(b"data: ") :])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "api_error" and error["message"]


async def test_sdk_raises_api_error_when_the_upstream_breaks_mid_stream(
    proxy: Proxy, fake: Fake, bg: BackgroundLoop
) -> None:
    gate(bg, fake)
    client = proxy.async_client()
    seen: list[str] = []
    with pytest.raises(openai.APIError) as info:
        stream = await client.chat.completions.create(**STREAM)  # type: ignore[call-overload]
        async for chunk in stream:
            seen.append(chunk.id)
            if len(seen) == 1:
                await asyncio.get_running_loop().run_in_executor(None, fake.live.stop)
    await client.close()
    assert seen, "the chunks sent before the break reach the client"
    assert not isinstance(info.value, openai.APIConnectionError)
    assert "upstream" in info.value.message.lower()
