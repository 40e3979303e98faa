"""Key canonicalisation (same meaning -> same entry; different answer -> different entry) and
tenant isolation."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cache.conftest import CHAT, post
from tests.conftest import KEY_A, KEY_B, Fake, ProxyFactory

BASE: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "temperature": 1,
    "messages": [{"role": "user", "content": "canonical please"}],
}


def _raw(text: str) -> bytes:
    return text.encode()


SAME_MEANING = [
    _raw(
        '{"messages":[{"content":"canonical please","role":"user"}],"temperature":1,'
        '"model":"gpt-4o-mini"}'
    ),
    _raw(
        '{ "model" : "gpt-4o-mini",\n  "temperature": 1.0,\n  "messages": [ {"role": "user",'
        ' "content": "canonical please"} ] }'
    ),
    _raw(
        '{"model":"gpt-4o-mini","temperature":1e0,"messages":[{"role":"user",'
        '"content":"canonical please"}],"user":"someone-else","stream_options":null}'
    ),
]


def test_same_meaning_hits_the_same_entry(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy()
    first = post(proxy.url, CHAT, BASE)
    assert first.cache == "MISS"
    for body in SAME_MEANING:
        again = post(proxy.url, CHAT, body)
        assert again.cache == "HIT", body
        assert again.headers["x-cache-key"] == first.headers["x-cache-key"]
    assert fake.state.calls[CHAT] == 1


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.5},
        {"model": "gpt-4o"},
        {"n": 2},
        {"messages": [{"role": "user", "content": "canonical please!"}]},
        {"messages": [{"role": "system", "content": "canonical please"}]},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"response_format": {"type": "json_object"}},
        {"max_tokens": 5},
    ],
    ids=lambda c: next(iter(c)),
)
def test_anything_that_changes_the_answer_misses(
    make_proxy: ProxyFactory, fake: Fake, change: dict[str, Any]
) -> None:
    proxy = make_proxy()
    first = post(proxy.url, CHAT, BASE)
    other = post(proxy.url, CHAT, {**BASE, **change})
    assert (first.cache, other.cache) == ("MISS", "MISS")
    assert other.headers["x-cache-key"] != first.headers["x-cache-key"]
    assert fake.state.calls[CHAT] == 2


def test_model_alias_shares_the_entry_of_its_target(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy({"routing": {"model_aliases": {"fast": "gpt-4o-mini"}}})
    assert post(proxy.url, CHAT, BASE).cache == "MISS"
    assert post(proxy.url, CHAT, {**BASE, "model": "fast"}).cache == "HIT"


def test_ignore_fields_are_configurable(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy({"cache": {"ignore_fields": ["user", "metadata"]}})
    post(proxy.url, CHAT, {**BASE, "metadata": {"trace": "1"}})
    assert post(proxy.url, CHAT, {**BASE, "metadata": {"trace": "2"}}).cache == "HIT"


def test_tenants_never_see_each_others_entries(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy()
    a1 = post(proxy.url, CHAT, BASE, key=KEY_A)
    b1 = post(proxy.url, CHAT, BASE, key=KEY_B)
    assert (a1.cache, b1.cache) == ("MISS", "MISS")
    assert a1.headers["x-cache-key"] != b1.headers["x-cache-key"]
    assert post(proxy.url, CHAT, BASE, key=KEY_A).cache == "HIT"
    assert post(proxy.url, CHAT, BASE, key=KEY_B).cache == "HIT"
    assert fake.state.calls[CHAT] == 2


def test_shared_cache_serves_every_tenant(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy({"cache": {"shared": True}})
    assert post(proxy.url, CHAT, BASE, key=KEY_A).cache == "MISS"
    assert post(proxy.url, CHAT, BASE, key=KEY_B).cache == "HIT"
    assert fake.state.calls[CHAT] == 1


def test_redis_key_names_hold_no_prompt_or_credential(
    make_proxy: ProxyFactory, fake: Fake, redis_proxy_config: dict[str, Any], redis_server: Any
) -> None:
    proxy = make_proxy(redis_proxy_config)
    assert post(proxy.url, CHAT, BASE).cache == "MISS"
    names = [n.decode() for n in redis_server.client().keys("llmproxy:cache:*")]
    assert len(names) == 1
    name = names[0]
    assert name.startswith("llmproxy:cache:v1:t_")
    assert "canonical" not in name and KEY_A not in name and "gpt" not in name
    assert name.endswith(post(proxy.url, CHAT, BASE).headers["x-cache-key"])


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        (CHAT + "?api-version=2024-10-21", {}),
        (CHAT, {"OpenAI-Organization": "org-other"}),
        (CHAT, {"OpenAI-Project": "proj_other"}),
    ],
    ids=["query", "organization", "project"],
)
def test_query_and_account_headers_change_the_key(
    make_proxy: ProxyFactory, fake: Fake, path: str, headers: dict[str, str]
) -> None:
    proxy = make_proxy()
    first = post(proxy.url, CHAT, BASE, headers={"OpenAI-Project": "proj_one"})
    other = post(proxy.url, path, BASE, headers={"OpenAI-Project": "proj_one", **headers})
    assert (first.cache, other.cache) == ("MISS", "MISS")
    assert fake.state.calls[CHAT] == 2
    again = post(proxy.url, path, BASE, headers={"openai-project": "proj_one", **headers})
    assert again.cache == "HIT"  # header names are case-insensitive


def _schema(properties: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": ["a", "b"]}
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def test_schema_property_order_changes_the_key(make_proxy: ProxyFactory, fake: Fake) -> None:
    """Structured outputs come in the order of ``properties``: reordered, the answer differs."""
    proxy = make_proxy()
    a, b = {"type": "string"}, {"type": "integer"}
    first = post(proxy.url, CHAT, {**BASE, "response_format": _schema({"a": a, "b": b})})
    other = post(proxy.url, CHAT, {**BASE, "response_format": _schema({"b": b, "a": a})})
    assert (first.cache, other.cache) == ("MISS", "MISS")
    # ... while the order of the keys around it still does not matter.
    reordered = {"type": "object", "required": ["a", "b"], "properties": {"a": a, "b": b}}
    fmt = {"json_schema": {"schema": reordered, "name": "answer"}, "type": "json_schema"}
    assert post(proxy.url, CHAT, {**BASE, "response_format": fmt}).cache == "HIT"
