"""Stored responses (``GET``/``DELETE /v1/responses/{id}``, ``cancel``, ``input_items``) go to
the upstream that created them, also from another replica (Redis)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench.fake_upstream import create_fake_upstream
from proxy.app import create_app
from proxy.config import parse_settings
from tests.conftest import Fake, Proxy, deep_merge
from tests.support import http
from tests.support.live import BackgroundLoop, LiveApp

OTHER_MODEL = "gpt-4o"  # served by the second upstream only


@pytest.fixture
def second(bg: BackgroundLoop) -> Iterator[Fake]:
    """A second fake upstream, serving only ``OTHER_MODEL``."""
    live = LiveApp(bg, create_fake_upstream(models=[OTHER_MODEL])).start()
    yield Fake(live)
    live.stop()


@pytest.fixture
def two_upstreams(bg: BackgroundLoop, fake: Fake, second: Fake) -> Iterator[Any]:
    """Proxies in front of two upstreams; the first one (``fake``) is the default."""
    started: list[Proxy] = []

    def make(config: dict[str, Any] | None = None) -> Proxy:
        base = {
            "upstreams": [
                {"name": "first", "base_url": fake.url, "models": ["gpt-4o-mini"]},
                {"name": "second", "base_url": second.url, "models": [OTHER_MODEL]},
            ],
            "routing": {"default_upstream": "first"},
            "redis": {"op_timeout_ms": 500},
            "server": {"access_log": False},
        }
        settings = parse_settings(deep_merge(base, config or {}), env={})
        started.append(Proxy(LiveApp(bg, create_app(settings)).start()))
        return started[-1]

    yield make
    for proxy in reversed(started):
        proxy.close_clients()
        proxy.live.stop()


def test_stored_response_routes_go_to_the_creating_upstream(
    two_upstreams: Any, fake: Fake, second: Fake
) -> None:
    client = two_upstreams().client()
    created = client.responses.create(model=OTHER_MODEL, input="remember me", background=True)
    assert client.responses.cancel(created.id).status == "cancelled"
    made = client.responses.create(model=OTHER_MODEL, input="remember me")
    assert client.responses.retrieve(made.id).output_text == "echo: remember me"
    items = client.responses.input_items.list(made.id)
    assert [i.type for i in items.data] == ["message"]
    client.responses.delete(made.id)
    assert second.state.calls[f"/v1/responses/{made.id}"] == 2  # retrieve, then delete
    assert second.state.calls[f"/v1/responses/{created.id}/cancel"] == 1
    assert not any(path.startswith("/v1/responses/") for path in fake.state.calls)


def test_streamed_responses_are_remembered_too(two_upstreams: Any, second: Fake) -> None:
    client = two_upstreams().client()
    events = list(client.responses.create(model=OTHER_MODEL, input="streamed", stream=True))
    response_id = events[0].response.id  # type: ignore[union-attr]
    assert client.responses.retrieve(response_id).output_text == "echo: streamed"


def test_unknown_ids_go_to_the_default_upstream(two_upstreams: Any, fake: Fake) -> None:
    proxy = two_upstreams()
    out = http.get(f"{proxy.base_url}/responses/resp_unknown", {"Authorization": "Bearer k"})
    assert out.status == 404
    assert out.json()["error"]["param"] == "response_id"
    assert fake.state.calls["/v1/responses/resp_unknown"] == 1


def test_another_replica_knows_through_redis(
    two_upstreams: Any, second: Fake, redis_url: str
) -> None:
    config = {"redis": {"url": redis_url}}
    one, two = two_upstreams(config), two_upstreams(config)
    made = one.client().responses.create(model=OTHER_MODEL, input="across replicas")
    assert two.client().responses.retrieve(made.id).id == made.id
    assert second.state.calls[f"/v1/responses/{made.id}"] == 1


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_deleting_a_response_drops_its_cached_copy(
    two_upstreams: Any, second: Fake, backend: str, redis_url: str
) -> None:
    config: dict[str, Any] = {}
    if backend == "redis":
        config = {"cache": {"backend": "redis"}, "redis": {"url": redis_url}}
    client = two_upstreams(config).client()
    made = client.responses.create(model=OTHER_MODEL, input="short lived")
    hit = client.responses.with_raw_response.create(model=OTHER_MODEL, input="short lived")
    assert hit.headers["x-cache"] == "HIT"
    client.responses.delete(made.id)
    # A hit would hand out an id the upstream no longer has: the next one asks it again.
    again = client.responses.with_raw_response.create(model=OTHER_MODEL, input="short lived")
    assert again.headers["x-cache"] == "MISS"
    assert second.state.calls["/v1/responses"] == 2
    assert client.responses.retrieve(made.id).id == made.id  # (the fake made it anew)
