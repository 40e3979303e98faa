"""Shared fixtures: a real redis-server, the fake upstream, running proxies, SDK clients."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from bench.fake_upstream import STATE, FakeState, create_fake_upstream
from proxy.app import create_app
from proxy.config import parse_settings
from tests.support.live import BackgroundLoop, LiveApp
from tests.support.redis_server import RedisServer

KEY_A = "sk-tenant-a-0123456789"
KEY_B = "sk-tenant-b-9876543210"


@pytest.fixture(scope="session")
def bg() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A running, empty Redis (restarted if a previous test killed it)."""
    if redis_server.proc is None:
        redis_server.start()
    redis_server.flush()
    return redis_server.url


class Fake:
    def __init__(self, live: LiveApp) -> None:
        self.live = live
        self.state: FakeState = live.app[STATE]

    @property
    def url(self) -> str:
        return f"{self.live.url}/v1"


@pytest.fixture
def fake(bg: BackgroundLoop) -> Iterator[Fake]:
    live = LiveApp(bg, create_fake_upstream()).start()
    yield Fake(live)
    live.stop()


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class Proxy:
    def __init__(self, live: LiveApp) -> None:
        self.live = live
        self.app = live.app
        self._clients: list[openai.OpenAI] = []

    @property
    def url(self) -> str:
        return self.live.url

    @property
    def base_url(self) -> str:
        return f"{self.live.url}/v1"

    def client(self, api_key: str = KEY_A, **kwargs: Any) -> openai.OpenAI:
        """A sync SDK client, closed when the test ends."""
        client = openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, **kwargs)
        self._clients.append(client)
        return client

    def close_clients(self) -> None:
        for client in self._clients:
            client.close()

    def async_client(self, api_key: str = KEY_A, **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, **kwargs)


ProxyFactory = Callable[..., Proxy]


@pytest.fixture
def make_proxy(bg: BackgroundLoop, fake: Fake) -> Iterator[ProxyFactory]:
    """Start proxies in front of ``fake``; ``config`` is merged over a minimal file."""
    started: list[Proxy] = []

    def make(config: dict[str, Any] | None = None) -> Proxy:
        base: dict[str, Any] = {
            "upstreams": [{"name": "fake", "base_url": fake.url, "models": ["*"]}],
            # The product's 50 ms Redis bound is for a quiet server, not a loaded 2-core CI
            # machine; tests that measure the bound itself set it explicitly.
            "redis": {"op_timeout_ms": 500},
            # The request log (on by default) would write to the terminal after a test's capture
            # has ended; tests of the log turn it on (tests/observe).
            "server": {"access_log": False},
        }
        settings = parse_settings(deep_merge(base, config or {}), env={})
        proxy = Proxy(LiveApp(bg, create_app(settings)).start())
        started.append(proxy)
        return proxy

    yield make
    for proxy in reversed(started):
        proxy.close_clients()
        proxy.live.stop()


@pytest.fixture
def proxy(make_proxy: ProxyFactory) -> Proxy:
    """A proxy with the cache off: every request reaches the upstream."""
    return make_proxy({"cache": {"enabled": False}})
