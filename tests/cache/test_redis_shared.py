"""The Redis backend through running proxies: shared by replicas, failing open, recovering."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from typing import Any

from proxy.cache.redis import RedisBackend
from proxy.keys import CACHE, METRICS
from tests.cache.conftest import CHAT, HELLO, make_redis, post, wait_for
from tests.conftest import Fake, ProxyFactory, deep_merge
from tests.support.redis_server import RedisServer


def _readyz(url: str) -> tuple[int, dict[str, Any]]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}/readyz", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_two_proxies_share_one_redis(
    make_proxy: ProxyFactory, fake: Fake, redis_proxy_config: dict[str, Any]
) -> None:
    one, two = make_proxy(redis_proxy_config), make_proxy(redis_proxy_config)
    assert post(one.url, CHAT, HELLO).cache == "MISS"
    hit = post(two.url, CHAT, HELLO)
    assert hit.cache == "HIT"
    assert fake.state.calls[CHAT] == 1
    stream = {**HELLO, "messages": [{"role": "user", "content": "streamed"}], "stream": True}
    assert post(two.url, CHAT, stream).cache == "MISS"
    assert post(one.url, CHAT, stream).cache == "HIT"


def test_redis_killed_mid_run_fails_open_then_recovers(
    make_proxy: ProxyFactory,
    fake: Fake,
    redis_proxy_config: dict[str, Any],
    redis_server: RedisServer,
) -> None:
    proxy = make_proxy(redis_proxy_config)
    post(proxy.url, CHAT, HELLO)
    assert post(proxy.url, CHAT, HELLO).cache == "HIT"
    redis_server.kill()
    try:
        for _ in range(5):
            answer = post(proxy.url, CHAT, HELLO)
            assert (answer.status, answer.cache) == (200, "MISS")
            assert answer.json()["choices"][0]["message"]["content"] == "echo: hello cache"
        status, ready = _readyz(proxy.url)
        # Degraded, still ready: every synchronous request is served (issue 13.3).
        assert status == 200 and "cache" in ready["degraded"]
        errors = proxy.app[METRICS].redis_errors.labels(op="get")._value.get()
        assert 1 <= errors < 5  # the breaker stops trying after the first failure
    finally:
        redis_server.start()
    # Redis is back, empty: the next request after the cooldown reaches it again.
    wait_for(lambda: post(proxy.url, CHAT, HELLO).cache == "HIT", what="hits after restart")
    assert _readyz(proxy.url)[1]["degraded"].get("cache") is None


def test_slow_redis_is_bounded_by_the_op_timeout(
    make_proxy: ProxyFactory,
    fake: Fake,
    redis_proxy_config: dict[str, Any],
    redis_server: RedisServer,
) -> None:
    """A Redis that accepts connections but never answers (SIGSTOP) costs one op timeout
    (per Redis user: the cache and the cross-replica single flight each have a breaker)."""
    config = deep_merge(redis_proxy_config, {"redis": {"op_timeout_ms": 50}})
    proxy = make_proxy(config)
    post(proxy.url, CHAT, HELLO)
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        answer = post(proxy.url, CHAT, HELLO)
        elapsed = time.monotonic() - started
        assert (answer.status, answer.cache) == (200, "MISS")
        assert elapsed < 0.5
        # The breaker is open now: the next requests do not even wait the timeout.
        started = time.monotonic()
        for _ in range(5):
            assert post(proxy.url, CHAT, HELLO).cache == "MISS"
        assert time.monotonic() - started < 0.5
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)


def test_garbage_in_redis_reads_as_a_miss(
    make_proxy: ProxyFactory,
    fake: Fake,
    redis_proxy_config: dict[str, Any],
    redis_server: RedisServer,
) -> None:
    proxy = make_proxy(redis_proxy_config)
    first = post(proxy.url, CHAT, HELLO)
    client = redis_server.client()
    (name,) = client.keys("llmproxy:cache:*")
    for garbage in (b"\x01not zlib", b"\x00LPC1\xff\xff\xff\xff{", b"", b"\x07??"):
        client.set(name, garbage)
        again = post(proxy.url, CHAT, HELLO)
        assert (again.status, again.cache) == (200, "MISS")
        assert again.body == first.body
    assert post(proxy.url, CHAT, HELLO).cache == "HIT"  # the miss wrote a good entry back
    client.close()


def test_large_values_are_compressed(
    make_proxy: ProxyFactory,
    fake: Fake,
    redis_proxy_config: dict[str, Any],
    redis_server: RedisServer,
) -> None:
    proxy = make_proxy(redis_proxy_config)
    big = {"model": "text-embedding-3-small", "input": "x", "dimensions": 2048}
    small = {"model": "text-embedding-3-small", "input": "y"}
    sizes = {}
    for body in (big, small):
        answer = post(proxy.url, "/v1/embeddings", body)
        key = answer.headers["x-cache-key"]
        (name,) = redis_server.client().keys(f"llmproxy:cache:*{key}")
        sizes[len(answer.body)] = redis_server.client().get(name)
    (big_len, big_raw), (small_len, small_raw) = sorted(sizes.items(), reverse=True)
    assert big_raw[:1] == b"\x01" and len(big_raw) < big_len
    assert small_raw[:1] == b"\x00"
    backend = proxy.app[CACHE].backend
    assert isinstance(backend, RedisBackend)


async def test_breaker_opens_and_closes(redis_server: RedisServer, redis_url: str) -> None:
    backend = make_redis(redis_url, breaker_cooldown_s=0.1)
    try:
        await backend.set("t_x:" + "0" * 64, b"v", ttl_s=60)
        redis_server.kill()
        assert await backend.get("t_x:" + "0" * 64) is None
        assert backend.problem() is not None
        # Open: no attempt at all during the cooldown.
        before = backend._metrics.redis_errors.labels(op="get")._value.get()  # type: ignore[union-attr]
        assert await backend.get("t_x:" + "0" * 64) is None
        after = backend._metrics.redis_errors.labels(op="get")._value.get()  # type: ignore[union-attr]
        assert after == before
        redis_server.start()
        deadline = time.monotonic() + 5
        while await backend.get("t_x:" + "1" * 64) is None and backend.problem() is not None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert backend.problem() is None
    finally:
        if redis_server.proc is None:
            redis_server.start()
        await backend.close()


def test_breaker_logs_an_outage_once_per_interval(caplog: Any) -> None:
    from proxy.breaker import Breaker

    now = [100.0]
    breaker = Breaker(
        cooldown_s=1.0, name="cache redis", fallback="serving without cache", clock=lambda: now[0]
    )
    with caplog.at_level("WARNING", logger="proxy.breaker"):
        for _ in range(20):  # twenty failing requests within the interval: one line
            breaker.failed("get", ConnectionError("refused"))
            assert not breaker.allow()  # open for the cooldown
            now[0] += 1.0
            assert breaker.allow()  # then one more try
        now[0] += 30
        breaker.failed("get", ConnectionError("refused"))  # a new interval: one more line
        breaker.succeeded()
        breaker.succeeded()  # already closed: no second "back" line
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert "19 more failures" in lines[1]
    assert lines[2] == "cache redis is back"
