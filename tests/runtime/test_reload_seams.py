"""A reload against what other parts of the proxy keep per app: files and batches, response
origins, metrics, readiness probes and background tasks."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from proxy.keys import ORIGINS
from tests.batches.conftest import chat_line, jsonl, upload, wait_done
from tests.conftest import Fake
from tests.runtime.conftest import AUTH
from tests.runtime.test_generations import base
from tests.support import http

FAST = {"batches": {"poll_interval_s": 0.05}, "jobs": {"poll_interval_s": 0.05}}


def sdk(s: Any) -> openai.OpenAI:
    key = AUTH["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(base_url=f"{s.live.url}/v1", api_key=key, max_retries=0)


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
    return sorted(t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task())


def _named(names: list[str]) -> list[str]:
    return [n for n in names if not n.startswith("Task-")]


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
    assert _named(s.bg.run(_tasks())) == _named(first)
    assert len(s.bg.run(_tasks())) == len(first)
