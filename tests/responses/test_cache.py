"""``POST /v1/responses`` through the proxy's cache, with the official SDK as the client."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from bench.fake_upstream import (
    RESPONSES_ERROR_WORD,
    RESPONSES_FAILED_WORD,
    RESPONSES_INCOMPLETE_WORD,
    Scripted,
)
from tests.cache.conftest import http_chunks
from tests.conftest import KEY_A, KEY_B, Fake, Proxy, ProxyFactory
from tests.support.live import BackgroundLoop

PATH = "/v1/responses"
MODEL = "gpt-4o-mini"
TOOLS: Any = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]


@pytest.fixture
def cached(make_proxy: ProxyFactory) -> Proxy:
    return make_proxy({})


def calls(fake: Fake) -> int:
    return fake.state.calls[PATH]


def test_create_repeated_is_a_hit_with_the_same_object(cached: Proxy, fake: Fake) -> None:
    client = cached.client()
    first = client.responses.with_raw_response.create(model=MODEL, input="hello cache")
    second = client.responses.with_raw_response.create(model=MODEL, input="hello cache")
    assert first.headers["x-cache"] == "MISS" and second.headers["x-cache"] == "HIT"
    assert second.headers["x-cache-key"] == first.headers["x-cache-key"]
    assert int(second.headers["age"]) >= 0
    assert second.parse().model_dump() == first.parse().model_dump()
    assert second.parse().id == first.parse().id  # the original id: it still chains upstream
    assert second.parse().output_text == "echo: hello cache"
    assert calls(fake) == 1


def test_stream_repeated_is_a_hit_with_the_same_events(
    cached: Proxy, fake: Fake, bg: BackgroundLoop
) -> None:
    body = {"model": MODEL, "input": "stream me please", "stream": True}
    url = f"{cached.base_url}/responses"
    miss_headers, miss = http_chunks(bg, url, body)
    hit_headers, hit = http_chunks(bg, url, body)
    assert miss_headers["x-cache"] == "MISS" and hit_headers["x-cache"] == "HIT"
    assert hit == miss  # bytes and event boundaries as recorded
    assert hit[0].startswith(b"event: response.created\ndata: ")
    client = cached.client()
    raw = client.responses.with_raw_response.create(
        model=MODEL, input="stream me please", stream=True
    )
    assert raw.headers["x-cache"] == "HIT"
    events = list(raw.parse())
    assert events[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-1].response.output_text == "echo: stream me please"
    assert calls(fake) == 1


def test_stored_stream_answers_json_with_the_completed_object(cached: Proxy, fake: Fake) -> None:
    client = cached.client()
    events = list(client.responses.create(model=MODEL, input="first a stream", stream=True))
    completed = events[-1]
    assert completed.type == "response.completed"
    raw = client.responses.with_raw_response.create(model=MODEL, input="first a stream")
    assert raw.headers["x-cache"] == "HIT"
    assert raw.headers["content-type"] == "application/json"
    assert raw.parse().model_dump() == completed.response.model_dump()
    assert calls(fake) == 1


@pytest.mark.parametrize("tools", [None, TOOLS], ids=["text", "function_call"])
def test_stored_json_answers_a_stream_the_sdk_accepts(
    cached: Proxy, fake: Fake, tools: Any
) -> None:
    client = cached.client()
    kwargs: dict[str, Any] = {"model": MODEL, "input": "the weather in Paris, please"}
    if tools is not None:
        kwargs["tools"] = tools
    stored = client.responses.create(**kwargs)
    with client.responses.stream(**kwargs) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert calls(fake) == 1  # the stream was a hit
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.id == stored.id
    assert final.output_text == stored.output_text
    assert [(i.id, i.type) for i in final.output] == [(i.id, i.type) for i in stored.output]
    assert final.usage == stored.usage
    if tools is None:
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert deltas == stored.output_text == "echo: the weather in Paris, please"
    else:
        call, stored_call = final.output[0], stored.output[0]
        assert call.type == stored_call.type == "function_call"
        assert (call.call_id, call.name) == (stored_call.call_id, stored_call.name)
        args = "".join(
            e.delta for e in events if e.type == "response.function_call_arguments.delta"
        )
        assert args == stored.output[0].arguments  # type: ignore[union-attr]
    # ... and the raw HTTP answer says where it came from.
    raw = client.responses.with_raw_response.create(**kwargs, stream=True)
    assert raw.headers["x-cache"] == "HIT"
    assert raw.headers["content-type"].startswith("text/event-stream")
    list(raw.parse())


def test_previous_response_id_chains_and_keys_separately(cached: Proxy, fake: Fake) -> None:
    client = cached.client()
    first = client.responses.create(model=MODEL, input="my name is Ada")
    again = client.responses.create(model=MODEL, input="my name is Ada")
    assert again.id == first.id
    chained = client.responses.with_raw_response.create(
        model=MODEL, input="who am I?", previous_response_id=first.id
    )
    alone = client.responses.with_raw_response.create(model=MODEL, input="who am I?")
    assert chained.headers["x-cache"] == "MISS" and alone.headers["x-cache"] == "MISS"
    assert chained.headers["x-cache-key"] != alone.headers["x-cache-key"]
    # The hit's id chained upstream: the upstream knew it.
    assert chained.parse().output_text == "echo: who am I? (turn 2)"
    assert alone.parse().output_text == "echo: who am I?"
    repeat = client.responses.with_raw_response.create(
        model=MODEL, input="who am I?", previous_response_id=first.id
    )
    assert repeat.headers["x-cache"] == "HIT"
    assert repeat.parse().output_text == "echo: who am I? (turn 2)"
    assert calls(fake) == 3


def test_conversation_is_part_of_the_key(cached: Proxy, fake: Fake) -> None:
    client = cached.client()
    keys = {
        client.responses.with_raw_response.create(
            model=MODEL, input="same words", conversation=conversation
        ).headers["x-cache-key"]
        for conversation in ("conv_one", "conv_two")
    }
    assert len(keys) == 2
    assert calls(fake) == 2


def test_background_requests_are_never_cached(cached: Proxy, fake: Fake) -> None:
    client = cached.client()
    outs = [
        client.responses.with_raw_response.create(model=MODEL, input="slow job", background=True)
        for _ in range(2)
    ]
    assert [o.headers["x-cache"] for o in outs] == ["BYPASS", "BYPASS"]
    assert [o.parse().status for o in outs] == ["queued", "queued"]
    assert calls(fake) == 2


@pytest.mark.parametrize(
    "word", [RESPONSES_FAILED_WORD, RESPONSES_INCOMPLETE_WORD, RESPONSES_ERROR_WORD]
)
def test_unfinished_streams_are_not_stored(cached: Proxy, fake: Fake, word: str) -> None:
    client = cached.client()
    for _ in range(2):
        events = list(client.responses.create(model=MODEL, input=f"{word} now", stream=True))
        assert events[-1].type != "response.completed"
    assert calls(fake) == 2


def test_unfinished_json_answers_are_not_stored(cached: Proxy, fake: Fake) -> None:
    client = cached.client()
    for word in (RESPONSES_INCOMPLETE_WORD, RESPONSES_FAILED_WORD):
        for _ in range(2):
            out = client.responses.create(model=MODEL, input=f"{word} again")
            assert out.status != "completed"
    assert calls(fake) == 4


def test_tenants_do_not_share_by_default(cached: Proxy, fake: Fake) -> None:
    a = cached.client(KEY_A).responses.with_raw_response.create(model=MODEL, input="mine")
    b = cached.client(KEY_B).responses.with_raw_response.create(model=MODEL, input="mine")
    assert a.headers["x-cache"] == b.headers["x-cache"] == "MISS"
    assert calls(fake) == 2


def test_cache_control_applies(cached: Proxy, fake: Fake) -> None:
    client = cached.client()
    client.responses.create(model=MODEL, input="controlled")
    fresh = client.responses.with_raw_response.create(
        model=MODEL, input="controlled", extra_headers={"Cache-Control": "no-cache"}
    )
    assert fresh.headers["x-cache"] == "BYPASS"
    with pytest.raises(openai.APIStatusError) as caught:
        client.responses.create(
            model=MODEL, input="never asked", extra_headers={"Cache-Control": "only-if-cached"}
        )
    assert caught.value.status_code == 504
    assert calls(fake) == 2


def test_only_deterministic_treats_responses_as_sampling(
    make_proxy: ProxyFactory, fake: Fake
) -> None:
    client = make_proxy({"cache": {"only_deterministic": True}}).client()
    sampled = [
        client.responses.with_raw_response.create(model=MODEL, input="roll the dice")
        for _ in range(2)
    ]
    assert [r.headers["x-cache"] for r in sampled] == ["BYPASS", "BYPASS"]
    greedy = [
        client.responses.with_raw_response.create(model=MODEL, input="pick", temperature=0)
        for _ in range(2)
    ]
    assert [r.headers["x-cache"] for r in greedy] == ["MISS", "HIT"]
    assert calls(fake) == 3


def test_redis_backend_stores_streams_and_json(
    make_proxy: ProxyFactory, fake: Fake, redis_url: str
) -> None:
    config = {"cache": {"backend": "redis"}, "redis": {"url": redis_url}}
    one, two = make_proxy(config), make_proxy(config)
    events = list(one.client().responses.create(model=MODEL, input="shared", stream=True))
    raw = two.client().responses.with_raw_response.create(model=MODEL, input="shared")
    assert raw.headers["x-cache"] == "HIT"
    assert raw.parse().model_dump() == events[-1].response.model_dump()  # type: ignore[union-attr]
    assert calls(fake) == 1
    assert KEY_A not in str(raw.headers)


def test_json_that_cannot_be_rendered_as_events_is_a_miss_for_streams(
    cached: Proxy, fake: Fake, bg: BackgroundLoop
) -> None:
    client = cached.client()
    plain = client.responses.create(model=MODEL, input="think first").model_dump(mode="json")
    reasoning = {"id": "rs_1", "type": "reasoning", "summary": [], "status": "completed"}
    scripted = {**plain, "output": [reasoning, *plain["output"]]}
    bg.call(lambda: fake.state.script.append(Scripted(200, scripted, path=PATH)))
    stored = client.responses.with_raw_response.create(model=MODEL, input="think harder")
    assert stored.headers["x-cache"] == "MISS" and stored.parse().output[0].type == "reasoning"
    again = client.responses.with_raw_response.create(model=MODEL, input="think harder")
    assert again.headers["x-cache"] == "HIT"  # the JSON form is served
    # A stream cannot be rendered faithfully from it (reasoning has events of its own): a miss.
    raw = client.responses.with_raw_response.create(model=MODEL, input="think harder", stream=True)
    assert raw.headers["x-cache"] == "MISS"
    assert list(raw.parse())[-1].type == "response.completed"
    assert calls(fake) == 3


def test_stored_refusal_answers_a_stream_the_sdk_accepts(
    cached: Proxy, fake: Fake, bg: BackgroundLoop
) -> None:
    client = cached.client()
    plain = client.responses.create(model=MODEL, input="warm up").model_dump(mode="json")
    message = {**plain["output"][0], "content": [{"type": "refusal", "refusal": "I can't help"}]}
    scripted = {**plain, "output": [message]}
    bg.call(lambda: fake.state.script.append(Scripted(200, scripted, path=PATH)))
    client.responses.create(model=MODEL, input="do something bad")
    with client.responses.stream(model=MODEL, input="do something bad") as stream:
        deltas = [e.delta for e in stream if e.type == "response.refusal.delta"]
        final = stream.get_final_response()
    assert deltas == ["I can't help"]
    assert final.output[0].content[0].refusal == "I can't help"  # type: ignore[union-attr]
    assert calls(fake) == 2


def test_shared_cache_hands_out_the_creators_id(make_proxy: ProxyFactory, fake: Fake) -> None:
    """What docs/cache.md warns about: with ``cache.shared`` a tenant may get a response id
    created under another tenant's credential (and so possibly another upstream account)."""
    proxy = make_proxy({"cache": {"shared": True}})
    a = proxy.client(KEY_A).responses.with_raw_response.create(model=MODEL, input="for all")
    b = proxy.client(KEY_B).responses.with_raw_response.create(model=MODEL, input="for all")
    assert (a.headers["x-cache"], b.headers["x-cache"]) == ("MISS", "HIT")
    assert b.parse().id == a.parse().id
    assert calls(fake) == 1
    assert fake.state.requests[-1].headers["Authorization"] == f"Bearer {KEY_A}"
