"""Who may call, and which credential goes upstream in which header.

Admin keys on admin routes in both modes; the client's credential forwarded as sent, in the header
it came in; an upstream's own key in its ``auth_header``; a keyless caller lent the upstream's key
only from loopback unless ``auth.lend_upstream_key``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from proxy.app import create_app
from proxy.auth import Authenticator, credential_header, is_loopback
from proxy.config import AuthSettings, load_config, parse_settings
from proxy.errors import AuthenticationFailed
from proxy.keys import IDENTITY
from proxy.middlewares import admin_route
from tests.conftest import KEY_A, KEY_B, Fake, Proxy, ProxyFactory, deep_merge
from tests.jobs.conftest import finished
from tests.support import http
from tests.support.live import BackgroundLoop, LiveApp

ADMIN = "sk-admin-0000000000"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
KEYS_MODE = {
    "auth": {
        "mode": "keys",
        "keys": [{"name": "team", "key": KEY_A}],
        "admin_keys": [{"name": "ops", "key": ADMIN}],
    }
}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def seen_headers(fake: Fake) -> dict[str, str]:
    return {k.lower(): v for k, v in fake.state.requests[-1].headers.items()}


# --- admin routes --------------------------------------------------------------------------------


def test_admin_key_purges_the_cache_in_keys_mode(make_proxy: ProxyFactory) -> None:
    proxy = make_proxy(KEYS_MODE)
    assert http.post(f"{proxy.base_url}/chat/completions", CHAT, bearer(KEY_A)).status == 200
    purge = http.request("DELETE", f"{proxy.base_url}/cache", headers=bearer(ADMIN))
    assert purge.status == 200, purge.body
    assert purge.json()["deleted"] == 1
    # ``self`` is the admin key's own part, not a client tenant.
    own = http.request("DELETE", f"{proxy.base_url}/cache?tenant=self", headers=bearer(ADMIN))
    assert own.status == 200 and own.json()["tenant"].startswith("t_"), own.body
    # A client key is not an admin key, and an admin key is not a client key.
    refused = http.request("DELETE", f"{proxy.base_url}/cache", headers=bearer(KEY_A))
    assert refused.status == 403 and refused.json()["error"]["code"] == "forbidden"
    missing = http.request("DELETE", f"{proxy.base_url}/cache")
    assert missing.status == 401 and missing.json()["error"]["type"] == "invalid_request_error"
    as_client = http.post(f"{proxy.base_url}/chat/completions", CHAT, bearer(ADMIN))
    assert as_client.status == 401


def test_admin_route_marks_any_route(bg: BackgroundLoop, fake: Fake) -> None:
    """The notion other admin routes reuse: ``@admin_route``, in either mode."""

    @admin_route
    async def ops(request: web.Request) -> web.Response:
        return web.json_response({"tenant": request[IDENTITY].tenant})

    for mode in ({}, KEYS_MODE):
        base = {
            "upstreams": [{"name": "fake", "base_url": fake.url}],
            "server": {"access_log": False},
        }
        config = deep_merge(base, mode)
        config = deep_merge(config, {"auth": {"admin_keys": [{"name": "ops", "key": ADMIN}]}})
        app = create_app(parse_settings(config, env={}))
        app.router.add_get("/ops/example", ops)
        live = LiveApp(bg, app).start()
        try:
            assert http.get(f"{live.url}/ops/example", bearer(ADMIN)).status == 200
            assert http.get(f"{live.url}/ops/example", bearer(KEY_A)).status == 403
            assert http.get(f"{live.url}/ops/example").status == 401
        finally:
            live.stop()


# --- the forwarded credential --------------------------------------------------------------------


def test_azure_api_key_is_forwarded_in_api_key(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy({"upstreams": [{"name": "fake", "base_url": fake.url, "api_key": "sk-up"}]})
    assert http.post(f"{proxy.base_url}/chat/completions", CHAT, {"api-key": KEY_A}).status == 200
    seen = seen_headers(fake)
    assert seen["api-key"] == KEY_A and "authorization" not in seen


def test_upstream_auth_header_api_key(make_proxy: ProxyFactory, fake: Fake) -> None:
    upstream = {"name": "azure", "base_url": fake.url, "api_key": "sk-az", "auth_header": "api-key"}
    proxy = make_proxy({"upstreams": [upstream], "cache": {"enabled": False}})
    assert http.post(f"{proxy.base_url}/chat/completions", CHAT).status == 200
    seen = seen_headers(fake)
    assert seen["api-key"] == "sk-az" and "authorization" not in seen
    # A client's own Bearer key still goes as it came.
    assert http.post(f"{proxy.base_url}/chat/completions", CHAT, bearer(KEY_A)).status == 200
    seen = seen_headers(fake)
    assert seen["authorization"] == f"Bearer {KEY_A}" and "api-key" not in seen


def test_each_spelling_of_a_key_is_forwarded_as_sent(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy({"cache": {"enabled": False}})
    url = f"{proxy.base_url}/chat/completions"
    for value in (KEY_A, f"Bearer {KEY_A}", f"bearer  {KEY_A}", f"Bearer {KEY_A}"):
        assert http.post(url, CHAT, {"Authorization": value}).status == 200
        assert seen_headers(fake)["authorization"] == value
    assert http.post(url, CHAT, {"api-key": KEY_A}).status == 200
    seen = seen_headers(fake)
    assert seen["api-key"] == KEY_A and "authorization" not in seen


def test_the_same_key_is_one_tenant_in_every_header() -> None:
    auth = Authenticator(AuthSettings())
    spellings = [{"Authorization": f"Bearer {KEY_A}"}, {"Authorization": KEY_A}, {"api-key": KEY_A}]
    tenants = {auth.identify(h, peer="127.0.0.1").tenant for h in spellings}
    assert len(tenants) == 1
    assert auth.identify({"api-key": KEY_B}).tenant not in tenants


def test_a_fresh_authenticator_refuses_a_removed_key() -> None:
    """A reload builds a new Authenticator: what the old one knew does not carry over."""
    keys = {"mode": "keys", "keys": [{"name": "a", "key": KEY_A}]}
    old = Authenticator(AuthSettings.model_validate(keys))
    assert old.identify(bearer(KEY_A)).tenant.startswith("t_")
    reloaded = {**keys, "keys": [{"name": "b", "key": KEY_B}]}
    new = Authenticator(AuthSettings.model_validate(reloaded))
    with pytest.raises(AuthenticationFailed):
        new.identify(bearer(KEY_A))
    assert old.identify(bearer(KEY_A)).tenant.startswith("t_")


def test_credential_header_reads_older_bare_values() -> None:
    assert credential_header("Authorization: Bearer sk-1") == ("Authorization", "Bearer sk-1")
    assert credential_header("api-key: sk-1") == ("api-key", "sk-1")
    assert credential_header("Bearer sk-1") == ("Authorization", "Bearer sk-1")


def test_an_async_job_keeps_the_header_of_the_credential(
    make_proxy: ProxyFactory, fake: Fake, redis_url: str
) -> None:
    proxy = make_proxy(
        {"redis": {"url": redis_url}, "cache": {"enabled": False}, "jobs": {"store": "redis"}}
    )
    headers = {"api-key": KEY_A, "Prefer": "respond-async"}
    accepted = http.post(f"{proxy.base_url}/chat/completions", CHAT, headers)
    assert accepted.status == 202, accepted.body
    assert finished(proxy.url, accepted.json()["id"])["status"] == "completed"
    seen = seen_headers(fake)
    assert seen["api-key"] == KEY_A and "authorization" not in seen


# --- lending the upstream's key --------------------------------------------------------------


REMOTE = "203.0.113.7"


@pytest.fixture
def remote_proxy(bg: BackgroundLoop, fake: Fake) -> Iterator[Any]:
    """Start a proxy whose callers all appear to come from ``REMOTE`` (another host)."""
    started: list[LiveApp] = []

    @web.middleware
    async def from_elsewhere(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await handler(request.clone(remote=REMOTE))

    def make(config: dict[str, Any]) -> Proxy:
        base = {
            "upstreams": [{"name": "fake", "base_url": fake.url, "api_key": "sk-up"}],
            "server": {"access_log": False},
        }
        app = create_app(parse_settings(deep_merge(base, config), env={}))
        app.middlewares.insert(0, from_elsewhere)
        live = LiveApp(bg, app).start()
        started.append(live)
        return Proxy(live)

    yield make
    for live in started:
        live.stop()


def test_keyless_caller_off_loopback_is_not_lent_the_key(remote_proxy: Any, fake: Fake) -> None:
    proxy = remote_proxy({"cache": {"enabled": False}})
    refused = http.post(f"{proxy.base_url}/chat/completions", CHAT)
    assert refused.status == 401, refused.body
    error = refused.json()["error"]
    assert "auth.lend_upstream_key" in error["message"] and "sk-up" not in error["message"]
    assert http.get(f"{proxy.base_url}/models").status == 401
    assert fake.state.requests == []
    # With a key of its own, the caller is served with it.
    assert http.post(f"{proxy.base_url}/chat/completions", CHAT, bearer(KEY_A)).status == 200
    assert seen_headers(fake)["authorization"] == f"Bearer {KEY_A}"


def test_lend_upstream_key_true_lends_it_to_every_caller(remote_proxy: Any, fake: Fake) -> None:
    proxy = remote_proxy({"auth": {"lend_upstream_key": True}, "cache": {"enabled": False}})
    assert http.post(f"{proxy.base_url}/chat/completions", CHAT).status == 200
    assert seen_headers(fake)["authorization"] == "Bearer sk-up"


def test_nothing_to_lend_keyless_callers_pass(remote_proxy: Any, fake: Fake) -> None:
    proxy = remote_proxy({"upstreams": [{"name": "fake", "base_url": fake.url, "api_key": None}]})
    assert http.post(f"{proxy.base_url}/chat/completions", CHAT).status == 200
    assert "authorization" not in seen_headers(fake)


def test_loopback_keyless_caller_is_lent_the_key(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy({"upstreams": [{"name": "fake", "base_url": fake.url, "api_key": "sk-up"}]})
    assert http.post(f"{proxy.base_url}/chat/completions", CHAT).status == 200
    assert seen_headers(fake)["authorization"] == "Bearer sk-up"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("0.0.0.0", False),
        ("example.com", False),
        (None, False),
    ],
)
def test_is_loopback(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_example_config_listens_on_loopback_and_lends_nothing() -> None:
    example = Path(__file__).resolve().parents[2] / "config.example.yaml"
    settings = load_config(example, env={})
    assert settings.server.host == "127.0.0.1"
    assert settings.auth.lend_upstream_key is False
    lending = load_config(example, env={"LLM_PROXY_LEND_UPSTREAM_KEY": "true"})
    assert lending.auth.lend_upstream_key is True
