"""Hits and misses through the ``openai`` SDK on every cached route, in both forms and across
forms (stream stored -> JSON hit, JSON stored -> stream hit), on the memory and Redis backends."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cache.conftest import CHAT, http_chunks, post
from tests.conftest import Fake, ProxyFactory
from tests.support.live import BackgroundLoop

MESSAGES = [{"role": "user", "content": "tell me about caches"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.fixture(params=["memory", "redis"])
def config(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "memory":
        return {}
    return request.getfixturevalue("redis_proxy_config")  # type: ignore[no-any-return]


def test_every_route_hits_on_repeat(make_proxy: ProxyFactory, fake: Fake, config: dict) -> None:
    client = make_proxy(config).client()
    calls = [
        lambda: client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES
        ),
        lambda: client.completions.with_raw_response.create(
            model="gpt-3.5-turbo-instruct", prompt="say hi"
        ),
        lambda: client.embeddings.with_raw_response.create(
            model="text-embedding-3-small", input=["a", "b"]
        ),
        lambda: client.moderations.with_raw_response.create(input="be nice"),
    ]
    for make in calls:
        first, second = make(), make()
        assert first.headers["x-cache"] == "MISS"
        assert second.headers["x-cache"] == "HIT"
        assert first.headers["x-cache-key"] == second.headers["x-cache-key"]
        assert int(second.headers["age"]) >= 0
        assert second.headers["x-upstream-request-id"] == first.headers["x-upstream-request-id"]
        assert second.content == first.content  # byte for byte
        assert second.parse() == first.parse()
    assert sum(fake.state.calls.values()) == 4


def test_hit_is_byte_for_byte_the_upstream_answer(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy()
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    direct = post(fake.live.url, CHAT, body)
    miss = post(proxy.url, CHAT, body)
    hit = post(proxy.url, CHAT, body)
    assert (miss.cache, hit.cache) == ("MISS", "HIT")
    assert direct.body == miss.body == hit.body
    assert hit.headers["content-type"] == direct.headers["content-type"]
    assert "age" in hit.headers and "age" not in miss.headers


def test_stream_replay_keeps_bytes_and_chunk_boundaries(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop, config: dict
) -> None:
    proxy = make_proxy(config)

    def pace() -> None:  # the upstream's events then reach the proxy as separate reads
        fake.state.chunk_delay_ms = 5

    bg.call(pace)
    # (Asked as recorded: a client that did not ask for usage gets the stream without it.)
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    body["stream_options"] = {"include_usage": True}
    _, direct = http_chunks(bg, f"{fake.url}/chat/completions", body)
    miss_headers, miss = http_chunks(bg, f"{proxy.base_url}/chat/completions", body)
    hit_headers, hit = http_chunks(bg, f"{proxy.base_url}/chat/completions", body)
    assert (miss_headers["x-cache"], hit_headers["x-cache"]) == ("MISS", "HIT")
    assert len(miss) > 3  # not one big chunk
    assert hit == miss  # the same chunks, in the same boundaries
    assert b"".join(hit) == b"".join(direct)
    assert hit_headers["content-type"].startswith("text/event-stream")
    assert fake.state.calls[CHAT] == 2  # direct + the one miss


def _fold(parsed: Any, stream: bool) -> dict[str, Any]:
    """What an application reads from either form: content, tool calls, finish, usage."""
    if not stream:
        choice = parsed.choices[0]
        calls = [
            (t.id, t.function.name, t.function.arguments) for t in choice.message.tool_calls or []
        ]
        usage = parsed.usage.model_dump() if parsed.usage else None
        return {
            "id": parsed.id,
            "content": choice.message.content,
            "tools": calls,
            "finish": choice.finish_reason,
            "usage": usage,
        }
    content, finish, usage, tools, ident = None, None, None, {}, None
    for chunk in parsed:
        ident = chunk.id
        usage = chunk.usage.model_dump() if chunk.usage else usage
        for choice in chunk.choices:
            if choice.delta.content is not None:
                content = (content or "") + choice.delta.content
            for t in choice.delta.tool_calls or []:
                slot = tools.setdefault(t.index, [None, "", ""])
                slot[0] = t.id or slot[0]
                slot[1] += (t.function.name or "") if t.function else ""
                slot[2] += (t.function.arguments or "") if t.function else ""
            finish = choice.finish_reason or finish
    return {
        "id": ident,
        "content": content,
        "tools": [tuple(v) for _, v in sorted(tools.items())],
        "finish": finish,
        "usage": usage,
    }


@pytest.mark.parametrize("tools", [False, True], ids=["text", "tool-call"])
def test_stream_stored_then_json_hit(
    make_proxy: ProxyFactory, fake: Fake, config: dict, tools: bool
) -> None:
    client = make_proxy(config).client()
    extra: dict[str, Any] = {}
    if tools:
        extra = {"tools": TOOLS, "messages": [{"role": "user", "content": "weather in Paris?"}]}
    tag, original = _chat_any(client, stream=True, usage=True, **extra)
    expected = _fold(original, stream=True)
    tag2, again = _chat_any(client, stream=False, usage=False, **extra)
    assert (tag, tag2) == ("MISS", "HIT")
    assert _fold(again, stream=False) == expected
    assert expected["usage"] is not None
    assert (expected["finish"] == "tool_calls") is tools
    assert fake.state.calls[CHAT] == 1


@pytest.mark.parametrize("usage", [False, True], ids=["no-usage", "usage"])
@pytest.mark.parametrize("tools", [False, True], ids=["text", "tool-call"])
def test_json_stored_then_stream_hit(
    make_proxy: ProxyFactory, fake: Fake, config: dict, tools: bool, usage: bool
) -> None:
    client = make_proxy(config).client()
    extra: dict[str, Any] = {}
    if tools:
        extra = {"tools": TOOLS, "messages": [{"role": "user", "content": "weather in Paris?"}]}
    tag, original = _chat_any(client, stream=False, usage=False, **extra)
    expected = _fold(original, stream=False)
    tag2, again = _chat_any(client, stream=True, usage=usage, **extra)
    assert (tag, tag2) == ("MISS", "HIT")
    got = _fold(again, stream=True)
    assert got == {**expected, "usage": expected["usage"] if usage else None}
    assert fake.state.calls[CHAT] == 1


def _chat_any(client: Any, *, stream: bool, usage: bool, **extra: Any) -> tuple[str, Any]:
    messages = extra.pop("messages", MESSAGES)
    options = {"stream_options": {"include_usage": True}} if stream and usage else {}
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=messages, stream=stream, **options, **extra
    )
    return raw.headers["x-cache"], raw.parse()


def test_stream_with_usage_serves_a_stream_without(make_proxy: ProxyFactory, fake: Fake) -> None:
    client = make_proxy().client()
    tag, original = _chat_any(client, stream=True, usage=True)
    expected = _fold(original, stream=True)
    tag2, again = _chat_any(client, stream=True, usage=False)
    assert (tag, tag2) == ("MISS", "HIT")
    assert _fold(again, stream=True) == {**expected, "usage": None}
    assert fake.state.calls[CHAT] == 1


def test_stream_without_usage_cannot_answer_for_usage(make_proxy: ProxyFactory, fake: Fake) -> None:
    """Usage cannot be made up: with an upstream that is not asked for it in streams
    (``stream_usage: false``), a JSON request goes upstream, and its answer serves both."""
    upstream = {"name": "fake", "base_url": fake.url, "models": ["*"], "stream_usage": False}
    client = make_proxy({"upstreams": [upstream]}).client()
    assert _chat_any(client, stream=True, usage=False)[0] == "MISS"
    assert _chat_any(client, stream=False, usage=False)[0] == "MISS"
    assert _chat_any(client, stream=True, usage=True)[0] == "HIT"  # from the JSON answer
    assert _chat_any(client, stream=True, usage=False)[0] == "HIT"
    assert fake.state.calls[CHAT] == 2


def test_completions_stream_and_json_share_entries(make_proxy: ProxyFactory, fake: Fake) -> None:
    client = make_proxy().client()
    first = client.completions.with_raw_response.create(
        model="gpt-3.5-turbo-instruct",
        prompt="once",
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(first.parse())
    texts = {c.choices[0].index: c.choices[0].text for c in chunks if c.choices}
    usage = next(c.usage for c in chunks if c.usage)
    second = client.completions.with_raw_response.create(
        model="gpt-3.5-turbo-instruct", prompt="once", n=2
    )
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    parsed = second.parse()
    assert {c.index: c.text for c in parsed.choices} == texts
    assert parsed.usage == usage
    assert all(c.finish_reason == "stop" for c in parsed.choices)
    third = client.completions.with_raw_response.create(
        model="gpt-3.5-turbo-instruct", prompt="once", n=2, stream=True
    )
    assert third.headers["x-cache"] == "HIT"
    again = {c.choices[0].index: c.choices[0].text for c in third.parse() if c.choices}
    assert again == texts
    assert fake.state.calls["/v1/completions"] == 1


async def test_async_sdk_hits(make_proxy: ProxyFactory, fake: Fake) -> None:
    client = make_proxy().async_client()
    async with client:
        for expected in ("MISS", "HIT"):
            raw = await client.embeddings.with_raw_response.create(
                model="text-embedding-3-small", input="vector please"
            )
            assert raw.headers["x-cache"] == expected
    assert fake.state.calls["/v1/embeddings"] == 1
