"""Per-input embedding cache: only new inputs go upstream; answers assembled in caller order."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.coalesce.helpers import EMB, EMB_MODEL, metric
from tests.conftest import KEY_A, KEY_B, Fake, ProxyFactory

Answer = tuple[int, Any, dict[str, str]]


async def post(url: str, body: dict[str, Any], key: str = KEY_A, **headers: str) -> Answer:
    all_headers = {"Authorization": f"Bearer {key}", **headers}
    async with aiohttp.ClientSession(headers=all_headers) as session:
        async with session.post(f"{url}/embeddings", json=body) as resp:
            return resp.status, await resp.json(), dict(resp.headers)


def emb(value: Any) -> dict[str, Any]:
    return {"model": EMB_MODEL, "input": value, "encoding_format": "float"}


def config(**batching: Any) -> dict[str, Any]:
    return {"cache": {"enabled": True}, "batching": {"embeddings": {"max_wait_ms": 0, **batching}}}


async def test_only_new_inputs_go_upstream(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy(config())
    status, first, headers = await post(proxy.base_url, emb(["a", "b", "c"]))
    assert status == 200 and headers["X-Cache"] == "MISS"
    status, second, headers = await post(proxy.base_url, emb(["c", "d", "a"]))
    assert status == 200 and headers["X-Cache"] == "MISS"
    assert fake.state.inputs[EMB] == 4  # a, b, c, then only d
    _, want, _ = await post(fake.url, emb(["c", "d", "a"]))
    assert second["data"] == want["data"]
    assert second["usage"] == want["usage"]
    assert metric(proxy, "llm_proxy_cache_input_hits_total", route=EMB) == 2
    assert metric(proxy, "llm_proxy_cache_input_misses_total", route=EMB) == 4


async def test_all_inputs_seen_is_a_hit(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy(config())
    await post(proxy.base_url, emb(["one", "two words"]))
    calls_before = fake.state.calls[EMB]
    status, got, headers = await post(proxy.base_url, emb("two words"))
    assert status == 200 and headers["X-Cache"] == "HIT"
    assert fake.state.calls[EMB] == calls_before
    _, want, _ = await post(fake.url, emb("two words"))
    assert got["data"] == want["data"] and got["model"] == want["model"]
    assert got["usage"] == want["usage"]
    assert metric(proxy, "llm_proxy_cache_hits_total", route=EMB) == 1


async def test_new_inputs_of_several_callers_ride_one_call(
    make_proxy: ProxyFactory, fake: Fake
) -> None:
    proxy = make_proxy(config(max_wait_ms=10_000, max_batch_size=2))
    await post(proxy.base_url, emb(["seen 1", "seen 2"]))
    assert fake.state.calls[EMB] == 1
    outs = await asyncio.gather(
        post(proxy.base_url, emb(["seen 1", "new 1"])),
        post(proxy.base_url, emb(["new 2", "seen 2"])),
    )
    assert [o[0] for o in outs] == [200, 200]
    assert fake.state.calls[EMB] == 2 and fake.state.inputs[EMB] == 4
    _, want, _ = await post(fake.url, emb(["new 2", "seen 2"]))
    assert outs[1][1]["data"] == want["data"]


async def test_tenants_and_formats_do_not_share_inputs(
    make_proxy: ProxyFactory, fake: Fake
) -> None:
    proxy = make_proxy(config())
    await post(proxy.base_url, emb("shared text"), KEY_A)
    _, _, headers = await post(proxy.base_url, emb("shared text"), KEY_B)
    assert headers["X-Cache"] == "MISS"
    b64 = {**emb(["shared text", "x"]), "encoding_format": "base64"}
    status, got, headers = await post(proxy.base_url, b64, KEY_A)
    assert status == 200 and headers["X-Cache"] == "MISS"
    assert isinstance(got["data"][0]["embedding"], str)
    assert fake.state.inputs[EMB] == 4


async def test_no_store_and_no_cache_are_respected(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy(config())
    await post(proxy.base_url, emb(["p", "q"]), **{"Cache-Control": "no-store"})
    _, _, headers = await post(proxy.base_url, emb(["p", "r"]))
    assert headers["X-Cache"] == "MISS"
    assert fake.state.inputs[EMB] == 4  # nothing of the no-store call was kept
    await post(proxy.base_url, emb(["p", "s"]), **{"Cache-Control": "no-cache"})
    assert fake.state.inputs[EMB] == 6  # no-cache reads nothing...
    _, _, headers = await post(proxy.base_url, emb("s"))
    assert headers["X-Cache"] == "HIT"  # ...but stores what it got


async def test_x_cache_ttl_zero_stores_no_input(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy(config())
    await post(proxy.base_url, emb(["u", "v"]), **{"X-Cache-TTL": "0"})
    _, _, headers = await post(proxy.base_url, emb("u"))
    assert headers["X-Cache"] == "MISS"
    assert fake.state.inputs[EMB] == 3
