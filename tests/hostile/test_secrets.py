"""Secrets stay secret: after traffic of every kind with known client keys, an upstream key, an
admin key, a webhook secret and a Redis password, none of them is in any log line (the request
log and every other logger, as JSON), ``/metrics``, ``/stats``, ``/readyz``, any Redis key or
value, or any answer a client got (errors included)."""

from __future__ import annotations

import io
import json
import logging
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from bench.fake_upstream import Scripted
from proxy.observe.logs import JsonFormatter
from tests.conftest import KEY_A, KEY_B, Fake, ProxyFactory
from tests.hostile.test_isolation import World, chat, multipart, wait_job
from tests.observe.helpers import Lines
from tests.support.http import Raw
from tests.support.live import BackgroundLoop
from tests.support.redis_server import RedisServer

UPSTREAM_KEY = "sk-upstream-secret-c0ffee11"
ADMIN_KEY = "sk-admin-secret-decade22"
WEBHOOK_SECRET = "whsec-secret-feed33"
REDIS_PASSWORD = "redis-secret-beef44"
WRONG_REDIS_PASSWORD = "redis-wrong-secret-5555"
BAD_KEY = "sk-not-a-real-key-abad66"
BAD_ADMIN_KEY = "sk-not-an-admin-key-77fe"
SECRETS = (
    KEY_A,
    KEY_B,
    UPSTREAM_KEY,
    ADMIN_KEY,
    WEBHOOK_SECRET,
    REDIS_PASSWORD,
    WRONG_REDIS_PASSWORD,
    BAD_KEY,
    BAD_ADMIN_KEY,
)
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[RedisServer]:
    server = RedisServer(password=REDIS_PASSWORD)
    server.start()
    yield server
    server.close()


