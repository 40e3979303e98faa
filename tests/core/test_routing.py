"""Routing by model, aliases, pass-through of other requests, headers and credentials."""

from __future__ import annotations

import json

import aiohttp

from tests.conftest import KEY_A, Fake, ProxyFactory
from tests.support import http

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}


def last_request_body(fake: Fake) -> dict[str, object]:
    return json.loads(fake.state.requests[-1].body)  # type: ignore[no-any-return]


def test_alias_rewrites_model_and_keeps_the_rest(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy(
        {"routing": {"model_aliases": {"fast": "gpt-4o-mini"}}, "cache": {"enabled": False}}
    )
    out = proxy.client().chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "hi"}], temperature=0.5
    )
    assert out.model == "gpt-4o-mini"
    sent = last_request_body(fake)
    assert sent == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.5,
    }


def test_unaliased_body_passes_byte_for_byte(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy({"cache": {"enabled": False}})
    body = b'{ "messages" : [{"role":"user","content":"hi"}],\n "model":"gpt-4o" , "n": 1.0 }'
    http.post(f"{proxy.base_url}/chat/completions", body, {"Content-Type": "application/json"})
    assert fake.state.requests[-1].body == body


def test_glob_routing_picks_the_first_matching_upstream(
    make_proxy: ProxyFactory, fake: Fake
) -> None:
    # Two upstreams on the same fake, told apart by their extra headers.
    proxy = make_proxy(
        {
            "upstreams": [
                {
                    "name": "chat",
                    "base_url": fake.url,
                    "models": ["gpt-4o*"],
                    "headers": {"x-upstream": "chat"},
                },
                {
                    "name": "emb",
                    "base_url": fake.url,
                    "models": ["text-embedding-3-small"],
                    "headers": {"x-upstream": "emb"},
                },
            ],
            "routing": {"default_upstream": "emb"},
            "cache": {"enabled": False},
            "batching": {"enabled": False},
        }
    )
    client = proxy.client()
    client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert fake.state.requests[-1].headers["x-upstream"] == "chat"
    client.embeddings.create(model="text-embedding-3-small", input="x")
    assert fake.state.requests[-1].headers["x-upstream"] == "emb"
    # No match: the default upstream.
    client.chat.completions.create(model="gpt-3.5-turbo-instruct", messages=CHAT["messages"])  # type: ignore[arg-type]
    assert fake.state.requests[-1].headers["x-upstream"] == "emb"


def test_models_are_merged_across_upstreams(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy(
        {
            "upstreams": [
                {"name": "a", "base_url": fake.url, "models": ["gpt-*"]},
                {"name": "b", "base_url": fake.url, "models": ["text-*"]},
            ],
            "routing": {"default_upstream": "a", "model_aliases": {"fast": "gpt-4o-mini"}},
        }
    )
    ids = [m.id for m in proxy.client().models.list()]
    assert ids == [*fake.state.models, "fast"]
    assert fake.state.calls["/v1/models"] == 2
    proxy.client().models.list()
    assert fake.state.calls["/v1/models"] == 2  # cached briefly


def test_multipart_upload_streams_to_default_upstream(make_proxy: ProxyFactory, fake: Fake) -> None:
    # /v1/files is emulated by default (docs/batches.md): pass it through, as for OpenAI.
    proxy = make_proxy({"batches": {"mode": "passthrough"}})
    content = b"x" * 200_000
    raw = proxy.client().files.with_raw_response.create(
        file=("data.jsonl", content), purpose="batch"
    )
    # The fake echoes what arrived for routes it does not know.
    assert raw.status_code == 200
    assert json.loads(raw.content)["body_bytes"] > len(content)
    seen = fake.state.requests[-1]
    assert seen.path == "/v1/files" and seen.method == "POST"
    assert seen.headers["Content-Type"].startswith("multipart/form-data")
    assert content in seen.body


def test_get_with_query_passes_through(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy({"batches": {"mode": "passthrough"}})
    raw = http.get(
        f"{proxy.base_url}/files?purpose=batch&limit=2", {"Authorization": f"Bearer {KEY_A}"}
    )
    assert raw.status == 200
    assert raw.json()["query"] == {"purpose": "batch", "limit": "2"}


async def test_hop_by_hop_headers_are_dropped(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy({"cache": {"enabled": False}})
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{proxy.base_url}/chat/completions",
            json=CHAT,
            headers={
                "Connection": "keep-alive, X-Secret-Hop",
                "X-Secret-Hop": "1",
                "Keep-Alive": "timeout=5",
                "Proxy-Authorization": "Basic abc",
                "OpenAI-Organization": "org-1",
            },
        ) as resp:
            assert resp.status == 200
    seen = {k.lower(): v for k, v in fake.state.requests[-1].headers.items()}
    assert "x-secret-hop" not in seen and "proxy-authorization" not in seen
    assert "keep-alive" not in seen
    assert seen["openai-organization"] == "org-1"


def test_passthrough_forwards_the_client_key(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy(
        {
            "upstreams": [{"name": "fake", "base_url": fake.url, "api_key": "sk-upstream"}],
            "cache": {"enabled": False},
        }
    )
    http.post(f"{proxy.base_url}/chat/completions", CHAT, {"Authorization": f"Bearer {KEY_A}"})
    assert fake.state.requests[-1].headers["Authorization"] == f"Bearer {KEY_A}"
    # No client key: the upstream's own.
    http.post(f"{proxy.base_url}/chat/completions", CHAT)
    assert fake.state.requests[-1].headers["Authorization"] == "Bearer sk-upstream"
    # Azure-style api-key header is accepted as the client's credential too, and forwarded in it.
    http.post(f"{proxy.base_url}/chat/completions", CHAT, {"api-key": "sk-azure"})
    seen = fake.state.requests[-1].headers
    assert seen["api-key"] == "sk-azure" and "Authorization" not in seen


def test_keys_mode_sends_the_upstream_key(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy(
        {
            "upstreams": [{"name": "fake", "base_url": fake.url, "api_key": "sk-upstream"}],
            "auth": {"mode": "keys", "keys": [{"name": "team", "key": KEY_A}]},
            "cache": {"enabled": False},
        }
    )
    proxy.client(KEY_A).chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert fake.state.requests[-1].headers["Authorization"] == "Bearer sk-upstream"


def test_pass_client_key_false_keeps_the_client_key_from_that_upstream(
    make_proxy: ProxyFactory, fake: Fake
) -> None:
    proxy = make_proxy(
        {
            "upstreams": [
                {
                    "name": "openai",
                    "base_url": fake.url,
                    "models": ["gpt-*"],
                    "headers": {"x-upstream": "openai"},
                },
                {
                    "name": "local",
                    "base_url": fake.url,
                    "models": ["text-embedding-*"],
                    "api_key": "sk-local",
                    "pass_client_key": False,
                    "headers": {"x-upstream": "local"},
                },
            ],
            "cache": {"enabled": False},
        }
    )
    client = proxy.client(KEY_A)
    client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert fake.state.requests[-1].headers["Authorization"] == f"Bearer {KEY_A}"
    client.embeddings.create(model="text-embedding-3-small", input="x")
    seen = fake.state.requests[-1].headers
    assert seen["x-upstream"] == "local" and seen["Authorization"] == "Bearer sk-local"
    # The merged model list asks both; the client's key goes only where it may.
    client.models.list()
    by_upstream = {
        r.headers["x-upstream"]: r.headers["Authorization"]
        for r in fake.state.requests
        if r.path == "/v1/models"
    }
    assert by_upstream == {"openai": f"Bearer {KEY_A}", "local": "Bearer sk-local"}
