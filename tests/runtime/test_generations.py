"""A reload is a new generation of the app: what carries over, what is replaced, what is closed."""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.keys import ROUTER
from tests.conftest import Fake
from tests.runtime.conftest import AUTH
from tests.runtime.test_graceful_stop import Stream
from tests.support import http

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "kept?"}]}


def base(fake: Fake, **sections: Any) -> dict[str, Any]:
    return {"upstreams": [{"name": "fake", "base_url": fake.url}], **sections}


def test_memory_cache_and_jobs_survive_a_reload(served: Any, fake: Fake) -> None:
    s = served(base(fake))
    assert s.post("/v1/chat/completions", CHAT).headers["x-cache"] == "MISS"
    job = s.post("/v1/jobs", {"endpoint": "/v1/chat/completions", "body": CHAT})
    assert job.status == 202
    session = s.runtime.current.app[ROUTER].upstreams["fake"].session

    s.reload(base(fake, routing={"model_aliases": {"fast": "gpt-4o-mini"}}))
    assert s.runtime.current.app[ROUTER].resolve("fast")[0] == "gpt-4o-mini"
    # Unchanged settings: the same cache (a hit), job store and upstream connection pool.
    assert s.post("/v1/chat/completions", CHAT).headers["x-cache"] == "HIT"
    found = http.get(f"{s.live.url}/v1/jobs/{job.json()['id']}", headers=AUTH)
    assert found.status == 200
    assert s.runtime.current.app[ROUTER].upstreams["fake"].session is session
    assert not session.closed


def test_changed_settings_get_new_resources_and_old_ones_close(served: Any, fake: Fake) -> None:
    s = served(base(fake))
    assert s.post("/v1/chat/completions", CHAT).headers["x-cache"] == "MISS"
    session = s.runtime.current.app[ROUTER].upstreams["fake"].session
    held = len(s.shared.resources)

    s.reload(
        {
            "upstreams": [{"name": "fake", "base_url": fake.url, "max_connections": 8}],
            "cache": {"max_entries": 5},
        }
    )
    assert s.post("/v1/chat/completions", CHAT).headers["x-cache"] == "MISS"  # a new cache
    assert s.runtime.current.app[ROUTER].upstreams["fake"].session is not session
    # Nothing was in flight: the old generation is closed, its resources with it.
    s.bg.run(s.runtime.retired())
    assert session.closed
    assert len(s.shared.resources) == held


def test_the_old_generation_closes_after_its_last_stream(served: Any, fake: Fake) -> None:
    s = served(base(fake, cache={"enabled": False}))
    gate = asyncio.Event()
    fake.state.stream_gate = gate
    held = Stream(s.live.port, "held across the reload")
    old = s.runtime.current

    s.reload(base(fake, cache={"enabled": False}, routing={"model_aliases": {"a": "gpt-4o"}}))
    assert s.runtime.current is not old
    assert old.active == 1 and s.runtime.generations == 2  # kept open for the stream

    fake.live.bg.call(gate.set)
    assert held.result().rstrip().endswith(b"data: [DONE]")
    s.bg.run(s.runtime.retired())
    assert old.active == 0 and s.runtime.generations == 1
