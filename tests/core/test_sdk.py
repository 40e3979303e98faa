"""The official openai SDK through the proxy: same results as calling the upstream directly."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import openai
import pytest

from tests.conftest import KEY_A, Fake, Proxy
from tests.support import http

MESSAGES = [{"role": "user", "content": "tell me about the weather in Paris"}]


@pytest.fixture
def direct(fake: Fake) -> Iterator[openai.OpenAI]:
    """An SDK client talking to the fake upstream without the proxy."""
    with openai.OpenAI(base_url=fake.url, api_key=KEY_A, max_retries=0) as client:
        yield client


def test_chat_identical_to_direct(proxy: Proxy, direct: openai.OpenAI) -> None:
    via = proxy.client().chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    raw = direct.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert via.content == raw.content
    assert via.parse().choices[0].message.content == "echo: tell me about the weather in Paris"
    # Upstream headers reach the client unchanged; the upstream's request id beside the proxy's.
    assert via.headers["x-upstream-request-id"] == raw.headers["x-request-id"]
    assert via.headers["x-ratelimit-remaining-requests"] == "999"
    assert via.headers["content-type"] == "application/json"


def test_chat_with_tools(proxy: Proxy) -> None:
    tools = [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": {"type": "object"}},
        }
    ]
    out = proxy.client().chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        tools=tools,  # type: ignore[arg-type]
    )
    call = out.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert out.choices[0].finish_reason == "tool_calls"


def test_streamed_chat_identical_to_direct(proxy: Proxy, direct: openai.OpenAI) -> None:
    kwargs = {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    via = list(proxy.client().chat.completions.create(**kwargs))  # type: ignore[call-overload]
    raw = list(direct.chat.completions.create(**kwargs))  # type: ignore[call-overload]
    assert [c.model_dump() for c in via] == [c.model_dump() for c in raw]
    text = "".join(c.choices[0].delta.content or "" for c in via if c.choices)
    assert text == "echo: tell me about the weather in Paris"
    assert via[-1].usage is not None and via[-1].usage.total_tokens > 0


def test_stream_bytes_identical_to_direct(proxy: Proxy, fake: Fake) -> None:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    via = http.post(f"{proxy.base_url}/chat/completions", body)
    raw = http.post(f"{fake.url}/chat/completions", body)
    assert via.headers["content-type"].startswith("text/event-stream")
    assert via.body == raw.body
    assert via.body.endswith(b"data: [DONE]\n\n")


async def test_async_client_concurrent_chats(proxy: Proxy) -> None:
    client = proxy.async_client()
    try:
        outs = await asyncio.gather(
            *(
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"n{i}"}]
                )
                for i in range(20)
            )
        )
    finally:
        await client.close()
    assert [o.choices[0].message.content for o in outs] == [f"echo: n{i}" for i in range(20)]


async def test_async_streaming(proxy: Proxy) -> None:
    client = proxy.async_client()
    try:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    finally:
        await client.close()
    assert "".join(parts) == "echo: tell me about the weather in Paris"


def test_completions_identical_to_direct(proxy: Proxy, direct: openai.OpenAI) -> None:
    kwargs = {"model": "gpt-3.5-turbo-instruct", "prompt": ["one", "two"], "n": 2}
    via = proxy.client().completions.create(**kwargs)  # type: ignore[call-overload]
    raw = direct.completions.create(**kwargs)  # type: ignore[call-overload]
    assert via.model_dump() == raw.model_dump()
    assert [c.index for c in via.choices] == [0, 1, 2, 3]


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings_identical_to_direct(proxy: Proxy, direct: openai.OpenAI, encoding: str) -> None:
    kwargs = {"model": "text-embedding-3-small", "input": ["a", "b c"], "encoding_format": encoding}
    via = proxy.client().embeddings.with_raw_response.create(**kwargs)  # type: ignore[arg-type]
    raw = direct.embeddings.with_raw_response.create(**kwargs)  # type: ignore[arg-type]
    assert via.content == raw.content
    assert len(via.parse().data) == 2


def test_moderations(proxy: Proxy) -> None:
    out = proxy.client().moderations.create(input="hello")
    assert out.results[0].flagged is False


def test_models_list_and_retrieve(proxy: Proxy, direct: openai.OpenAI) -> None:
    via = [m.id for m in proxy.client().models.list()]
    assert via == [m.id for m in direct.models.list()]
    assert proxy.client().models.retrieve("gpt-4o").id == "gpt-4o"


def test_upstream_errors_reach_the_sdk_unchanged(proxy: Proxy) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        proxy.client().chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert info.value.code == "model_not_found"
    assert "does not exist" in info.value.message
