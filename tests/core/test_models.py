"""``GET /v1/models`` merged across upstreams, and ``GET /v1/models/{model}`` routed by model."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from bench.fake_upstream import Scripted, create_fake_upstream
from tests.conftest import KEY_A, KEY_B, Fake, ProxyFactory
from tests.support import http
from tests.support.live import BackgroundLoop, LiveApp
from tests.support.redis_server import free_port

A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}


class Held:
    """An upstream whose model list waits, for the keys in ``hold``, until ``release``."""

    def __init__(self, bg: BackgroundLoop, hold: set[str]) -> None:
        self.bg = bg
        self.hold = {f"Bearer {key}" for key in hold}
        self.hits: list[str] = []
        self._released = asyncio.Event()
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        self.live = LiveApp(bg, app).start()

    @property
    def url(self) -> str:
        return f"{self.live.url}/v1"

    async def _models(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        self.hits.append(auth)
        if auth in self.hold:
            await self._released.wait()
        body = {"object": "list", "data": [{"id": "held-model", "object": "model"}]}
        return web.json_response(body)

    def release(self) -> None:
        self.bg.call(self._released.set)


@pytest.fixture
def held(bg: BackgroundLoop) -> Iterator[Callable[..., Held]]:
    started: list[Held] = []

    def make(hold: set[str]) -> Held:
        upstream = Held(bg, hold)
        started.append(upstream)
        return upstream

    yield make
    for upstream in started:
        upstream.release()
        upstream.live.stop()


def two(fake: Fake, other_url: str, **routing: Any) -> dict[str, Any]:
    return {
        "upstreams": [
            {"name": "a", "base_url": other_url, "models": ["held-*"]},
            {"name": "b", "base_url": fake.url, "models": ["*"]},
        ],
        "routing": routing,
    }


async def until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` (bounded by the test timeout), polling."""
    while not condition():
        await asyncio.sleep(0.01)


