"""Only well-formed answers are stored: a broken 2xx body or stream is passed on, never repeated."""

from __future__ import annotations

import json

import pytest

from bench.fake_upstream import Scripted
from proxy.cache.storable import RULES, Rule, storable_json, storable_stream
from tests.cache.conftest import CHAT, HELLO, post
from tests.conftest import Fake, ProxyFactory
from tests.support.live import BackgroundLoop

EMBEDDINGS = "/v1/embeddings"
_SSE = {"Content-Type": "text/event-stream"}
_CHUNK = {"id": "c", "object": "chat.completion.chunk", "choices": []}


def _events(*datas: bytes) -> bytes:
    return b"".join(b"data: " + d + b"\n\n" for d in datas)


@pytest.mark.parametrize(
    "body",
    [
        b"<html>502 Bad Gateway</html>",
        b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"mess',
        b"[]",
        b'"ok"',
        b'{"unexpected": true}',
    ],
    ids=["not-json", "cut-short", "array", "string", "not-the-route-object"],
)
def test_a_2xx_body_that_is_not_the_routes_object_is_passed_on_not_stored(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop, body: bytes
) -> None:
    """The fake sends the body with a matching Content-Length: nothing tells it is broken."""
    proxy = make_proxy()
    bg.call(lambda: fake.state.script.append(Scripted(200, body, path=CHAT)))
    first = post(proxy.url, CHAT, HELLO)
    assert (first.status, first.cache, first.body) == (200, "MISS", body)
    second = post(proxy.url, CHAT, HELLO)
    assert second.cache == "MISS" and second.json()["object"] == "chat.completion"
    assert post(proxy.url, CHAT, HELLO).cache == "HIT"  # the proper answer is stored
    assert fake.state.calls[CHAT] == 2


def test_a_broken_embeddings_body_is_not_stored(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop
) -> None:
    proxy = make_proxy({"batching": {"enabled": False}})
    body = {"model": "text-embedding-3-small", "input": "broken"}
    cut = b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,'
    bg.call(lambda: fake.state.script.append(Scripted(200, cut, path=EMBEDDINGS)))
    assert post(proxy.url, EMBEDDINGS, body).body == cut
    assert post(proxy.url, EMBEDDINGS, body).cache == "MISS"
    assert fake.state.calls[EMBEDDINGS] == 2


@pytest.mark.parametrize(
    "stream",
    [
        _events(json.dumps(_CHUNK).encode(), b'{"id":"c","choices":[{"delta"', b"[DONE]"),
        _events(json.dumps(_CHUNK).encode(), b"not json at all", b"[DONE]"),
    ],
    ids=["cut-line", "garbage-line"],
)
def test_a_stream_with_a_data_line_that_does_not_parse_is_not_stored(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop, stream: bytes
) -> None:
    proxy = make_proxy()
    bg.call(lambda: fake.state.script.append(Scripted(200, stream, headers=_SSE, path=CHAT)))
    request = {**HELLO, "stream": True}
    first = post(proxy.url, CHAT, request)
    assert (first.status, first.body) == (200, stream)
    second = post(proxy.url, CHAT, request)
    assert second.cache == "MISS" and second.body.endswith(b"data: [DONE]\n\n")
    assert fake.state.calls[CHAT] == 2


def test_storable_by_route() -> None:
    chat = json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode()
    assert storable_json(CHAT, chat)
    assert not storable_json(CHAT, b'{"data": []}')
    assert storable_json(EMBEDDINGS, b'{"object": "list", "data": []}')
    assert not storable_json(EMBEDDINGS, chat)
    assert storable_json("/v1/other", b'{"anything": 1}')  # a route outside the table
    assert not storable_json("/v1/other", b"plain text")
    assert not storable_json(CHAT, b'{"error": {"message": "overloaded"}, "choices": []}')
    good = _events(json.dumps(_CHUNK).encode(), b"[DONE]")
    assert storable_stream(CHAT, good)
    assert not storable_stream(CHAT, _events(json.dumps(_CHUNK).encode()))  # no [DONE]
    assert not storable_stream(CHAT, _events(b"{", b"[DONE]"))
    assert not storable_stream(CHAT, b"")


def test_a_route_can_bring_its_own_end_of_stream() -> None:
    """How ``/v1/responses`` plugs in: its streams end with a ``response.completed`` event."""
    rule = Rule(
        is_answer=lambda obj: obj.get("object") == "response",
        is_complete=lambda events, done: (
            bool(events) and events[-1].get("type") == "response.completed"
        ),
    )
    path = "/v1/test-responses"
    RULES[path] = rule
    try:
        completed = b'event: response.completed\ndata: {"type":"response.completed"}\n\n'
        created = b'event: response.created\ndata: {"type":"response.created"}\n\n'
        assert storable_stream(path, created + completed)
        assert not storable_stream(path, created)
        assert storable_json(path, b'{"object": "response", "output": []}')
        assert not storable_json(path, b'{"object": "list"}')
    finally:
        del RULES[path]
