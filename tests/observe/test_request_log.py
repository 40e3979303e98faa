"""The request log: one line per request, every field, never a secret (issue 9)."""

from __future__ import annotations

import asyncio
import json
import logging
import select
from typing import Any

import pytest

from bench.fake_upstream import Scripted
from proxy.keys import OBSERVER
from proxy.observe.requestlog import RequestLog
from tests.conftest import KEY_A, KEY_B, Fake, ProxyFactory
from tests.observe.helpers import Lines
from tests.support import http

UPSTREAM_KEY = "sk-upstream-secret-4242"
ADMIN_KEY = "sk-admin-secret-7777"
PROMPT = "the secret recipe is 42 cloves"
FIELDS = {
    "time", "level", "request_id", "tenant", "method", "route", "query", "model", "upstream",
    "status", "cache", "coalesced", "batch", "latency_ms", "upstream_ms", "ttfb_ms", "bytes_in",
    "bytes_out", "error",
}  # fmt: skip


def chat(prompt: str = PROMPT, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], **extra}


def keys_config(fake: Fake, **server: Any) -> dict[str, Any]:
    return {
        "server": server,
        "upstreams": [
            {"name": "fake", "base_url": fake.url, "models": ["*"], "api_key": UPSTREAM_KEY}
        ],
        "auth": {
            "mode": "keys",
            "keys": [{"name": "a", "key": KEY_A}, {"name": "b", "key": KEY_B}],
            "admin_keys": [{"name": "ops", "key": ADMIN_KEY}],
        },
    }


def test_one_line_per_request_with_every_field_and_no_secret(
    make_proxy: ProxyFactory, fake: Fake
) -> None:
    proxy = make_proxy(keys_config(fake))
    lines = Lines(proxy)
    chat_url = f"{proxy.base_url}/chat/completions"
    bearer = {"Authorization": f"Bearer {KEY_A}"}
    answers = [
        http.post(chat_url, chat(), bearer),  # miss
        http.post(chat_url, chat(), bearer),  # hit
        http.post(chat_url, chat(stream=True), {"api-key": KEY_B}),  # streamed, other tenant
        http.get(f"{proxy.base_url}/models?api_key={KEY_B}&limit=3", bearer),
        http.post(chat_url, chat(), {"Authorization": "Bearer sk-wrong-key-1234"}),  # 401
        http.request("DELETE", f"{proxy.base_url}/cache", headers={"api-key": ADMIN_KEY}),
    ]
    logged = lines.parsed()
    text = lines.text()
    assert len(logged) == len(answers)
    assert [line["request_id"] for line in logged] == [a.headers["x-request-id"] for a in answers]
    for line in logged:
        assert set(line) == FIELDS, line
    for secret in (KEY_A, KEY_B, UPSTREAM_KEY, ADMIN_KEY, "sk-wrong-key-1234", PROMPT, "recipe"):
        assert secret not in text

    miss, hit, stream, models, refused, _ = logged
    assert (miss["method"], miss["route"], miss["status"], miss["cache"]) == (
        "POST", "/v1/chat/completions", 200, "MISS",
    )  # fmt: skip
    assert miss["model"] == "gpt-4o-mini" and miss["upstream"] == "fake"
    assert miss["tenant"].startswith("t_") and miss["tenant"] == hit["tenant"] != stream["tenant"]
    assert miss["upstream_ms"] > 0 and miss["latency_ms"] >= miss["upstream_ms"]
    assert miss["bytes_in"] == len(json.dumps(chat()))
    assert miss["bytes_out"] == len(answers[0].body) and hit["bytes_out"] == len(answers[1].body)
    assert hit["cache"] == "HIT" and hit["upstream_ms"] is None
    assert stream["ttfb_ms"] > 0 and stream["bytes_out"] > 0 and stream["level"] == "info"
    assert models["query"] == "api_key=&limit="
    assert refused["status"] == 401 and refused["error"] == "invalid_api_key"
    assert refused["tenant"] is None