async def fetch(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> Any:
    async with session.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_a_hung_listing_of_one_tenant_does_not_block_another(
    make_proxy: ProxyFactory, fake: Fake, held: Callable[..., Held]
) -> None:
    upstream = held({KEY_A})
    proxy = make_proxy(two(fake, upstream.url))
    url = f"{proxy.base_url}/models"
    async with aiohttp.ClientSession() as session:
        stuck = asyncio.create_task(fetch(session, url, A))
        await until(lambda: upstream.hits == [f"Bearer {KEY_A}"])
        async with asyncio.timeout(5):
            listed = await fetch(session, url, B)
        assert "held-model" in [m["id"] for m in listed["data"]]
        assert not stuck.done()
        stuck.cancel()


async def test_concurrent_callers_of_one_tenant_share_one_listing(
    make_proxy: ProxyFactory, fake: Fake, held: Callable[..., Held]
) -> None:
    upstream = held({KEY_A})
    # No cache: only sharing the listing in flight can spare the second call.
    proxy = make_proxy(two(fake, upstream.url, models_cache_s=0))
    url = f"{proxy.base_url}/models"
    runner = proxy.live.runner
    assert runner is not None and runner.server is not None
    server = runner.server
    async with aiohttp.ClientSession() as session:
        first = asyncio.create_task(fetch(session, url, A))
        await until(lambda: len(upstream.hits) == 1)
        second = asyncio.create_task(fetch(session, url, A))
        await until(lambda: server.requests_count >= 2)
        upstream.release()
        answers = await asyncio.gather(first, second)
    assert answers[0] == answers[1]
    assert len(upstream.hits) == 1
    assert fake.state.calls["/v1/models"] == 1


@pytest.fixture
def other_fake(bg: BackgroundLoop) -> Iterator[Fake]:
    live = LiveApp(bg, create_fake_upstream()).start()
    yield Fake(live)
    live.stop()


def test_when_every_upstream_refuses_the_first_refusal_is_relayed(
    make_proxy: ProxyFactory, fake: Fake, other_fake: Fake
) -> None:
    refusal = {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}
    for _ in range(2):
        fake.state.script.append(
            Scripted(
                401, refusal, {"Content-Type": "application/json; charset=utf-8"}, "/v1/models"
            )
        )
        other_fake.state.script.append(
            Scripted(403, {"error": {"message": "no"}}, path="/v1/models")
        )
    proxy = make_proxy(
        {
            "upstreams": [
                {"name": "gone", "base_url": f"http://127.0.0.1:{free_port()}/v1"},
                {"name": "b", "base_url": fake.url},
                {"name": "c", "base_url": other_fake.url},
            ],
            "routing": {"default_upstream": "b"},
        }
    )
    # The SDK sees why: a bad key is a 401, not a proxy failure.
    with pytest.raises(openai.AuthenticationError) as info:
        proxy.client().models.list()
    assert info.value.status_code == 401
    raw = http.get(f"{proxy.base_url}/models", A)
    assert raw.status == 401 and raw.json() == refusal
    assert raw.headers["content-type"] == "application/json; charset=utf-8"


def test_no_answer_from_any_upstream_is_a_502(make_proxy: ProxyFactory) -> None:
    proxy = make_proxy(
        {
            "upstreams": [
                {"name": "x", "base_url": f"http://127.0.0.1:{free_port()}/v1"},
                {"name": "y", "base_url": f"http://127.0.0.1:{free_port()}/v1"},
            ],
            "routing": {"default_upstream": "x"},
        }
    )
    raw = http.get(f"{proxy.base_url}/models", A)
    assert raw.status == 502 and raw.json()["error"]["type"] == "api_error"


def test_a_partial_list_is_not_cached(make_proxy: ProxyFactory, fake: Fake) -> None:
    gone = f"http://127.0.0.1:{free_port()}/v1"
    proxy = make_proxy(two(fake, gone, default_upstream="b"))
    for _ in range(2):
        raw = http.get(f"{proxy.base_url}/models", A)
        assert raw.status == 200
        assert [m["id"] for m in raw.json()["data"]] == fake.state.models
    assert fake.state.calls["/v1/models"] == 2


def test_entries_without_a_string_id_are_skipped(make_proxy: ProxyFactory, fake: Fake) -> None:
    listed = {"object": "list", "data": [{"id": ["x"]}, {"id": 7}, "text", {"id": "odd-one"}]}
    fake.state.script.append(Scripted(200, listed, path="/v1/models"))
    proxy = make_proxy(two(fake, fake.url, default_upstream="b"))
    raw = http.get(f"{proxy.base_url}/models", A)
    assert raw.status == 200, raw.body
    ids = [m["id"] for m in raw.json()["data"]]
    assert sorted(ids) == sorted([*fake.state.models, "odd-one"])


def split(fake: Fake, other_fake: Fake, **routing: Any) -> dict[str, Any]:
    return {
        "upstreams": [
            {"name": "chat", "base_url": fake.url, "models": ["gpt-*"]},
            {"name": "emb", "base_url": other_fake.url, "models": ["text-*", "org/*"]},
        ],
        "routing": routing,
    }


def test_retrieve_asks_the_upstream_that_serves_the_model(
    make_proxy: ProxyFactory, fake: Fake, other_fake: Fake
) -> None:
    proxy = make_proxy(split(fake, other_fake, default_upstream="chat"))
    model = proxy.client().models.retrieve("text-embedding-3-small")
    assert model.id == "text-embedding-3-small"
    seen = other_fake.state.requests[-1]
    assert seen.path == "/v1/models/text-embedding-3-small"
    assert seen.headers["Authorization"] == f"Bearer {KEY_A}"
    assert fake.state.calls == {}


def test_retrieve_an_alias_answers_with_its_target(
    make_proxy: ProxyFactory, fake: Fake, other_fake: Fake
) -> None:
    proxy = make_proxy(split(fake, other_fake, model_aliases={"fast": "text-embedding-3-small"}))
    assert proxy.client().models.retrieve("fast").id == "text-embedding-3-small"
    assert other_fake.state.requests[-1].path == "/v1/models/text-embedding-3-small"


def test_retrieve_keeps_slashes_in_ids_and_refuses_dot_segments(
    make_proxy: ProxyFactory, fake: Fake, other_fake: Fake
) -> None:
    other_fake.state.models.append("org/llama-3")
    proxy = make_proxy(split(fake, other_fake))
    raw = http.get(f"{proxy.base_url}/models/org/llama-3", A)
    assert raw.status == 200 and raw.json()["id"] == "org/llama-3"
    for path in ("org/../../files", "org/%2E%2E/x", "org//x", "..%5Cx", "org%2F..%2Fx"):
        assert http.get(f"{proxy.base_url}/models/{path}", A).status == 400
    assert other_fake.state.calls["/v1/models/org/llama-3"] == 1
    assert sum(other_fake.state.calls.values()) == 1


def test_retrieve_of_a_model_nobody_serves_is_an_openai_404(
    make_proxy: ProxyFactory, fake: Fake, other_fake: Fake
) -> None:
    proxy = make_proxy(split(fake, other_fake))
    with pytest.raises(openai.NotFoundError) as info:
        proxy.client().models.retrieve("claude-3")
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found"
    assert fake.state.calls == {} and other_fake.state.calls == {}
