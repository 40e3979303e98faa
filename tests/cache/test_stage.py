"""The stage's contract with the stages below it, with a plain function as ``next_stage``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from multidict import CIMultiDict

from proxy.cache.forms import assemble, synthesize
from proxy.cache.stage import ResponseCache
from proxy.call import CacheControl, Call, Reply
from proxy.config import CacheSettings, UpstreamSettings
from proxy.metrics import Metrics
from tests.cache.conftest import make_memory


class _Upstream:
    name = "fake"
    settings = UpstreamSettings(name="fake", base_url="http://fake.invalid")


def _call(**changes: Any) -> Call:
    data = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    base: dict[str, Any] = {
        "tenant": "t_" + "a" * 32,
        "upstream": _Upstream(),
        "method": "POST",
        "path": "/v1/chat/completions",
        "body": orjson.dumps(data),
        "json": data,
    }
    return Call(**{**base, **changes})


def _cache() -> ResponseCache:
    return ResponseCache(settings=CacheSettings(), backend=make_memory(), metrics=Metrics())


BODY = orjson.dumps({"id": "x", "object": "chat.completion", "choices": []})


async def test_passes_the_key_down_even_for_no_cache() -> None:
    seen: list[Call] = []

    async def below(call: Call) -> Reply:
        seen.append(call)
        return Reply(200, CIMultiDict({"Content-Type": "application/json"}), body=BODY)

    stage = _cache().wrap(below)
    await stage(_call())
    await stage(_call(cache=CacheControl.parse("no-cache", None)))
    await stage(_call(cache=CacheControl.parse("no-store", None)))
    keys = {c.key for c in seen}
    assert len(seen) == 3 and len(keys) == 1 and None not in keys
    assert seen[1].cache.may_share is False


async def test_follower_replies_are_marked_but_not_stored() -> None:
    calls = 0

    async def below(call: Call) -> Reply:
        nonlocal calls
        calls += 1
        return Reply(
            200, CIMultiDict({"Content-Type": "application/json"}), body=BODY, follower=True
        )

    stage = _cache().wrap(below)
    first = await stage(_call())
    assert first.headers["X-Cache"] == "MISS" and len(first.headers["X-Cache-Key"]) == 64
    await stage(_call())
    assert calls == 2


async def test_an_x_cache_set_below_is_kept() -> None:
    async def below(call: Call) -> Reply:
        return Reply(
            200, CIMultiDict({"Content-Type": "application/json", "X-Cache": "HIT"}), body=BODY
        )

    cache = _cache()
    reply = await cache.wrap(below)(_call(path="/v1/embeddings"))
    assert reply.headers["X-Cache"] == "HIT"
    assert "X-Cache-Key" in reply.headers


async def test_recording_keeps_the_closer_and_passes_chunks_at_once() -> None:
    closed: list[bool] = []
    events = synthesize("/v1/chat/completions", _chat_json(), include_usage=True)
    assert events is not None
    produced: list[int] = []

    async def source() -> AsyncIterator[bytes]:
        for i, event in enumerate(events):
            produced.append(i)
            yield event

    async def closer() -> None:
        closed.append(True)

    async def below(call: Call) -> Reply:
        headers = CIMultiDict({"Content-Type": "text/event-stream"})
        return Reply(200, headers, stream=source(), closer=closer)

    cache = _cache()
    data = {"model": "m", "messages": [], "stream_options": {"include_usage": True}}
    streamed = _call(stream=True, json=data, body=orjson.dumps(data))
    reply = await cache.wrap(below)(streamed)
    assert reply.stream is not None
    i = 0
    async for chunk in reply.stream:
        assert chunk == events[i] and produced[-1] == i  # nothing read ahead of the consumer
        i += 1
    await reply.aclose()
    assert closed == [True]
    hit = await cache.wrap(below)(streamed)
    assert hit.headers["X-Cache"] == "HIT"


async def test_a_stream_goes_down_asking_for_usage_under_the_same_key() -> None:
    seen: list[Call] = []

    async def below(call: Call) -> Reply:
        seen.append(call)
        return Reply(200, CIMultiDict({"Content-Type": "application/json"}), body=BODY)

    stage = _cache().wrap(below)
    await stage(_call(stream=True, cache=CacheControl.parse("no-cache", None)))
    await stage(_call(cache=CacheControl.parse("no-cache", None)))
    streamed, plain = seen
    assert streamed.key == plain.key
    assert streamed.json is not None and plain.json is not None
    assert streamed.json["stream_options"] == {"include_usage": True}
    assert orjson.loads(streamed.body) == streamed.json
    assert "stream_options" not in plain.json


def _chat_json() -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "system_fingerprint": "fp",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hello there", "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                },
                {
                    "index": 1,
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "refusal": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "f", "arguments": '{"a": 1}'},
                            }
                        ],
                    },
                    "logprobs": None,
                    "finish_reason": "tool_calls",
                },
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        }
    )


def test_json_to_stream_and_back_is_the_same_answer() -> None:
    events = synthesize("/v1/chat/completions", _chat_json(), include_usage=True)
    assert events is not None and events[-1] == b"data: [DONE]\n\n"
    again = assemble("/v1/chat/completions", b"".join(events))
    assert again is not None
    assert orjson.loads(again) == orjson.loads(_chat_json())


async def test_a_failed_call_below_counts_as_a_miss_and_stores_nothing() -> None:
    from proxy.errors import UpstreamError

    metrics = Metrics()
    cache = ResponseCache(settings=CacheSettings(), backend=make_memory(), metrics=metrics)

    async def below(call: Call) -> Reply:
        raise UpstreamError("down")

    try:
        await cache.wrap(below)(_call())
    except UpstreamError:
        pass
    else:
        raise AssertionError("the error must reach the door")
    assert metrics.hit_rate() == 0.0
    assert metrics.cache_misses.labels(route="/v1/chat/completions")._value.get() == 1
    assert len(cache.backend) == 0  # type: ignore[arg-type]


def _sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def test_a_stream_assembles_function_calls_and_null_logprob_lists() -> None:
    """The legacy ``function_call`` delta and chat's ``refusal: null`` logprobs survive."""
    head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def chunk(delta: dict[str, Any], logprobs: Any = None, finish: Any = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {**head, "choices": [choice]}

    token = {"token": "x", "logprob": -0.1, "bytes": [120], "top_logprobs": []}
    raw = _sse(
        chunk(
            {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": ""}}
        ),
        chunk({"function_call": {"arguments": '{"a":'}}, {"content": [token], "refusal": None}),
        chunk({"function_call": {"arguments": " 1}"}}, {"content": [token], "refusal": None}),
        chunk({}, None, "function_call"),
        {
            **head,
            "choices": [],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        },
    )
    body = assemble("/v1/chat/completions", raw)
    assert body is not None
    choice = orjson.loads(body)["choices"][0]
    assert choice["message"]["function_call"] == {"name": "f", "arguments": '{"a": 1}'}
    assert choice["logprobs"] == {"content": [token, token], "refusal": None}
    assert choice["finish_reason"] == "function_call"
    # ... and back: the same answer again.
    events = synthesize("/v1/chat/completions", body, include_usage=True)
    assert events is not None
    assert assemble("/v1/chat/completions", b"".join(events)) == body
