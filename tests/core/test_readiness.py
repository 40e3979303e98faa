"""Self-healing readiness: a Redis outage degrades parts but keeps the replica ready, the cache
comes back by itself, and only starting or draining make the replica not ready."""

from __future__ import annotations

import re
import time

from proxy.keys import READINESS
from proxy.readiness import Readiness
from tests.conftest import Proxy, ProxyFactory
from tests.support import http
from tests.support.redis_server import RedisServer, free_port

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "ready?"}]}


def _redis_proxy(make_proxy: ProxyFactory, redis_url: str, **extra: object) -> Proxy:
    return make_proxy(
        {
            "redis": {"url": redis_url, "breaker_cooldown_s": 0.2},
            "cache": {"backend": "redis"},
            **extra,
        }
    )


def _degraded_gauge(proxy: Proxy) -> dict[str, float]:
    text = http.get(f"{proxy.url}/metrics").body.decode()
    pattern = r'^llm_proxy_degraded\{part="([^"]+)"\} (\S+)$'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text, re.M)}


def _wait_ready(proxy: Proxy, timeout_s: float = 10) -> dict[str, object]:
    """Poll /readyz (which never closes an open breaker itself) until nothing is degraded."""
    deadline = time.monotonic() + timeout_s
    while True:
        body: dict[str, object] = http.get(f"{proxy.url}/readyz").json()
        if body["status"] == "ready":
            return body
        assert time.monotonic() < deadline, f"still degraded: {body}"
        time.sleep(0.05)


def test_redis_outage_degrades_but_keeps_the_replica_ready(
    make_proxy: ProxyFactory, redis_server: RedisServer, redis_url: str
) -> None:
    proxy = _redis_proxy(make_proxy, redis_url)
    ready = http.get(f"{proxy.url}/readyz")
    assert ready.status == 200
    assert ready.json() == {"status": "ready", "problems": {}, "degraded": {}}
    assert _degraded_gauge(proxy) == {"redis": 0.0, "jobs": 0.0, "cache": 0.0}
    redis_server.kill()
    try:
        down = http.get(f"{proxy.url}/readyz")
        assert down.status == 200, down.body
        body = down.json()
        assert body["status"] == "degraded" and body["problems"] == {}
        assert set(body["degraded"]) == {"redis", "jobs", "cache"}
        assert "cache off" in body["degraded"]["cache"]
        assert "job store unavailable" in body["degraded"]["jobs"]
        assert _degraded_gauge(proxy) == {"redis": 1.0, "jobs": 1.0, "cache": 1.0}
        # And it does serve: the cache fails open.
        served = http.post(f"{proxy.base_url}/chat/completions", CHAT)
        assert served.status == 200 and served.headers["x-cache"] == "MISS"
    finally:
        redis_server.start()


def test_the_cache_comes_back_with_no_traffic(
    make_proxy: ProxyFactory, redis_server: RedisServer, redis_url: str
) -> None:
    proxy = _redis_proxy(make_proxy, redis_url)
    redis_server.kill()
    try:
        # Requests during the outage open the cache's breaker.
        assert http.post(f"{proxy.base_url}/chat/completions", CHAT).headers["x-cache"] == "MISS"
        assert "cache" in http.get(f"{proxy.url}/readyz").json()["degraded"]
    finally:
        redis_server.start()
    # No request between the restart and here: only the background probe can close it.
    _wait_ready(proxy)
    assert _degraded_gauge(proxy)["cache"] == 0.0
    first = http.post(f"{proxy.base_url}/chat/completions", CHAT)
    second = http.post(f"{proxy.base_url}/chat/completions", CHAT)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")


def test_an_outage_without_traffic_shows_and_heals(
    make_proxy: ProxyFactory, redis_server: RedisServer, redis_url: str
) -> None:
    proxy = _redis_proxy(make_proxy, redis_url)
    redis_server.kill()
    try:
        assert "cache" in http.get(f"{proxy.url}/readyz").json()["degraded"]
    finally:
        redis_server.start()
    _wait_ready(proxy)


def test_an_upstream_outage_is_not_a_readiness_failure(make_proxy: ProxyFactory) -> None:
    gone = f"http://127.0.0.1:{free_port()}/v1"
    proxy = make_proxy({"upstreams": [{"name": "gone", "base_url": gone, "models": ["*"]}]})
    assert http.post(f"{proxy.base_url}/chat/completions", CHAT).status == 502
    ready = http.get(f"{proxy.url}/readyz")
    assert ready.status == 200 and ready.json()["status"] == "ready"


def test_draining_is_not_ready(proxy: Proxy) -> None:
    assert http.get(f"{proxy.url}/readyz").status == 200
    proxy.live.bg.call(proxy.app[READINESS].drain)
    down = http.get(f"{proxy.url}/readyz")
    assert down.status == 503 and down.json()["status"] == "draining"
    assert "draining" in down.json()["problems"]
    # Still serving what arrives while the load balancer takes it out.
    assert http.post(f"{proxy.base_url}/chat/completions", CHAT).status == 200


async def test_starting_is_not_ready() -> None:
    readiness = Readiness()
    status, body = await readiness.report()
    assert status == 503 and "starting" in body["problems"]
    await readiness.start()
    assert (await readiness.report())[0] == 200
    await readiness.stop()
    assert (await readiness.report())[0] == 503