class PythonLogs:
    """Every record of every logger, at DEBUG, as the proxy's JSON formatter writes it."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        self.handler = logging.StreamHandler(self.buffer)
        self.handler.setFormatter(JsonFormatter())
        self.handler.setLevel(logging.DEBUG)
        self.root = logging.getLogger()
        self.level = self.root.level

    def __enter__(self) -> PythonLogs:
        self.root.addHandler(self.handler)
        self.root.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        self.root.removeHandler(self.handler)
        self.root.setLevel(self.level)

    def text(self) -> str:
        self.handler.flush()
        return self.buffer.getvalue()


def _flatten(value: Any, out: list[bytes]) -> None:
    if isinstance(value, bytes):
        out.append(value)
        if value[:1] == b"\x01":  # the cache's zlib-compressed values
            try:
                out.append(zlib.decompress(value[1:]))
            except zlib.error:
                pass
    elif isinstance(value, dict):
        _flatten(list(value.items()), out)
    elif isinstance(value, list | tuple | set):
        for item in value:
            _flatten(item, out)
    else:
        out.append(str(value).encode())


_READ: dict[str, Callable[[redis.Redis, bytes], Any]] = {
    "string": lambda c, k: c.get(k),
    "hash": lambda c, k: c.hgetall(k),
    "list": lambda c, k: c.lrange(k, 0, -1),
    "set": lambda c, k: c.smembers(k),
    "zset": lambda c, k: c.zrange(k, 0, -1, withscores=True),
    "stream": lambda c, k: c.xrange(k),
}


def redis_dump(client: redis.Redis) -> str:
    """Every key and every value in Redis as text (compressed cache values inflated)."""
    out: list[bytes] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        assert kind in _READ, f"unexpected Redis type {kind} of {key!r}"
        _flatten([key, _READ[kind](client, key)], out)
    return b"\n".join(out).decode("utf-8", "replace")


def traffic(world: World, answers: list[Raw]) -> None:
    """Sync, stream, embeddings, responses, jobs (webhook, Prefer, failing), a batch, cache hits,
    upstream errors, bad keys and admin calls; every answer is kept for inspection."""
    fake, send = world.fake, world.send

    def keep(got: Raw) -> Raw:
        answers.append(got)
        return got

    keep(send("POST", CHAT, chat("secret traffic")))
    keep(send("POST", CHAT, chat("secret traffic")))  # a hit
    keep(send("POST", CHAT, chat("secret stream", stream=True), key=KEY_B))
    keep(send("POST", "/v1/embeddings", {"model": "text-embedding-3-small", "input": ["x", "y"]}))
    keep(send("POST", "/v1/responses", {"model": "gpt-4o-mini", "input": "secret response"}))
    response_id = answers[-1].json()["id"]
    keep(send("GET", f"/v1/responses/{response_id}"))
    hook = {"endpoint": CHAT, "body": chat("job"), "callback_url": f"{fake.url}/hook"}
    jobs = [keep(send("POST", "/v1/jobs", hook)).json()["id"]]
    prefer = {"Prefer": "respond-async"}
    jobs.append(keep(send("POST", CHAT, chat("async"), key=KEY_B, headers=prefer)).json()["id"])
    world.bg.call(
        lambda: fake.state.script.append(
            Scripted(
                400,
                {"error": {"message": "bad job", "type": "invalid_request_error"}},
                {},
                "/v1/chat/completions",
            )  # fmt: skip
        )
    )
    jobs.append(
        keep(send("POST", "/v1/jobs", {"endpoint": CHAT, "body": chat("fails")})).json()["id"]
    )
    for job_id in jobs:
        key = KEY_B if job_id == jobs[1] else KEY_A
        keep(world.send("GET", f"/v1/jobs/{job_id}", key=key))
        status = wait_job(world, job_id, key=key)["status"]
        assert status in ("completed", "failed")
    world.wait(lambda: world.calls("/v1/hook") >= 1)  # the webhook, signed with the secret
    line = {"custom_id": "s-1", "method": "POST", "url": CHAT, "body": chat("batch line")}
    body, content_type = multipart(json.dumps(line).encode() + b"\n")
    file_id = keep(send("POST", "/v1/files", body, headers={"Content-Type": content_type})).json()
    batch = {"input_file_id": file_id["id"], "endpoint": CHAT, "completion_window": "24h"}
    batch_id = keep(send("POST", "/v1/batches", batch)).json()["id"]
    done: dict[str, Any] = {}

    def finished() -> bool:
        done.update(send("GET", f"/v1/batches/{batch_id}").json())
        return done["status"] == "completed"

    world.wait(finished, timeout_s=30)
    keep(send("GET", f"/v1/files/{done['output_file_id']}/content"))
    # Upstream errors, passed through.
    for status in (401, 429, 500):
        error = {"error": {"message": f"upstream says {status}", "type": "x", "code": None}}
        world.bg.call(lambda s=status, e=error: fake.state.script.append(Scripted(s, e, {}, CHAT)))  # type: ignore[misc]
        assert keep(send("POST", CHAT, chat(f"error {status}"))).status == status
    # The proxy's own errors.
    keep(send("POST", CHAT, chat("bad key"), key=BAD_KEY))
    keep(send("POST", CHAT, b"{not json", headers={"Content-Type": "application/json"}))
    keep(send("GET", "/v1/jobs/job_nope"))
    keep(send("DELETE", "/v1/cache", key=BAD_ADMIN_KEY))
    keep(send("DELETE", "/v1/cache", key=KEY_A))
    keep(send("DELETE", "/v1/cache?tenant=self", key=ADMIN_KEY))
    keep(send("DELETE", "/v1/cache", key=ADMIN_KEY, headers={"X-Cache-Tenant-Key": KEY_B}))
    keep(send("GET", "/stats", key=ADMIN_KEY))
    keep(send("GET", "/stats", key=BAD_ADMIN_KEY))
    keep(send("GET", "/metrics"))
    keep(send("GET", "/readyz"))


def leaks(where: str, text: str) -> list[str]:
    return [f"{secret!r} in {where}" for secret in SECRETS if secret in text]


@pytest.mark.parametrize("mode", ["passthrough", "keys"])
def test_no_secret_in_logs_metrics_redis_or_answers(
    mode: str,
    make_proxy: ProxyFactory,
    fake: Fake,
    bg: BackgroundLoop,
    locked_redis: RedisServer,
) -> None:
    locked_redis.flush()
    auth: dict[str, Any] = {"mode": mode, "admin_keys": [{"name": "ops", "key": ADMIN_KEY}]}
    if mode == "keys":
        auth["keys"] = [{"name": "a", "key": KEY_A}, {"name": "b", "key": KEY_B}]
    upstream = {"name": "fake", "base_url": fake.url, "models": ["*"], "api_key": UPSTREAM_KEY}
    port = locked_redis.port
    config: dict[str, Any] = {
        "server": {"access_log": True, "log_format": "json", "log_level": "debug"},
        "upstreams": [upstream],
        "auth": auth,
        "redis": {"url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"},
        "cache": {"backend": "redis"},
        "jobs": {
            "poll_interval_s": 0.05,
            "backoff_base_s": 0.01,
            "max_attempts": 1,
            "webhook_secret": WEBHOOK_SECRET,
            "callback_allow": ["127.0.0.1:*"],
        },
        "batches": {"poll_interval_s": 0.05},
    }
    answers: list[Raw] = []
    with PythonLogs() as logs:
        proxy = make_proxy(config)
        request_log = Lines(proxy)
        # A second replica with a wrong Redis password: its failures are logged and reported.
        wrong = dict(config, redis={"url": f"redis://:{WRONG_REDIS_PASSWORD}@127.0.0.1:{port}/0"})
        other = make_proxy(wrong)
        other_log = Lines(other)
        world = World(proxy, fake, bg, own_key=mode == "keys")
        try:
            traffic(world, answers)
            other_world = World(other, fake, bg, own_key=mode == "keys")
            answers.append(other_world.send("POST", CHAT, chat("no redis here")))
            answers.append(
                other_world.send("POST", "/v1/jobs", {"endpoint": CHAT, "body": chat("x")})
            )
            answers.append(other_world.send("GET", "/readyz"))
            answers.append(other_world.send("GET", "/stats", key=ADMIN_KEY))
        finally:
            world.pool.shutdown(wait=True)
        texts = {
            "the request log": request_log.text() + other_log.text(),
            "the other logs": logs.text(),
        }
    for line in texts["the request log"].splitlines():
        json.loads(line)  # JSON lines, as configured
    assert len(texts["the request log"].splitlines()) >= 30  # /metrics, /readyz: not logged
    assert "job store" in texts["the other logs"] or "redis" in texts["the other logs"].lower()
    with locked_redis.client() as client:
        texts["Redis"] = redis_dump(client)
    assert "cache" in texts["Redis"] and "jobs" in texts["Redis"]
    for got in answers:
        texts[f"an answer ({got.status})"] = got.body.decode("utf-8", "replace") + json.dumps(
            got.headers
        )
    assert {got.status for got in answers} >= {200, 202, 400, 401, 403, 404, 429, 500}
    found = [leak for where, text in texts.items() for leak in leaks(where, text)]
    assert found == []
    # What went out: the admin key, the webhook secret and Redis's password never leave the
    # proxy (a webhook carries a signature, not the secret); in keys mode no client key does.
    sent = bg.call(lambda: list(fake.state.requests))
    assert any(r.path == "/v1/hook" for r in sent)
    stay = [ADMIN_KEY, BAD_ADMIN_KEY, WEBHOOK_SECRET, REDIS_PASSWORD, WRONG_REDIS_PASSWORD]
    if mode == "keys":
        stay += [KEY_A, KEY_B, BAD_KEY]
    for r in sent:
        text = json.dumps(r.headers) + r.body.decode("utf-8", "replace") + json.dumps(r.query)
        assert [secret for secret in stay if secret in text] == [], r.path


def test_the_dump_finds_a_secret_where_there_is_one(locked_redis: RedisServer) -> None:
    """The check above can fail: a secret planted in each kind of Redis value is found."""
    locked_redis.flush()
    with locked_redis.client() as client:
        client.hset("llmproxy:test:h", "credential", f"Bearer {KEY_A}")
        client.zadd("llmproxy:test:z", {f"x\t{KEY_B}": 1})
        client.set("llmproxy:test:c", b"\x01" + zlib.compress(UPSTREAM_KEY.encode()))
        text = redis_dump(client)
    assert leaks("Redis", text) == [
        f"{KEY_A!r} in Redis",
        f"{KEY_B!r} in Redis",
        f"{UPSTREAM_KEY!r} in Redis",
    ]


def test_a_waiting_job_holds_the_key_only_until_it_ends(
    make_proxy: ProxyFactory, fake: Fake, bg: BackgroundLoop, locked_redis: RedisServer
) -> None:
    """Passthrough: a job needs its client's key later, so a waiting job keeps it in its hash's
    ``credential`` field (and nowhere else); when the job ends, the key goes."""
    locked_redis.flush()
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{locked_redis.port}/0"
    proxy = make_proxy({"redis": {"url": url}, "jobs": {"poll_interval_s": 0.05}})
    world = World(proxy, fake, bg, own_key=False)
    try:
        later = {"endpoint": CHAT, "body": chat("later"), "run_after": int(time.time()) + 3600}
        job_id = world.send("POST", "/v1/jobs", later).json()["id"]
        with locked_redis.client() as client:
            holders = [
                (key, field)
                for key in client.scan_iter()
                if client.type(key) == b"hash"
                for field, value in client.hgetall(key).items()
                if KEY_A.encode() in value
            ]
            assert holders == [(f"{{llmproxy:jobs}}:job:{job_id}".encode(), b"credential")]
            assert leaks("Redis", redis_dump(client)) == [f"{KEY_A!r} in Redis"]
            assert world.send("POST", f"/v1/jobs/{job_id}/cancel").status == 200
            assert leaks("Redis", redis_dump(client)) == []
    finally:
        world.pool.shutdown(wait=True)
