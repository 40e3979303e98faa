"""A reload against what other parts of the proxy keep per app: files and batches, response
origins, metrics, readiness probes and background tasks."""

from __future__ import annotations

from typing import Any

import openai

from proxy.keys import ORIGINS
from tests.batches.conftest import chat_line, jsonl, upload, wait_done
from tests.conftest import Fake
from tests.runtime.conftest import AUTH
from tests.runtime.test_generations import base

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
