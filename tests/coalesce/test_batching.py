"""Micro-batching: merged calls, answers split back exactly, failures isolated, flush rules."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest

from bench.fake_upstream import Scripted
from proxy.keys import BATCHER
from tests.coalesce.helpers import (
    CMPL,
    CMPL_MODEL,
    EMB,
    EMB_MODEL,
    calls,
    metric,
    script,
    set_state,
    wait_until,
)
from tests.conftest import KEY_A, KEY_B, Fake, Proxy, ProxyFactory
from tests.support.live import BackgroundLoop

Answer = tuple[int, Any, dict[str, str]]


def batching(**route: Any) -> dict[str, Any]:
    """Cache off; both routes batched with ``route`` settings (a long window by default)."""
    settings = {"max_wait_ms": 10_000, **route}
    return {
        "cache": {"enabled": False},
        "batching": {"embeddings": settings, "completions": settings},
    }


async def post(url: str, body: dict[str, Any], key: str = KEY_A) -> Answer:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        async with session.post(url, json=body) as resp:
            return resp.status, await resp.json(), dict(resp.headers)


async def post_all(base: str, path: str, bodies: list[dict[str, Any]]) -> list[Answer]:
    return await asyncio.gather(*(post(base + path.removeprefix("/v1"), b) for b in bodies))


def emb(value: Any, **extra: Any) -> dict[str, Any]:
    return {"model": EMB_MODEL, "input": value, **extra}


async def test_every_input_form_is_merged_and_split_back(
    make_proxy: ProxyFactory, fake: Fake
) -> None:
    proxy = make_proxy(batching(max_batch_size=3))
    bodies = [emb("alpha"), emb(["beta", "gamma delta"]), emb([1, 2, 3]), emb([[4, 5], [6]])]
    outs = await post_all(proxy.base_url, EMB, bodies)
    direct = await post_all(fake.url, EMB, bodies)
    assert calls(fake, EMB) == 2 + 4  # one merged call per kind (text, tokens), then direct
    for (status, got, headers), (_, want, _) in zip(outs, direct, strict=True):
        assert status == 200
        assert got["data"] == want["data"]  # own items only, indices from 0
        assert got["model"] == want["model"] and got["object"] == "list"
        assert headers["X-Coalesced"] == "2"
    text_usage = [o[1]["usage"]["prompt_tokens"] for o in outs[:2]]
    token_usage = [o[1]["usage"]["prompt_tokens"] for o in outs[2:]]
    assert sum(text_usage) == 4  # the upstream's total for the merged text call
    assert token_usage == [3, 3]  # token arrays are counted exactly
    assert all(o[1]["usage"]["total_tokens"] == o[1]["usage"]["prompt_tokens"] for o in outs)
    assert metric(proxy, "llm_proxy_batches_total", route=EMB) == 2


async def test_sdk_callers_share_one_call(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy(batching(max_batch_size=10))
    texts = [f"text number {i}" for i in range(10)]
    async with proxy.async_client() as client:
        outs = await asyncio.gather(
            *(client.embeddings.create(model=EMB_MODEL, input=t) for t in texts)
        )
    assert calls(fake, EMB) == 1
    direct = proxy.client().embeddings.create(model=EMB_MODEL, input=texts)  # batch of one
    for i, out in enumerate(outs):
        assert [d.index for d in out.data] == [0]
        assert out.data[0].embedding == direct.data[i].embedding
    assert sum(o.usage.prompt_tokens for o in outs) == direct.usage.prompt_tokens


async def test_base64_and_float_are_never_merged(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy(batching(max_batch_size=2, max_wait_ms=200))
    async with proxy.async_client() as client:
        sdk, (status, raw, _) = await asyncio.gather(
            client.embeddings.create(model=EMB_MODEL, input="same text"),  # base64 on the wire
            post(f"{proxy.base_url}/embeddings", emb("other text")),  # floats
        )
    assert status == 200 and isinstance(raw["data"][0]["embedding"], list)
    assert len(sdk.data[0].embedding) == 8
    assert calls(fake, EMB) == 2
    formats = sorted(str(r.body.count(b"base64")) for r in fake.state.requests)
    assert formats == ["0", "1"]


async def test_completions_with_n_split_by_prompt(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy(batching(max_batch_size=3))
    bodies = [
        {"model": CMPL_MODEL, "prompt": "one two", "n": 2, "max_tokens": 5},
        {"model": CMPL_MODEL, "prompt": ["three", "four five six"], "n": 2, "max_tokens": 5},
    ]
    outs = await post_all(proxy.base_url, CMPL, bodies)
    assert calls(fake, CMPL) == 1
    direct = await post_all(fake.url, CMPL, bodies)
    for (status, got, headers), (_, want, _) in zip(outs, direct, strict=True):
        assert status == 200
        assert [c["text"] for c in got["choices"]] == [c["text"] for c in want["choices"]]
        assert [c["index"] for c in got["choices"]] == list(range(len(want["choices"])))
        assert got["object"] == "text_completion" and got["model"] == want["model"]
        assert headers["X-Coalesced"] == "2"
    merged = {**bodies[0], "prompt": ["one two", "three", "four five six"]}
    _, total, _ = await post(f"{fake.url}/completions", merged)
    for field in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert sum(o[1]["usage"][field] for o in outs) == total["usage"][field]


async def test_one_bad_input_fails_alone(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy(batching(max_batch_size=20))
    bodies = [emb(f"fine input {i}") for i in range(19)] + [emb("this one is TOO_LONG")]
    outs = await post_all(proxy.base_url, EMB, bodies)
    assert [o[0] for o in outs] == [200] * 19 + [400]
    assert outs[-1][1]["error"]["code"] == "context_length_exceeded"
    assert calls(fake, EMB) == 1 + 20  # the merged call, then each member alone
    for i, (_, body, _) in enumerate(outs[:19]):
        _, want, _ = await post(f"{fake.url}/embeddings", bodies[i])
        assert body["data"] == want["data"]


async def test_server_error_answers_every_member(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop
) -> None:
    proxy = make_proxy(batching(max_batch_size=3))
    error = {"error": {"message": "boom", "type": "server_error", "code": None}}
    script(bg, fake, Scripted(500, error, path=EMB))
    outs = await post_all(proxy.base_url, EMB, [emb(f"x{i}") for i in range(3)])
    assert [o[0] for o in outs] == [500] * 3
    assert all(o[1] == error for o in outs)
    assert calls(fake, EMB) == 1


async def test_a_full_batch_goes_at_once(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy(batching(max_batch_size=4))  # the window (10 s) never ends in this test
    start = time.monotonic()
    outs = await post_all(proxy.base_url, EMB, [emb(f"item {i}") for i in range(8)])
    assert time.monotonic() - start < 5
    assert [o[0] for o in outs] == [200] * 8
    assert calls(fake, EMB) == 2
    assert metric(proxy, "llm_proxy_batch_size_count", route=EMB) == 2
    assert metric(proxy, "llm_proxy_batch_size_sum", route=EMB) == 8


async def test_token_budget_closes_a_batch(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy(batching(max_batch_size=64, max_batch_tokens=6))
    outs = await post_all(proxy.base_url, EMB, [emb([i, 2, 3]) for i in range(4)])
    assert [o[0] for o in outs] == [200] * 4
    assert calls(fake, EMB) == 2


async def test_window_ends_a_partial_batch(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy(batching(max_wait_ms=200))
    start = time.monotonic()
    outs = await post_all(proxy.base_url, EMB, [emb(f"item {i}") for i in range(3)])
    assert time.monotonic() - start >= 0.2
    assert [o[0] for o in outs] == [200] * 3
    assert calls(fake, EMB) == 1


async def test_window_strategy_waits_even_when_full(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy(batching(strategy="window", max_batch_size=2, max_wait_ms=300))
    start = time.monotonic()
    outs = await post_all(proxy.base_url, EMB, [emb(f"item {i}") for i in range(4)])
    assert time.monotonic() - start >= 0.3
    assert [o[0] for o in outs] == [200] * 4
    assert calls(fake, EMB) == 2


async def test_size_strategy_sends_after_an_idle_bound(
    make_proxy: ProxyFactory, fake: Fake
) -> None:
    proxy = make_proxy(batching(strategy="size", max_batch_size=64, max_wait_ms=200))
    start = time.monotonic()
    outs = await post_all(proxy.base_url, EMB, [emb(f"item {i}") for i in range(3)])
    assert time.monotonic() - start >= 0.2
    assert [o[0] for o in outs] == [200] * 3
    assert calls(fake, EMB) == 1


async def test_zero_wait_passes_single_calls_through_unchanged(
    make_proxy: ProxyFactory, fake: Fake
) -> None:
    proxy = make_proxy(batching(max_wait_ms=0))
    body = emb(["a b", "c"], dimensions=4)
    status, got, headers = await post(f"{proxy.base_url}/embeddings", body)
    _, want, _ = await post(f"{fake.url}/embeddings", body)
    assert status == 200 and got == want and "X-Coalesced" not in headers
    assert fake.state.requests[0].body == fake.state.requests[1].body


async def test_a_caller_that_leaves_its_batch_harms_no_one(
    make_proxy: ProxyFactory, fake: Fake
) -> None:
    proxy = make_proxy(batching(max_wait_ms=400))
    url = f"{proxy.base_url}/embeddings"
    tasks = [asyncio.create_task(post(url, emb(f"item {i}"))) for i in range(3)]
    batcher = proxy.app[BATCHER]
    assert batcher is not None
    await wait_until(lambda: batcher.waiting == 3)  # type: ignore[attr-defined]
    tasks[0].cancel()
    outs = await asyncio.gather(*tasks[1:])
    assert [o[0] for o in outs] == [200, 200]
    assert fake.state.inputs[EMB] == 2  # the leaver's input was never sent


async def test_a_caller_that_leaves_in_flight_harms_no_one(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop
) -> None:
    proxy = make_proxy(batching(max_batch_size=3))
    set_state(bg, fake, latency_ms=300)
    url = f"{proxy.base_url}/embeddings"
    tasks = [asyncio.create_task(post(url, emb(f"item {i}"))) for i in range(3)]
    await wait_until(lambda: fake.state.in_flight == 1)
    tasks[0].cancel()
    outs = await asyncio.gather(*tasks[1:])
    assert [o[0] for o in outs] == [200, 200]
    assert [o[1]["data"][0]["index"] for o in outs] == [0, 0]
    assert calls(fake, EMB) == 1


@pytest.mark.parametrize(
    "config",
    [
        {"batching": {"embeddings": {"enabled": False}}},
        {"batching": {"enabled": False}},
    ],
)
async def test_batching_can_be_switched_off(
    make_proxy: ProxyFactory, fake: Fake, config: dict[str, Any]
) -> None:
    proxy = make_proxy({"cache": {"enabled": False}, **config})
    outs = await post_all(proxy.base_url, EMB, [emb(f"item {i}") for i in range(3)])
    assert [o[0] for o in outs] == [200] * 3
    assert calls(fake, EMB) == 3


async def test_per_upstream_switch_and_tenants(make_proxy: ProxyFactory, fake: Fake) -> None:
    upstream = {"name": "fake", "base_url": fake.url, "models": ["*"], "batching": False}
    off = make_proxy({**batching(max_batch_size=2, max_wait_ms=100), "upstreams": [upstream]})
    outs = await post_all(off.base_url, EMB, [emb("a"), emb("b")])
    assert [o[0] for o in outs] == [200, 200] and calls(fake, EMB) == 2
    on = make_proxy(batching(max_batch_size=2, max_wait_ms=100))
    url = f"{on.base_url}/embeddings"
    outs = await asyncio.gather(post(url, emb("a"), KEY_A), post(url, emb("b"), KEY_B))
    assert [o[0] for o in outs] == [200, 200] and calls(fake, EMB) == 4


async def test_efficiency_is_estimated(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop
) -> None:
    proxy: Proxy = make_proxy(batching(max_batch_size=4, max_wait_ms=50))
    set_state(bg, fake, latency_ms=20, per_input_ms=2)
    for size in (1, 2, 4, 4):
        await post_all(proxy.base_url, EMB, [emb(f"item {size} {i}") for i in range(size)])
    efficiency = metric(proxy, "llm_proxy_batch_efficiency", route=EMB)
    assert 1.5 < efficiency < 4.5  # four requests alone take about 3x their batch of four


async def test_shared_cache_never_sends_an_input_with_another_clients_key(
    make_proxy: ProxyFactory, fake: Fake
) -> None:
    """Passthrough auth: with ``cache.shared`` the answers may be shared, the key may not."""
    config = batching(max_batch_size=4, max_wait_ms=200)
    proxy = make_proxy({**config, "cache": {"enabled": False, "shared": True}})
    url = f"{proxy.base_url}/embeddings"
    outs = await asyncio.gather(
        post(url, emb("from a"), KEY_A), post(url, emb("from b"), KEY_B), post(url, emb("a2"))
    )
    assert [o[0] for o in outs] == [200] * 3
    assert calls(fake, EMB) == 2  # A's two calls merged; B's went with its own key
    for request in fake.state.requests:
        sent = request.body.decode()
        key = KEY_B if "from b" in sent else KEY_A
        assert request.headers["Authorization"] == f"Bearer {key}"


async def test_account_headers_and_query_split_batches(
    make_proxy: ProxyFactory, fake: Fake
) -> None:
    proxy = make_proxy(batching(max_batch_size=4, max_wait_ms=200))
    url = f"{proxy.base_url}/embeddings"

    async def send(text: str, query: str = "", **headers: str) -> int:
        all_headers = {"Authorization": f"Bearer {KEY_A}", **headers}
        async with aiohttp.ClientSession(headers=all_headers) as session:
            async with session.post(url + query, json=emb(text)) as resp:
                return resp.status

    statuses = await asyncio.gather(
        send("one", **{"OpenAI-Organization": "org-1"}),
        send("two", **{"OpenAI-Organization": "org-2"}),
        send("three", **{"OpenAI-Project": "proj-1"}),
        send("four", query="?api-version=1"),
        send("five"),
        send("six"),
    )
    assert statuses == [200] * 6
    assert calls(fake, EMB) == 5  # only the two plain calls merged
    sent = {orjson.dumps(orjson.loads(r.body)["input"]): r.headers for r in fake.state.requests}
    assert sent[b'"one"']["OpenAI-Organization"] == "org-1"
    assert sent[b'"two"']["OpenAI-Organization"] == "org-2"


async def test_merged_completions_count_each_callers_tokens_exactly_from_logprobs(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop
) -> None:
    """Issue 13 item 8: with ``logprobs`` each choice lists its tokens, so every caller's
    ``completion_tokens`` is what it would have been alone (not a share by words)."""
    proxy = make_proxy(batching(max_batch_size=2))

    def choice(index: int, text: str, tokens: list[str]) -> dict[str, Any]:
        logprobs = {"tokens": tokens, "token_logprobs": [-0.5] * len(tokens)}
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": "stop"}

    merged = {
        "id": "cmpl-merged",
        "object": "text_completion",
        "created": 1,
        "model": CMPL_MODEL,
        "choices": [
            choice(0, "well said indeed", [" well said", " indeed"]),
            choice(1, "ok", list("ok!")),
        ],
        "usage": {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7},
    }
    script(bg, fake, Scripted(200, merged, path=CMPL))
    bodies = [
        {"model": CMPL_MODEL, "prompt": [11], "logprobs": 1},
        {"model": CMPL_MODEL, "prompt": [12], "logprobs": 1},
    ]
    outs = await post_all(proxy.base_url, CMPL, bodies)
    assert calls(fake, CMPL) == 1
    usages = [o[1]["usage"] for o in outs]
    assert usages == [
        {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
    ]
