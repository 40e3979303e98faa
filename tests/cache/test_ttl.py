"""TTLs from clients are parsed strictly and clamped; a store that fails is never the client's
error, and a client's value can never open the cache's circuit breaker."""

from __future__ import annotations

import math
from typing import Any

import pytest

from proxy.cache.redis import RedisBackend
from proxy.call import CacheControl
from proxy.config import CacheSettings
from proxy.errors import InvalidRequest
from proxy.keys import CACHE
from tests.cache.conftest import CHAT, HELLO, make_redis, post
from tests.conftest import KEY_B, Fake, ProxyFactory, deep_merge
from tests.support.live import BackgroundLoop
from tests.support.redis_server import RedisServer

EMBEDDINGS = "/v1/embeddings"
THIRTY_DAYS_MS = 30 * 86400 * 1000
BAD = ["inf", "-inf", "nan", "-1", "soon", "1_000", "1e400", "0x10", ""]
#: One request per cached path: JSON, stream, and embeddings (answered per input).
REQUESTS = {
    "json": (CHAT, HELLO),
    "stream": (CHAT, {**HELLO, "stream": True}),
    "embeddings": (EMBEDDINGS, {"model": "text-embedding-3-small", "input": ["a", "b"]}),
}


@pytest.mark.parametrize("value", BAD)
def test_a_bad_x_cache_ttl_is_refused(value: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        CacheControl.parse(None, value if value else " ")
    assert caught.value.param == "X-Cache-TTL"


@pytest.mark.parametrize("value", BAD)
def test_a_bad_max_age_is_refused(value: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        CacheControl.parse(f"max-age={value}", None)
    assert caught.value.param == "Cache-Control"


def test_good_values_parse() -> None:
    control = CacheControl.parse("no-cache, max-age=0", "0.5")
    assert (control.no_cache, control.max_age_s, control.ttl_s) == (True, 0.0, 0.5)
    assert CacheControl.parse('max-age="60"', "1e16").ttl_s == 1e16  # clamped where stored
    assert CacheControl.parse(None, "0").ttl_s == 0.0  # stores nothing


@pytest.mark.parametrize("route", list(REQUESTS))
@pytest.mark.parametrize(
    "headers",
    [{"X-Cache-TTL": "inf"}, {"X-Cache-TTL": "nan"}, {"X-Cache-TTL": "-5"}]
    + [{"X-Cache-TTL": "forever"}, {"Cache-Control": "max-age=inf"}]
    + [{"Cache-Control": "no-cache, max-age=-1"}],
    ids=["ttl-inf", "ttl-nan", "ttl-negative", "ttl-garbage", "max-age-inf", "max-age-negative"],
)
def test_a_bad_value_is_a_400_before_the_upstream(
    make_proxy: ProxyFactory, fake: Fake, route: str, headers: dict[str, str]
) -> None:
    proxy = make_proxy()
    path, body = REQUESTS[route]
    answer = post(proxy.url, path, body, headers=headers)
    assert answer.status == 400
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_cache_header"
    assert set(error) == {"message", "type", "param", "code"}
    assert sum(fake.state.calls.values()) == 0


def _cache_pttls(redis_server: RedisServer) -> list[int]:
    client = redis_server.client()
    try:
        return [int(client.pttl(name)) for name in client.scan_iter(match="llmproxy:cache:*")]
    finally:
        client.close()


@pytest.mark.parametrize("route", list(REQUESTS))
def test_a_huge_ttl_is_clamped_and_keeps_the_shared_cache_on(
    make_proxy: ProxyFactory,
    fake: Fake,
    redis_proxy_config: dict[str, Any],
    redis_server: RedisServer,
    route: str,
) -> None:
    """``1e16`` s made Redis refuse the SET, which opened the breaker for every tenant."""
    proxy = make_proxy(deep_merge(redis_proxy_config, {"redis": {"breaker_cooldown_s": 60}}))
    path, body = REQUESTS[route]
    answer = post(proxy.url, path, body, headers={"X-Cache-TTL": "1e16"})
    assert (answer.status, answer.cache) == (200, "MISS")
    assert not answer.body or answer.body.rstrip().endswith((b"[DONE]", b"}"))
    backend = proxy.app[CACHE].backend
    assert isinstance(backend, RedisBackend)
    assert not backend.breaker.is_open
    pttls = _cache_pttls(redis_server)
    assert pttls and all(0 < t <= THIRTY_DAYS_MS for t in pttls)
    assert max(pttls) > THIRTY_DAYS_MS - 60_000  # clamped to the maximum, not refused
    assert post(proxy.url, path, body).cache == "HIT"
    other = post(proxy.url, CHAT, HELLO, key=KEY_B)  # another tenant still has a cache
    assert other.cache == "MISS" and post(proxy.url, CHAT, HELLO, key=KEY_B).cache == "HIT"


def test_every_ttl_is_clamped_to_max_ttl_s(
    make_proxy: ProxyFactory,
    fake: Fake,
    redis_proxy_config: dict[str, Any],
    redis_server: RedisServer,
) -> None:
    config = deep_merge(redis_proxy_config, {"cache": {"max_ttl_s": 100, "default_ttl_s": 500}})
    proxy = make_proxy(config)
    post(proxy.url, CHAT, HELLO)
    post(proxy.url, CHAT, {**HELLO, "stream": True, "seed": 1}, headers={"X-Cache-TTL": "1e9"})
    post(proxy.url, EMBEDDINGS, REQUESTS["embeddings"][1], headers={"X-Cache-TTL": "1e9"})
    pttls = _cache_pttls(redis_server)
    assert len(pttls) == 5 and all(0 < t <= 100_000 for t in pttls)  # 2 per-input entries


def test_x_cache_ttl_zero_still_stores_nothing(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy()
    for n, (path, body) in enumerate(REQUESTS.values()):
        body = {**body, "seed": n} if path == CHAT else body  # one entry per request
        assert post(proxy.url, path, body, headers={"X-Cache-TTL": "0"}).status == 200
        assert post(proxy.url, path, body).cache == "MISS"


@pytest.mark.parametrize("ttl_s", [math.inf, math.nan, 1e16, -1.0], ids=str)
def test_the_redis_backend_survives_any_ttl(
    bg: BackgroundLoop, redis_url: str, ttl_s: float
) -> None:
    """The last line of defence: a TTL that reaches the backend never raises, never trips."""
    backend = make_redis(redis_url, cache=CacheSettings(backend="redis", max_ttl_s=100))

    async def go() -> tuple[bool, bytes | None]:
        try:
            await backend.set("scope:k", b"v", ttl_s=ttl_s)
            return backend.breaker.is_open, await backend.get("scope:k")
        finally:
            await backend.close()

    is_open, value = bg.run(go())
    assert not is_open
    assert value == (b"v" if ttl_s > 0 else None)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_write_redis_refuses_is_no_error_and_keeps_the_reads(
    make_proxy: ProxyFactory,
    fake: Fake,
    redis_proxy_config: dict[str, Any],
    redis_server: RedisServer,
    stream: bool,
) -> None:
    """A refused SET (here: Redis out of memory) is not an outage: hits keep being served."""
    proxy = make_proxy(deep_merge(redis_proxy_config, {"redis": {"breaker_cooldown_s": 60}}))
    post(proxy.url, CHAT, HELLO)
    admin = redis_server.client()
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1")
    try:
        body = {**HELLO, "messages": [{"role": "user", "content": "new"}], "stream": stream}
        answer = post(proxy.url, CHAT, body)
        assert (answer.status, answer.cache) == (200, "MISS")
        assert answer.body.endswith(b"data: [DONE]\n\n" if stream else b"}")
        assert post(proxy.url, CHAT, body).cache == "MISS"  # it was refused, not stored
        assert post(proxy.url, CHAT, HELLO).cache == "HIT"  # and reads go on
        backend = proxy.app[CACHE].backend
        assert isinstance(backend, RedisBackend) and not backend.breaker.is_open
    finally:
        admin.config_set("maxmemory", "0")
        admin.close()
