"""Explicit request limits: a clear 400 naming the limit, before anything goes upstream."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cache.conftest import post
from tests.conftest import Fake, ProxyFactory

CHAT = "/v1/chat/completions"
EMBED = "/v1/embeddings"


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("path", "body", "code", "param"),
    [
        (EMBED, {"model": "text-embedding-3-small", "input": ["a"] * 2049},
         "array_above_max_length", "input"),
        (CHAT, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}] * 10_001},
         "array_above_max_length", "messages"),
        (CHAT, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
               "metadata": {"x": _nested(64)}},
         "json_too_deep", None),
    ],
    ids=["embedding-inputs", "messages", "depth"],
)  # fmt: skip
def test_over_the_limit_is_a_400_and_nothing_goes_upstream(
    make_proxy: ProxyFactory, fake: Fake, path: str, body: dict[str, Any], code: str,
    param: str | None,
) -> None:  # fmt: skip
    proxy = make_proxy({"cache": {"enabled": False}})
    answer = post(proxy.url, path, body)
    assert answer.status == 400
    error = answer.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    assert "limit" in error["message"]
    assert sum(fake.state.calls.values()) == 0


def test_at_the_limit_is_served(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy({"cache": {"enabled": False}, "limits": {"max_json_depth": 8}})
    hi = [{"role": "user", "content": "hi"}]
    deep = {"model": "gpt-4o-mini", "messages": hi, "metadata": {"x": _nested(7)}}
    answer = post(proxy.url, CHAT, deep)
    assert answer.status == 200, answer.body  # depth 8: object, object, 6 lists
    deeper = {**deep, "metadata": {"x": _nested(8)}}
    assert post(proxy.url, CHAT, deeper).json()["error"]["code"] == "json_too_deep"
    inputs = {"model": "text-embedding-3-small", "input": ["a"] * 2048}
    assert post(proxy.url, EMBED, inputs).status == 200


def test_limits_apply_to_jobs_too(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy({"cache": {"enabled": False}, "limits": {"max_inputs": 2}})
    body = {"endpoint": EMBED, "body": {"model": "text-embedding-3-small", "input": ["a"] * 3}}
    answer = post(proxy.url, "/v1/jobs", body)
    assert answer.status == 400
    assert answer.json()["error"]["code"] == "array_above_max_length"