def test_errors_are_logged_with_their_code_and_level(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy(
        {
            "cache": {"enabled": False},
            "upstreams": [
                {"name": "fake", "base_url": fake.url, "models": ["gpt-*"]},
                {"name": "gone", "base_url": "http://127.0.0.1:9/v1", "models": ["dead-*"]},
            ],
            "routing": {"default_upstream": "fake"},
        }
    )
    lines = Lines(proxy)
    fake.state.script.append(Scripted(429, {"error": {"message": "slow", "code": "rate_limit"}}))
    url = f"{proxy.base_url}/chat/completions"
    assert http.post(url, chat()).status == 429
    assert http.post(url, {**chat(), "model": "dead-1"}).status == 502
    limited, unreachable = lines.parsed()
    assert (limited["status"], limited["error"], limited["level"]) == (429, "rate_limit", "info")
    assert (unreachable["status"], unreachable["upstream"]) == (502, "gone")
    assert unreachable["error"] == "upstream_error" and unreachable["level"] == "error"
    assert unreachable["upstream_ms"] is None


def test_bodies_only_with_log_bodies(make_proxy: ProxyFactory) -> None:
    proxy = make_proxy({"server": {"log_bodies": True}, "cache": {"enabled": False}})
    lines = Lines(proxy)
    http.post(f"{proxy.base_url}/chat/completions", chat(), {"Authorization": f"Bearer {KEY_A}"})
    [line] = lines.parsed()
    assert PROMPT in line["request_body"] and "echo: " + PROMPT in line["response_body"]
    assert KEY_A not in lines.text()


def test_text_format_and_level(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy({"server": {"log_format": "text", "log_level": "error"}})
    lines = Lines(proxy)
    url = f"{proxy.base_url}/chat/completions"
    http.post(url, chat())  # info: below the level
    fake.state.script.append(Scripted(503, {"error": {"message": "down", "code": "overloaded"}}))
    http.post(url, chat("another"), {"X-Request-ID": "my-id-1"})
    [line] = lines.text().splitlines()
    assert " ERROR my-id-1 POST /v1/chat/completions 503 " in line
    assert "error=overloaded" in line and "upstream=fake" in line


def test_access_log_off_writes_nothing(make_proxy: ProxyFactory) -> None:
    proxy = make_proxy({"server": {"access_log": False}})
    assert proxy.app[OBSERVER].log is None
    assert http.post(f"{proxy.base_url}/chat/completions", chat()).status == 200


def test_lines_reach_stderr(make_proxy: ProxyFactory, capfd: pytest.CaptureFixture[str]) -> None:
    """The default sink writes whole lines to file descriptor 2."""
    proxy = make_proxy({"server": {"log_format": "json"}})
    log = proxy.app[OBSERVER].log
    assert log is not None
    proxy.live.bg.call(lambda: setattr(log, "sink", log.write))  # (the fixture muted it)
    answer = http.post(f"{proxy.base_url}/chat/completions", chat(), {"X-Request-ID": "req-fd-2"})
    proxy.live.bg.call(log.flush)
    err = capfd.readouterr().err
    [line] = [json.loads(x) for x in err.splitlines() if '"request_id":"req-fd-2"' in x]
    assert answer.headers["x-request-id"] == "req-fd-2" and line["status"] == 200


def test_lines_are_written_whole_in_pieces_a_pipe_keeps_whole() -> None:
    log = RequestLog(fmt="json", level=logging.INFO)
    writes: list[bytes] = []
    log.sink = writes.append

    async def one_loop_turn() -> None:
        for i in range(200):
            log.emit({"n": i, "status": 200, "pad": "x" * 100})
        await asyncio.sleep(0)  # the flush the first line scheduled

    asyncio.run(one_loop_turn())
    assert len(writes) > 1 and all(len(w) <= select.PIPE_BUF for w in writes)
    assert all(w.endswith(b"\n") for w in writes)
    assert [json.loads(x)["n"] for w in writes for x in w.splitlines()] == list(range(200))
