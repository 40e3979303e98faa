"""Helpers for the job tests: raw HTTP, bounded polling, proxies with Redis-backed jobs."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from tests.conftest import KEY_A, Proxy, ProxyFactory

T = TypeVar("T")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Resp:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def http(
    method: str,
    url: str,
    body: Any = None,
    *,
    key: str | None = KEY_A,
    headers: dict[str, str] | None = None,
) -> Resp:
    data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with _OPENER.open(req, timeout=30) as resp:
            return Resp(resp.status, dict(resp.headers), resp.read())
    except urllib.error.HTTPError as exc:
        return Resp(exc.code, dict(exc.headers), exc.read())


def wait_for(check: Callable[[], T | None], *, timeout_s: float = 20, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        time.sleep(0.02)


def finished(base: str, job_id: str, key: str = KEY_A, timeout_s: float = 20) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        job = http("GET", f"{base}/v1/jobs/{job_id}", key=key).json()
        return job if job["status"] in ("completed", "failed", "cancelled") else None

    return wait_for(check, timeout_s=timeout_s, what=f"job {job_id} to finish")


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
EMBED = {"model": "text-embedding-3-small", "input": "hello"}


@pytest.fixture
def jobs_proxy(make_proxy: ProxyFactory, redis_url: str) -> Callable[..., Proxy]:
    """A proxy with the cache off and jobs on Redis; ``jobs`` settings merged in."""

    def make(jobs: dict[str, Any] | None = None, **extra: Any) -> Proxy:
        config: dict[str, Any] = {
            "cache": {"enabled": False},
            "redis": {"url": redis_url},
            "jobs": {"backoff_base_s": 0.01, "poll_interval_s": 0.1, **(jobs or {})},
            **extra,
        }
        return make_proxy(config)

    return make
