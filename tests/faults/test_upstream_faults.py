"""Upstream faults: what the client sees when the upstream refuses, resets, stalls or breaks.

Each case says what the client must get, and that the proxy keeps serving (and caches nothing
broken) afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import openai
import orjson
import pytest

from bench.fake_upstream import Scripted
from tests.cache.conftest import CHAT, HELLO, post
from tests.conftest import Fake, Proxy
from tests.jobs.conftest import finished, http
from tests.support.faultproxy import FaultProxy
from tests.support.live import BackgroundLoop

PROXY_ERROR_KEYS = {"message", "type", "param", "code"}


def _is_openai_error(body: bytes) -> dict[str, Any]:
    error = orjson.loads(body)["error"]
    assert set(error) == PROXY_ERROR_KEYS
    return error  # type: ignore[no-any-return]


def _serves_again(proxy: Proxy, upstream_faults: FaultProxy, fake: Fake) -> None:
    """After the fault: the proxy answers, from the upstream (nothing broken was cached)."""
    upstream_faults.set("pass")
    before = fake.state.calls[CHAT]
    again = post(proxy.url, CHAT, HELLO)
    assert again.status == 200
    assert again.json()["object"] == "chat.completion"
    assert again.cache == "MISS"
    assert fake.state.calls[CHAT] == before + 1


@pytest.mark.parametrize("mode", ["refuse", "reset"])
def test_unreachable_upstream_is_a_502(
    faulty_proxy: Callable[..., Proxy], upstream_faults: FaultProxy, fake: Fake, mode: Any
) -> None:
    proxy = faulty_proxy()
    upstream_faults.set(mode)
    answer = post(proxy.url, CHAT, HELLO)
    assert answer.status == 502
    assert _is_openai_error(answer.body)["type"] == "api_error"
    _serves_again(proxy, upstream_faults, fake)


def test_reset_mid_body_is_a_502_and_nothing_is_cached(
    faulty_proxy: Callable[..., Proxy], upstream_faults: FaultProxy, fake: Fake, bg: BackgroundLoop
) -> None:
    proxy = faulty_proxy()
    big = {"id": "chatcmpl-big", "object": "chat.completion", "choices": [], "pad": "x" * 200_000}
    bg.call(lambda: fake.state.script.append(Scripted(200, big, path=CHAT)))
    upstream_faults.set("truncate", limit=50_000)  # headers and part of the body, then RST
    answer = post(proxy.url, CHAT, HELLO)
    assert answer.status == 502
    _is_openai_error(answer.body)
    _serves_again(proxy, upstream_faults, fake)


def test_slow_first_byte_past_the_timeout_is_a_504(
    faulty_proxy: Callable[..., Proxy], upstream_faults: FaultProxy, fake: Fake
) -> None:
    proxy = faulty_proxy()
    upstream_faults.set("stall")
    answer = post(proxy.url, CHAT, HELLO)
    assert answer.status == 504
    assert _is_openai_error(answer.body)["code"] == "upstream_timeout"
    _serves_again(proxy, upstream_faults, fake)


@pytest.mark.parametrize(
    "body",
    [b'{"id": "chatcmpl-x", "object": "chat.com', b"<html>502 Bad Gateway</html>", b"[1, 2]"],
    ids=["cut-json", "html", "not-an-object"],
)
def test_invalid_json_answer_is_passed_on_but_never_cached(
    faulty_proxy: Callable[..., Proxy], fake: Fake, bg: BackgroundLoop, body: bytes,
    upstream_faults: FaultProxy,
) -> None:  # fmt: skip
    proxy = faulty_proxy()
    bg.call(lambda: fake.state.script.append(Scripted(200, body, path=CHAT)))
    first = post(proxy.url, CHAT, HELLO)
    assert (first.status, first.body) == (200, body)
    _serves_again(proxy, upstream_faults, fake)


def test_truncated_stream_is_never_cached(
    faulty_proxy: Callable[..., Proxy], fake: Fake, bg: BackgroundLoop,
    upstream_faults: FaultProxy,
) -> None:  # fmt: skip
    proxy = faulty_proxy()
    cut = b'data: {"id":"c","object":"chat.completion.chunk","choices":[]}\n\ndata: {"id":"c","ob'
    sse = {"Content-Type": "text/event-stream"}
    bg.call(lambda: fake.state.script.append(Scripted(200, cut, headers=sse, path=CHAT)))
    stream = {**HELLO, "stream": True}
    first = post(proxy.url, CHAT, stream)
    assert first.status == 200 and b"[DONE]" not in first.body
    again = post(proxy.url, CHAT, stream)
    assert again.cache == "MISS" and again.body.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("status", [429, 500, 503])
def test_429_and_5xx_pass_through_to_a_synchronous_client(
    faulty_proxy: Callable[..., Proxy], fake: Fake, bg: BackgroundLoop, status: int,
    upstream_faults: FaultProxy,
) -> None:  # fmt: skip
    proxy = faulty_proxy()
    error = {"error": {"message": "slow down", "type": "x", "param": None, "code": "c"}}
    headers = {"Retry-After": "7", "x-request-id": "req-upstream"}
    bg.call(lambda: fake.state.script.append(Scripted(status, error, headers=headers, path=CHAT)))
    answer = post(proxy.url, CHAT, HELLO)
    assert answer.status == status
    assert answer.json() == error
    assert answer.headers["retry-after"] == "7"
    _serves_again(proxy, upstream_faults, fake)


@pytest.mark.parametrize("status", [429, 500, 503])
def test_429_and_5xx_are_retried_for_jobs(
    faulty_proxy: Callable[..., Proxy], fake: Fake, bg: BackgroundLoop, status: int
) -> None:
    proxy = faulty_proxy(jobs={"backoff_base_s": 0.01, "poll_interval_s": 0.05})
    error = {"error": {"message": "busy", "type": "x", "param": None, "code": None}}
    for _ in range(2):
        bg.call(lambda: fake.state.script.append(Scripted(status, error, path=CHAT)))
    job = http("POST", f"{proxy.url}/v1/jobs", {"endpoint": CHAT, "body": HELLO}).json()
    done = finished(proxy.url, job["id"])
    assert done["status"] == "completed"
    assert done["attempts"] == 3
    assert fake.state.calls[CHAT] == 3


def test_stream_stalled_past_the_chunk_timeout_ends_with_an_error_event(
    faulty_proxy: Callable[..., Proxy], fake: Fake, bg: BackgroundLoop
) -> None:
    proxy = faulty_proxy()

    def hold() -> None:
        fake.state.stream_gate = asyncio.Event()  # never opened: the stream stalls

    bg.call(hold)
    client = proxy.client()
    chunks = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(**HELLO, stream=True):  # type: ignore[call-overload]
            chunks.append(chunk)
    assert chunks, "what arrived before the stall reaches the client"
    assert not isinstance(info.value, openai.APIConnectionError)
    assert "did not answer in time" in info.value.message
    bg.call(lambda: setattr(fake.state, "stream_gate", None))
    again = post(proxy.url, CHAT, {**HELLO, "stream": True})
    assert again.cache == "MISS" and again.body.endswith(b"data: [DONE]\n\n")
