"""Helpers for the cache tests: raw HTTP against a running proxy, and backend factories."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from proxy.cache.memory import MemoryBackend
from proxy.cache.redis import RedisBackend, open_cache_redis
from proxy.config import CacheSettings, RedisSettings
from proxy.metrics import Metrics
from tests.conftest import KEY_A
from tests.support.live import BackgroundLoop

CHAT = "/v1/chat/completions"
HELLO = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello cache"}]}


class Raw:
    """One raw HTTP answer."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def cache(self) -> str | None:
        return self.headers.get("x-cache")

    def json(self) -> Any:
        return json.loads(self.body)


def post(
    base: str,
    path: str,
    body: dict[str, Any] | bytes,
    *,
    key: str = KEY_A,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> Raw:
    """A raw request with urllib (no proxies from the environment)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    all_headers.update(headers or {})
    request = urllib.request.Request(f"{base}{path}", data=data, headers=all_headers, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as resp:
            return Raw(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as exc:
        return Raw(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


def http_chunks(
    bg: BackgroundLoop, url: str, body: dict[str, Any], *, key: str = KEY_A
) -> tuple[dict[str, str], list[bytes]]:
    """POST and collect the answer's HTTP chunks as sent (chunked transfer boundaries)."""

    async def go() -> tuple[dict[str, str], list[bytes]]:
        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json=body, headers=headers) as resp:
                chunks: list[bytes] = []
                buffer = b""
                async for data, end in resp.content.iter_chunks():
                    buffer += data
                    if end and buffer:  # (b"", True) is the terminating zero-size chunk
                        chunks.append(buffer)
                        buffer = b""
                if buffer:
                    chunks.append(buffer)
                return {k.lower(): v for k, v in resp.headers.items()}, chunks

    return bg.run(go())


def wait_for(condition: Callable[[], bool], *, timeout_s: float = 10.0, what: str = "") -> None:
    """Poll ``condition`` until true (bounded); the thing waited for is observable."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


#: The product's 50 ms Redis bound is for a quiet server; a 2-core CI machine running the suite
#: is not one. Tests that measure the bound itself set it explicitly.
TEST_OP_TIMEOUT_MS = 500.0


def make_memory(**options: Any) -> MemoryBackend:
    defaults: dict[str, Any] = {"max_entries": 1000, "max_bytes": 1 << 20, "metrics": Metrics()}
    return MemoryBackend(**{**defaults, **options})


def make_redis(url: str, **options: Any) -> RedisBackend:
    options.setdefault("op_timeout_ms", TEST_OP_TIMEOUT_MS)
    redis = RedisSettings(url=url, **{k: v for k, v in options.items() if k != "cache"})
    cache = options.get("cache") or CacheSettings(backend="redis")
    return RedisBackend(open_cache_redis(redis), redis=redis, cache=cache, metrics=Metrics())


@pytest.fixture
def redis_proxy_config(redis_url: str) -> dict[str, Any]:
    return {
        "cache": {"backend": "redis"},
        "redis": {"url": redis_url, "breaker_cooldown_s": 0.2},
    }
