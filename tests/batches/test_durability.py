"""Real proxy processes on one Redis: a proxy killed mid-batch, another resumes it; a large batch
beside a job; files stored in chunks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.batches.conftest import chat_line, jsonl, read_jsonl, upload, wait_done
from tests.conftest import KEY_A, Fake, Proxy, ProxyFactory
from tests.jobs.conftest import CHAT, finished, http, wait_for
from tests.jobs.test_replicas import ProxyProcess
from tests.support.redis_server import RedisServer


@pytest.fixture
def processes(tmp_path: Path, fake: Fake, redis_url: str) -> Iterator[Any]:
    started: list[ProxyProcess] = []

    def start(name: str, lease_s: float = 2) -> ProxyProcess:
        config = {
            "upstreams": [{"name": "fake", "base_url": fake.url, "models": ["*"]}],
            "cache": {"enabled": False},
            "redis": {"url": redis_url},
            "jobs": {"poll_interval_s": 0.1},
            "batches": {"lease_s": lease_s, "poll_interval_s": 0.1, "concurrency": 8},
        }
        proc = ProxyProcess(tmp_path, name, config)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def test_a_proxy_killed_mid_batch_is_resumed_and_every_line_reported_once(
    processes: Any, fake: Fake
) -> None:
    fake.state.latency_ms = 50
    a = processes("a")
    client = openai.OpenAI(base_url=f"{a.url}/v1", api_key=KEY_A, max_retries=0)
    lines = [chat_line(f"k{i}", f"line {i}") for i in range(300)]
    file_id = upload(client, jsonl(lines))
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    wait_for(lambda: fake.state.calls["/v1/chat/completions"] >= 60, what="lines to run")
    mid = client.batches.retrieve(batch.id)
    a.kill()
    client.close()
    assert mid.status == "in_progress" and mid.request_counts is not None
    assert 0 < mid.request_counts.completed < 300
    b = processes("b")
    client = openai.OpenAI(base_url=f"{b.url}/v1", api_key=KEY_A, max_retries=0)
    try:
        done = wait_done(client, batch.id, timeout_s=60)
        assert done.status == "completed", done
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (300, 0)
        out = read_jsonl(client, done.output_file_id)
        assert read_jsonl(client, done.error_file_id) == []
        assert sorted(o["custom_id"] for o in out) == sorted(f"k{i}" for i in range(300))
    finally:
        client.close()
    assert fake.state.calls["/v1/chat/completions"] >= 300  # at least once each


def test_a_stopped_proxy_hands_its_batch_back_at_once(processes: Any, fake: Fake) -> None:
    fake.state.latency_ms = 50
    a = processes("a", lease_s=60)
    client = openai.OpenAI(base_url=f"{a.url}/v1", api_key=KEY_A, max_retries=0)
    lines = [chat_line(f"t{i}", f"line {i}") for i in range(200)]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    wait_for(lambda: fake.state.calls["/v1/chat/completions"] >= 20, what="lines to run")
    a.stop()  # SIGTERM
    client.close()
    b = processes("b", lease_s=60)
    client = openai.OpenAI(base_url=f"{b.url}/v1", api_key=KEY_A, max_retries=0)
    try:
        # Well within the 60 s lease: the batch was released, not left to time out.
        done = wait_done(client, batch.id, timeout_s=30)
        assert done.status == "completed" and done.request_counts is not None
        assert done.request_counts.completed == 200
        out = read_jsonl(client, done.output_file_id)
        assert sorted(o["custom_id"] for o in out) == sorted(f"t{i}" for i in range(200))
    finally:
        client.close()


def test_a_large_batch_does_not_starve_jobs(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy: Proxy = make_proxy(
        {"cache": {"enabled": False}, "batches": {"concurrency": 4, "poll_interval_s": 0.1}}
    )
    fake.state.latency_ms = 50
    client = proxy.client()
    lines = [chat_line(f"s{i}", f"n {i}") for i in range(2000)]
    batch = client.batches.create(
        input_file_id=upload(client, jsonl(lines)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    wait_for(lambda: fake.state.in_flight >= 4, what="the batch to run")
    job = http("POST", f"{proxy.url}/v1/jobs", {"endpoint": "/v1/chat/completions", "body": CHAT})
    assert finished(proxy.url, job.json()["id"], timeout_s=5)["status"] == "completed"
    # At most `batches.concurrency` lines were in flight beside the job.
    assert fake.state.max_in_flight <= 5
    running = client.batches.retrieve(batch.id)
    assert running.status == "in_progress"
    client.batches.cancel(batch.id)
    assert wait_done(client, batch.id).status == "cancelled"


def test_files_are_stored_in_chunks_and_stream_back(
    make_proxy: ProxyFactory, redis_url: str, redis_server: RedisServer
) -> None:
    proxy = make_proxy({"redis": {"url": redis_url}})
    client = proxy.client()
    line = json.dumps(chat_line("x" * 10, "y" * 1000)).encode() + b"\n"
    data = line * 3000  # ~3 MB
    file_id = upload(client, data)
    assert client.files.content(file_id).content == data
    redis = redis_server.client()
    try:
        key = f"{{llmproxy:batches}}:data:{file_id}"
        sizes = [len(c) for c in redis.lrange(key, 0, -1)]
    finally:
        redis.close()
    assert len(sizes) > 8 and max(sizes) < 300 * 1024 and sum(sizes) == len(data)


def test_output_files_are_rewritten_whole_after_a_death_while_writing_them(
    make_proxy: ProxyFactory, redis_url: str
) -> None:
    """A replica died while writing the output file (half of it in Redis, not committed): the
    replica that takes over writes it again from the start, each line once."""
    import asyncio
    import time

    from redis.asyncio import Redis

    from proxy.auth import Authenticator
    from proxy.batches.models import Batch, new_id
    from proxy.batches.redis import RedisBatchStore, RedisFileStore
    from proxy.config import AuthSettings

    proxy = make_proxy({"redis": {"url": redis_url}, "batches": {"lease_s": 1}})
    client = proxy.client()
    lines = [chat_line(f"w{i}", f"n {i}") for i in range(3)]
    file_id = upload(client, jsonl(lines))
    tenant = Authenticator(AuthSettings()).identify({"Authorization": f"Bearer {KEY_A}"}).tenant
    out_id, err_id = new_id("file-"), new_id("file-")

    async def died_while_finalizing() -> str:
        redis = Redis.from_url(redis_url)
        store = RedisBatchStore(redis, prefix="llmproxy", op_timeout_s=2)
        files = RedisFileStore(redis, prefix="llmproxy", op_timeout_s=2)
        now = time.time()
        batch = Batch(
            id=new_id("batch_"),
            tenant=tenant,
            endpoint="/v1/chat/completions",
            input_file_id=file_id,
            created_at=now,
            expires_at=now + 3600,
            status="in_progress",
            phase="run",
            total=3,
        )
        # Held by a replica that is about to die (its lease ends in 0.5 s).
        await redis.hset(store.keys.batch(batch.id), mapping=batch.to_fields())  # type: ignore[arg-type]
        await redis.zadd(store.keys.active, {batch.id: now + 0.5})
        await redis.zadd(store.keys.batches_of(tenant), {batch.id: now})
        await redis.hset(store.keys.batch(batch.id), "token", "dead:1")
        for i in range(3):
            line = b'{"custom_id":"w%d","response":{"status_code":200},"error":null}' % i
            await store.record(batch.id, "dead:1", i + 1, ok=True, line=line, tokens=(1, 1))
        changes = {"phase": "finalize", "final": "completed", "status": "finalizing",
                   "output_file_id": out_id, "error_file_id": err_id}  # fmt: skip
        assert await store.update(batch.id, "dead:1", changes)
        await files.append(out_id, b'{"custom_id":"w0","half":true}\n', ttl_s=60)
        await redis.aclose()
        return batch.id

    batch_id = asyncio.run(died_while_finalizing())
    done = wait_done(client, batch_id)
    assert done.status == "completed" and done.output_file_id == out_id
    out = read_jsonl(client, out_id)
    assert [o["custom_id"] for o in out] == ["w0", "w1", "w2"]
    assert all("half" not in o for o in out)
    assert done.error_file_id is None
