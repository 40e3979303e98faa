"""``DELETE /v1/cache``: admin only; all, one tenant's part, or one entry."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from tests.cache.conftest import CHAT, HELLO, post
from tests.conftest import KEY_A, KEY_B, Fake, ProxyFactory

ADMIN = "sk-admin-0000000000"
OTHER = {**HELLO, "messages": [{"role": "user", "content": "another question"}]}


def _tenant(key: str) -> str:
    return "t_" + hashlib.sha256(key.encode()).hexdigest()[:32]


@pytest.fixture(params=["memory", "redis"])
def config(request: pytest.FixtureRequest) -> dict[str, Any]:
    admin = {"auth": {"admin_keys": [{"name": "ops", "key": ADMIN}]}}
    if request.param == "memory":
        return admin
    return {**request.getfixturevalue("redis_proxy_config"), **admin}


def _fill(url: str) -> None:
    for key in (KEY_A, KEY_B):
        for body in (HELLO, OTHER):
            assert post(url, CHAT, body, key=key).cache == "MISS"


def _delete(url: str, query: str = "", *, key: str = ADMIN, **headers: str) -> Any:
    return post(url, f"/v1/cache{query}", b"", key=key, method="DELETE", headers=headers)


def test_needs_an_admin_key(make_proxy: ProxyFactory, config: dict[str, Any]) -> None:
    proxy = make_proxy(config)
    _fill(proxy.url)
    assert _delete(proxy.url, key=KEY_A).status == 403
    no_key = post(proxy.url, "/v1/cache", b"", key="", method="DELETE")
    assert no_key.status in (401, 403)
    assert post(proxy.url, CHAT, HELLO).cache == "HIT"


def test_clear_everything(make_proxy: ProxyFactory, config: dict[str, Any]) -> None:
    proxy = make_proxy(config)
    _fill(proxy.url)
    answer = _delete(proxy.url)
    assert answer.status == 200 and answer.json()["deleted"] == 4
    assert post(proxy.url, CHAT, HELLO, key=KEY_B).cache == "MISS"


def test_clear_one_tenant(make_proxy: ProxyFactory, config: dict[str, Any]) -> None:
    proxy = make_proxy(config)
    _fill(proxy.url)
    answer = _delete(proxy.url, f"?tenant={_tenant(KEY_A)}")
    assert answer.json() == {"deleted": 2, "tenant": _tenant(KEY_A), "key": None}
    assert post(proxy.url, CHAT, HELLO, key=KEY_A).cache == "MISS"
    assert post(proxy.url, CHAT, HELLO, key=KEY_B).cache == "HIT"


def test_clear_a_tenant_named_by_its_api_key(
    make_proxy: ProxyFactory, config: dict[str, Any]
) -> None:
    proxy = make_proxy(config)
    _fill(proxy.url)
    answer = _delete(proxy.url, **{"X-Cache-Tenant-Key": KEY_B})
    assert answer.json()["deleted"] == 2
    assert post(proxy.url, CHAT, OTHER, key=KEY_B).cache == "MISS"
    assert post(proxy.url, CHAT, OTHER, key=KEY_A).cache == "HIT"


def test_clear_my_own_part(make_proxy: ProxyFactory, config: dict[str, Any]) -> None:
    proxy = make_proxy(config)
    _fill(proxy.url)
    post(proxy.url, CHAT, HELLO, key=ADMIN)
    answer = _delete(proxy.url, "?tenant=self")
    assert answer.json() == {"deleted": 1, "tenant": _tenant(ADMIN), "key": None}
    assert post(proxy.url, CHAT, HELLO, key=KEY_A).cache == "HIT"


def test_clear_one_entry_by_its_x_cache_key(
    make_proxy: ProxyFactory, config: dict[str, Any]
) -> None:
    proxy = make_proxy(config)
    _fill(proxy.url)
    digest = post(proxy.url, CHAT, HELLO, key=KEY_A).headers["x-cache-key"]
    answer = _delete(proxy.url, f"?key={digest}&tenant={_tenant(KEY_A)}")
    assert answer.json()["deleted"] == 1
    assert post(proxy.url, CHAT, HELLO, key=KEY_A).cache == "MISS"
    assert post(proxy.url, CHAT, OTHER, key=KEY_A).cache == "HIT"
    assert post(proxy.url, CHAT, HELLO, key=KEY_B).cache == "HIT"


@pytest.mark.parametrize("query", ["?tenant=sk-tenant-a", "?tenant=t_123", "?key=abc"])
def test_bad_parameters_are_rejected(make_proxy: ProxyFactory, query: str) -> None:
    proxy = make_proxy({"auth": {"admin_keys": [{"name": "ops", "key": ADMIN}]}})
    answer = _delete(proxy.url, query)
    assert answer.status == 400 and answer.json()["error"]["type"] == "invalid_request_error"


def test_clear_with_redis_down_says_so(
    make_proxy: ProxyFactory, fake: Fake, redis_proxy_config: dict[str, Any], redis_server: Any
) -> None:
    admin = {"auth": {"admin_keys": [{"name": "ops", "key": ADMIN}]}}
    proxy = make_proxy({**redis_proxy_config, **admin})
    redis_server.kill()
    try:
        answer = _delete(proxy.url)
        assert answer.status == 503 and answer.json()["error"]["code"] == "store_unavailable"
    finally:
        redis_server.start()
