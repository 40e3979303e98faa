"""Webhooks (signed, verified by the test's receiver), Redis down, and the memory store."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterator

import pytest
from aiohttp import web

from tests.conftest import Proxy, ProxyFactory
from tests.jobs.conftest import CHAT, finished, http, wait_for
from tests.support.live import BackgroundLoop, LiveApp
from tests.support.redis_server import RedisServer

SECRET = "whsec-test"


class Receiver:
    def __init__(self, bg: BackgroundLoop) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = 0
        app = web.Application()
        app.router.add_post("/hook", self.hook)
        app.router.add_post("/moved", self.moved)
        self.live = LiveApp(bg, app).start()

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=503)
        self.got.append((dict(request.headers), body))
        return web.Response(status=204)

    async def moved(self, request: web.Request) -> web.Response:
        self.got.append((dict(request.headers), b"moved"))
        raise web.HTTPFound(f"{self.live.url}/hook")


@pytest.fixture
def receiver(bg: BackgroundLoop) -> Iterator[Receiver]:
    r = Receiver(bg)
    yield r
    r.live.stop()


def verify(headers: dict[str, str], body: bytes) -> bool:
    parts = dict(p.split("=", 1) for p in headers["X-Signature"].split(","))
    mac = hmac.new(SECRET.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256)
    fresh = abs(time.time() - int(parts["t"])) < 60
    return fresh and hmac.compare_digest(mac.hexdigest(), parts["v1"])


def test_webhook_is_signed_and_retried(
    jobs_proxy: Callable[..., Proxy], receiver: Receiver
) -> None:
    p = jobs_proxy({"webhook_secret": SECRET, "callback_allow": ["127.0.0.1"]})
    receiver.fail_first = 1
    url = f"{receiver.live.url}/hook"
    body = {"endpoint": "/v1/chat/completions", "body": CHAT, "callback_url": url}
    job = http("POST", f"{p.url}/v1/jobs", body).json()
    assert job["callback_url"] == url
    done = finished(p.url, job["id"])
    wait_for(lambda: receiver.got, timeout_s=10, what="the webhook")
    headers, raw = receiver.got[0]
    assert verify(headers, raw)
    assert not verify({"X-Signature": headers["X-Signature"]}, raw + b" ")
    assert headers["X-Job-Id"] == job["id"]
    assert json.loads(raw) == done
    assert b"sk-tenant" not in raw


def test_webhook_does_not_follow_redirects(
    jobs_proxy: Callable[..., Proxy], receiver: Receiver
) -> None:
    p = jobs_proxy({"webhook_secret": SECRET, "callback_allow": ["127.0.0.1"]})
    url = f"{receiver.live.url}/moved"
    body = {"endpoint": "/v1/chat/completions", "body": CHAT, "callback_url": url}
    job = http("POST", f"{p.url}/v1/jobs", body).json()
    finished(p.url, job["id"])
    wait_for(lambda: receiver.got, timeout_s=10, what="the webhook")
    other = http("POST", f"{p.url}/v1/jobs", {"endpoint": "/v1/embeddings",
                                              "body": {"model": "m", "input": "x"}})  # fmt: skip
    finished(p.url, other.json()["id"])  # a later job done: the redirect had its chance
    assert [b for _, b in receiver.got] == [b"moved"]


def test_callback_host_not_allowed_is_refused(jobs_proxy: Callable[..., Proxy]) -> None:
    p = jobs_proxy({"webhook_secret": SECRET, "callback_allow": ["hooks.example.com"]})
    for url in ("http://127.0.0.1:9/x", "http://169.254.169.254/latest", "file:///etc/passwd",
                "http://user:pw@hooks.example.com/x"):  # fmt: skip
        body = {"endpoint": "/v1/chat/completions", "body": CHAT, "callback_url": url}
        resp = http("POST", f"{p.url}/v1/jobs", body)
        assert resp.status == 400 and resp.json()["error"]["code"] == "callback_not_allowed", url


def test_redis_down_at_submission_gives_503_then_recovers(
    jobs_proxy: Callable[..., Proxy], redis_server: RedisServer
) -> None:
    p = jobs_proxy()
    redis_server.kill()
    try:
        resp = http("POST", f"{p.url}/v1/jobs", {"endpoint": "/v1/chat/completions", "body": CHAT})
        assert resp.status == 503
        error = resp.json()["error"]
        assert error["code"] == "store_unavailable" and "not stored" in error["message"]
        prefer = http("POST", f"{p.url}/v1/chat/completions", CHAT,
                      headers={"Prefer": "respond-async"})  # fmt: skip
        assert prefer.status == 503
    finally:
        redis_server.start()
    # The worker kept polling: a job submitted now runs.
    job = wait_for(
        lambda: (
            (
                r := http(
                    "POST", f"{p.url}/v1/jobs", {"endpoint": "/v1/chat/completions", "body": CHAT}
                )  # fmt: skip
            ).status
            == 202
            and r
        ),
        what="submission after Redis came back",
    )
    assert finished(p.url, job.json()["id"])["status"] == "completed"


def test_memory_store_warns_and_works(
    make_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="proxy.jobs"):
        p = make_proxy({"cache": {"enabled": False}, "jobs": {"poll_interval_s": 0.1}})
    assert any("do not survive a restart" in r.getMessage() for r in caplog.records)
    job = http("POST", f"{p.url}/v1/jobs", {"endpoint": "/v1/chat/completions", "body": CHAT})
    assert job.status == 202
    assert finished(p.url, job.json()["id"])["status"] == "completed"


def test_refused_callback_names_every_setting_to_set(jobs_proxy: Callable[..., Proxy]) -> None:
    """Neither ``callback_allow`` nor ``webhook_secret`` set: the operator must learn of both,
    not fix one and meet the other on the next try."""
    p = jobs_proxy({"store": "memory"})
    body = {"endpoint": "/v1/chat/completions", "body": CHAT, "callback_url": "https://h.example/x"}
    resp = http("POST", f"{p.url}/v1/jobs", body)
    assert resp.status == 400
    error = resp.json()["error"]
    assert error["code"] == "callback_not_allowed" and error["param"] == "callback_url"
    assert "jobs.callback_allow" in error["message"] and "jobs.webhook_secret" in error["message"]
    # Only the secret missing: the message names only the secret.
    p = jobs_proxy({"store": "memory", "callback_allow": ["h.example"]})
    error = http("POST", f"{p.url}/v1/jobs", body).json()["error"]
    assert "jobs.webhook_secret" in error["message"]
    assert "jobs.callback_allow" not in error["message"]
