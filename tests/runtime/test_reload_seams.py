"""A reload against what other parts of the proxy keep per app: files and batches, response
origins, metrics, readiness probes and background tasks."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import openai
import pytest

from proxy.keys import JOBS, ORIGINS
from tests.batches.conftest import chat_line, jsonl, upload, wait_done
from tests.conftest import Fake
from tests.runtime.conftest import AUTH
from tests.runtime.procs import wait_until
from tests.runtime.test_generations import CHAT, base
from tests.runtime.test_graceful_stop import Stream
from tests.support import http

FAST = {"batches": {"poll_interval_s": 0.05}, "jobs": {"poll_interval_s": 0.05}}


def sdk(s: Any) -> openai.OpenAI:
    key = AUTH["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(base_url=f"{s.live.url}/v1", api_key=key, max_retries=0)


def run_a_job(s: Any, what: str) -> None:
    job = s.post("/v1/jobs", {"endpoint": "/v1/chat/completions", "body": CHAT}).json()
    url = f"{s.live.url}/v1/jobs/{job['id']}"
    wait_until(lambda: http.get(url, headers=AUTH).json()["status"] == "completed", what)


def create_batch(client: openai.OpenAI, file_id: str) -> str:
    return client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    ).id


def test_memory_files_and_batches_survive_a_reload(served: Any, fake: Fake) -> None:
    s = served(base(fake, **FAST))
    with sdk(s) as client:
        file_id = upload(client, jsonl([chat_line("a", "one"), chat_line("b", "two")]))
        before = create_batch(client, file_id)
        assert wait_done(client, before).status == "completed"

        s.reload(base(fake, routing={"model_aliases": {"fast": "gpt-4o-mini"}}, **FAST))
        # The only copy of the files and batches is this process's memory: a reload keeps it,
        # as it keeps the memory job store.
        assert client.files.retrieve(file_id).id == file_id
        assert client.batches.retrieve(before).status == "completed"
        after = wait_done(client, create_batch(client, file_id))
        assert after.request_counts is not None and after.request_counts.completed == 2


def test_memory_response_origins_survive_a_reload(served: Any, fake: Fake) -> None:
    second = {"name": "second", "base_url": fake.url, "models": ["gpt-4o-mini"]}
    config = base(fake, upstreams=[{"name": "fake", "base_url": fake.url}, second])
    s = served(config)
    made = s.post("/v1/responses", {"model": "gpt-4o-mini", "input": "where was I made?"})
    assert made.status == 200
    response_id = made.json()["id"]

    s.reload({**config, "routing": {"model_aliases": {"fast": "gpt-4o-mini"}}})
    # Without Redis the process's memory is the only record that ``second`` made it: a reload
    # must not send ``GET /v1/responses/{id}`` to the default upstream instead.
    origins = s.runtime.current.app[ORIGINS].origins
    origin = s.bg.run(origins.lookup(response_id))
    assert origin is not None and origin.upstream == "second"


async def _tasks() -> list[str]:
    """The loop's tasks by name (a coroutine's name for an unnamed one), less the server's
    connection handlers (a closed connection's may still be finishing)."""
    names = []
    for task in asyncio.all_tasks():
        name = task.get_name()
        if name.startswith("Task-"):
            name = getattr(task.get_coro(), "__qualname__", name)
        if task is not asyncio.current_task() and name != "RequestHandler.start":
            names.append(name)
    return sorted(names)


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_twenty_reloads_leave_no_task_behind(
    served: Any, fake: Fake, store: str, request: pytest.FixtureRequest
) -> None:
    extra: dict[str, Any] = dict(FAST)
    if store == "redis":
        extra |= {
            "redis": {"url": request.getfixturevalue("redis_url")},
            "cache": {"backend": "redis"},
        }
    s = served(base(fake, **extra))
    first = s.bg.run(_tasks())
    for n in range(20):
        s.reload(base(fake, routing={"model_aliases": {f"a{n}": "gpt-4o"}}, **extra))
        assert http.get(f"{s.live.url}/readyz").status == 200
    s.bg.run(s.runtime.retired())
    assert s.runtime.generations == 1
    # The same background tasks (runners, dispatchers, probes) as one generation had, and no
    # more: every old generation stopped its own.
    assert s.bg.run(_tasks()) == first


def test_stats_keep_counting_and_remember_errors_across_a_reload(served: Any, fake: Fake) -> None:
    s = served(base(fake))
    assert s.post("/v1/chat/completions", CHAT).status == 200
    assert http.get(f"{s.live.url}/v1/jobs/job_unknown", headers=AUTH).status == 404

    s.reload(base(fake, routing={"model_aliases": {"fast": "gpt-4o-mini"}}))
    assert s.post("/v1/chat/completions", CHAT).status == 200
    stats = http.get(f"{s.live.url}/stats").json()
    assert stats["requests"]["total"] == 3  # one registry for every generation
    assert stats["cache"]["hits"] == 1 and stats["cache"]["hit_ratio"] == 0.5
    # The errors /stats lists are the process's, not the current generation's.
    assert [e["status"] for e in stats["recent_errors"]] == [404]


def test_only_the_current_generation_takes_background_work(served: Any, fake: Fake) -> None:
    """An old generation kept open by a stream finishes that stream, and takes no more jobs or
    batches: the new one does, with the new settings (one set of dispatchers, one
    ``jobs.concurrency`` and one rate limit per process)."""
    config = base(fake, cache={"enabled": False})
    s = served(config)
    gate = asyncio.Event()
    fake.state.stream_gate = gate
    held = Stream(s.live.port, "held across the reload")
    old = s.runtime.current

    s.reload({**config, "routing": {"model_aliases": {"a": "gpt-4o"}}})
    assert old.active == 1 and s.runtime.generations == 2
    running = s.bg.run(_tasks())
    assert running.count("jobs-dispatcher") == running.count("batch-runner") == 1
    run_a_job(s, "the job done by the new generation")

    fake.live.bg.call(gate.set)
    assert held.result().rstrip().endswith(b"data: [DONE]")
    s.bg.run(s.runtime.retired())


def test_memory_rate_limits_hold_across_a_reload(served: Any, fake: Fake) -> None:
    """``jobs.rate_limit`` without Redis: the buckets are the process's, not a generation's, so a
    reload does not hand out a fresh burst (nor, with a stream holding the old generation, a
    second set of buckets running beside the first)."""
    config = base(fake, jobs={"rate_limit": {"fake": {"requests_per_minute": 1}}, **FAST["jobs"]})
    s = served(config)
    run_a_job(s, "the first job, within the burst")

    s.reload({**config, "routing": {"model_aliases": {"a": "gpt-4o"}}})
    buckets = s.runtime.current.app[JOBS].worker.limiter._buckets
    wait_s = s.bg.run(buckets.take(["fake/requests"], [1.0], time.time()))
    assert 50 < wait_s <= 60  # the minute's one request was taken before the reload


def test_routes_are_labelled_by_the_generations_patterns(served: Any, fake: Fake) -> None:
    """Served through the reload shell (whose one route is ``/{tail}``), a request is labelled
    by the generation's own route: ids never become label values."""
    s = served(base(fake, **FAST))
    with sdk(s) as client:
        file_id = upload(client, jsonl([chat_line("a", "one")]))
        client.files.retrieve(file_id)
    assert http.get(f"{s.live.url}/v1/jobs/job_unknown", headers=AUTH).status == 404
    scrape = http.get(f"{s.live.url}/metrics").body.decode()
    routes = set(re.findall(r'llm_proxy_requests_total\{[^}]*route="([^"]*)"', scrape))
    assert routes == {"/v1/files", "/v1/files/{file_id}", "/v1/jobs/{job_id}"}
