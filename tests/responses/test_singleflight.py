"""Identical ``/v1/responses`` requests in flight share one upstream call, streams included;
background requests never do."""

from __future__ import annotations

import asyncio

import pytest

from tests.coalesce.helpers import set_state
from tests.conftest import Fake, Proxy, ProxyFactory
from tests.support.live import BackgroundLoop

PATH = "/v1/responses"
MODEL = "gpt-4o-mini"


@pytest.fixture
def proxy(make_proxy: ProxyFactory) -> Proxy:
    """Cache off: without single flight every request would reach the upstream."""
    return make_proxy({"cache": {"enabled": False}})


async def test_twenty_identical_requests_make_one_upstream_call(
    proxy: Proxy, fake: Fake, bg: BackgroundLoop
) -> None:
    set_state(bg, fake, latency_ms=300)
    async with proxy.async_client() as client:
        outs = await asyncio.gather(
            *(
                client.responses.with_raw_response.create(model=MODEL, input="all at once")
                for _ in range(20)
            )
        )
    assert fake.state.calls[PATH] == 1
    assert {o.content for o in outs} == {outs[0].content}
    assert {o.headers["x-coalesced"] for o in outs} == {"20"}
    assert outs[0].parse().output_text == "echo: all at once"


async def test_twenty_identical_streams_make_one_upstream_call(
    proxy: Proxy, fake: Fake, bg: BackgroundLoop
) -> None:
    set_state(bg, fake, latency_ms=300)
    async with proxy.async_client() as client:

        async def one() -> tuple[list[str], str]:
            async with client.responses.stream(model=MODEL, input="streamed together") as s:
                types = [event.type async for event in s]
                final = await s.get_final_response()
            return types, final.output_text

        outs = await asyncio.gather(*(one() for _ in range(20)))
    assert fake.state.calls[PATH] == 1
    assert {text for _, text in outs} == {"echo: streamed together"}
    assert len({tuple(types) for types, _ in outs}) == 1
    assert outs[0][0][-1] == "response.completed"


async def test_background_requests_are_not_shared(
    proxy: Proxy, fake: Fake, bg: BackgroundLoop
) -> None:
    set_state(bg, fake, latency_ms=300)
    async with proxy.async_client() as client:
        outs = await asyncio.gather(
            *(
                client.responses.with_raw_response.create(
                    model=MODEL, input="each its own", background=True
                )
                for _ in range(3)
            )
        )
    assert fake.state.calls[PATH] == 3
    assert all("x-coalesced" not in o.headers for o in outs)


async def test_cached_route_coalesces_misses_too(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop
) -> None:
    proxy = make_proxy({})
    set_state(bg, fake, latency_ms=300)
    async with proxy.async_client() as client:
        outs = await asyncio.gather(
            *(
                client.responses.with_raw_response.create(model=MODEL, input="cold cache")
                for _ in range(20)
            )
        )
        again = await client.responses.with_raw_response.create(model=MODEL, input="cold cache")
    assert fake.state.calls[PATH] == 1
    assert {o.headers["x-cache"] for o in outs} == {"MISS"}
    assert again.headers["x-cache"] == "HIT"
