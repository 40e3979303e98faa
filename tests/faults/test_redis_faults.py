"""Redis faults: killed, restarted, stalled, out of memory, failed over, cut off.

Whatever Redis does, synchronous requests keep succeeding (the cache is bypassed) and no job
that was accepted is lost: jobs accepted before the outage complete after it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.cache.conftest import CHAT, HELLO, post
from tests.conftest import Fake, Proxy, ProxyFactory
from tests.jobs.conftest import http, wait_for
from tests.support.faultproxy import FaultProxy
from tests.support.live import BackgroundLoop
from tests.support.redis_server import RedisServer


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    """A Redis that keeps its data across a restart (AOF, fsync on every write)."""
    server = RedisServer(
        "--appendonly", "yes", "--appendfsync", "always", "--enable-debug-command", "local"
    )  # fmt: skip
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_faults(bg: BackgroundLoop, durable_redis: RedisServer) -> Iterator[FaultProxy]:
    fp = FaultProxy(bg, durable_redis.port).start()
    yield fp
    fp.close()


def _config(redis_port: int) -> dict[str, Any]:
    return {
        "redis": {"url": f"redis://127.0.0.1:{redis_port}/0", "breaker_cooldown_s": 0.2},
        "cache": {"backend": "redis"},
        "jobs": {"backoff_base_s": 0.01, "poll_interval_s": 0.05, "lease_s": 2},
    }


def _submit(proxy: Proxy, n: int, *, delay_s: int = 1) -> list[str]:
    """``n`` accepted jobs, due ``delay_s`` from now (so they are still queued at the fault)."""
    run_after = int(time.time()) + delay_s
    ids = []
    for i in range(n):
        body = {**HELLO, "messages": [{"role": "user", "content": f"job {i}"}]}
        resp = http("POST", f"{proxy.url}/v1/jobs",
                    {"endpoint": CHAT, "body": body, "run_after": run_after})  # fmt: skip
        assert resp.status == 202, resp.body
        ids.append(resp.json()["id"])
    return ids


def _sync_requests_succeed(proxy: Proxy, n: int = 5) -> None:
    for i in range(n):
        body = {**HELLO, "messages": [{"role": "user", "content": f"sync {i} {time.time()}"}]}
        answer = post(proxy.url, CHAT, body)
        assert answer.status == 200, answer.body
        assert answer.json()["object"] == "chat.completion"


def _all_complete(proxy: Proxy, ids: list[str], fake: Fake) -> None:
    """Every job completes; while Redis comes back a read may be a 503, never a 404."""

    def status(job_id: str) -> str | None:
        resp = http("GET", f"{proxy.url}/v1/jobs/{job_id}")
        if resp.status == 503:
            return None
        assert resp.status == 200, resp.body
        job = resp.json()
        return job["status"] if job["status"] in ("completed", "failed", "cancelled") else None

    for job_id in ids:
        assert wait_for(lambda j=job_id: status(j), timeout_s=30, what=job_id) == "completed"


def test_redis_cut_off_then_back(
    make_proxy: ProxyFactory, redis_faults: FaultProxy, fake: Fake
) -> None:
    proxy = make_proxy(_config(redis_faults.port))
    ids = _submit(proxy, 10)
    redis_faults.set("refuse")
    redis_faults.cut()
    _sync_requests_succeed(proxy)
    refused = http("POST", f"{proxy.url}/v1/jobs", {"endpoint": CHAT, "body": HELLO})
    assert refused.status == 503 and refused.json()["error"]["code"] == "store_unavailable"
    redis_faults.set("pass")
    _all_complete(proxy, ids, fake)
    _sync_requests_succeed(proxy)


def test_redis_killed_and_restarted(
    make_proxy: ProxyFactory, durable_redis: RedisServer, fake: Fake
) -> None:
    proxy = make_proxy(_config(durable_redis.port))
    ids = _submit(proxy, 10)
    durable_redis.kill()
    try:
        _sync_requests_succeed(proxy)
    finally:
        durable_redis.start()
    _all_complete(proxy, ids, fake)
    _sync_requests_succeed(proxy)


def test_redis_stalled_by_debug_sleep(
    make_proxy: ProxyFactory, durable_redis: RedisServer, fake: Fake
) -> None:
    proxy = make_proxy(_config(durable_redis.port))
    ids = _submit(proxy, 5)
    sleeper = threading.Thread(
        target=lambda: redis.Redis(port=durable_redis.port).execute_command("DEBUG", "SLEEP", "4")
    )
    sleeper.start()
    wait_for(lambda: _is_sleeping(durable_redis), what="Redis to stall")
    _sync_requests_succeed(proxy, 3)
    # The requests were served while Redis was still frozen, not after it woke up.
    assert sleeper.is_alive(), "requests waited for a frozen Redis"
    sleeper.join(10)
    _all_complete(proxy, ids, fake)


def _is_sleeping(server: RedisServer) -> bool:
    probe = redis.Redis(port=server.port, socket_timeout=0.2, retry=Retry(NoBackoff(), 0))
    try:
        probe.ping()
        return False
    except redis.TimeoutError:
        return True
    finally:
        probe.close()


def test_redis_out_of_memory(
    make_proxy: ProxyFactory, durable_redis: RedisServer, fake: Fake
) -> None:
    proxy = make_proxy(_config(durable_redis.port))
    ids = _submit(proxy, 5)
    admin = durable_redis.client()
    used = int(admin.info("memory")["used_memory"])
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", used)  # no room for anything new
    try:
        _sync_requests_succeed(proxy)  # the cache cannot store: still served
        refused = http("POST", f"{proxy.url}/v1/jobs", {"endpoint": CHAT, "body": HELLO})
        assert refused.status == 503, refused.body
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()
    _all_complete(proxy, ids, fake)


def test_redis_failover_mid_load(
    make_proxy: ProxyFactory,
    durable_redis: RedisServer,
    redis_faults: FaultProxy,
    fake: Fake,
) -> None:
    replica = RedisServer()
    replica.start()
    try:
        r = replica.client()
        r.execute_command("REPLICAOF", "127.0.0.1", str(durable_redis.port))
        wait_for(lambda: r.info("replication").get("master_link_status") == "up",
                 what="replica in sync")  # fmt: skip
        proxy = make_proxy(_config(redis_faults.port))
        ids = _submit(proxy, 10)
        primary = durable_redis.client()
        assert primary.execute_command("WAIT", "1", "5000") == 1  # every accepted job replicated
        primary.close()
        # The primary dies; the replica is promoted and traffic moves to it.
        durable_redis.kill()
        r.execute_command("REPLICAOF", "NO", "ONE")
        redis_faults.retarget(replica.port)
        redis_faults.cut()
        _sync_requests_succeed(proxy)
        _all_complete(proxy, ids, fake)
        r.close()
    finally:
        replica.close()
        if durable_redis.proc is None:
            durable_redis.start()
