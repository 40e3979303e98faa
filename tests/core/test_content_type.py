"""A POST is JSON by the Content-Type the client sent; without one, by whether it parses as a JSON
object. aiohttp reports a missing Content-Type as application/octet-stream, which once sent such
a request past routing, aliases and the cache to the default upstream with the client's key."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import pytest

from tests.conftest import KEY_A, Fake, Proxy, ProxyFactory
from tests.support.http import Raw

CHAT = {"model": "llama-3", "messages": [{"role": "user", "content": "hello"}]}


def raw_post(url: str, body: bytes, headers: dict[str, str]) -> Raw:
    """A POST with exactly these headers (urllib would add a Content-Type of its own)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("POST", parts.path, body=body, headers=headers)
        resp = conn.getresponse()
        return Raw(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


@pytest.fixture
def routed(make_proxy: ProxyFactory, fake: Fake) -> Proxy:
    """``llama*`` goes to ``local``, which must never see a client's key."""
    fake.state.models.append("llama-3")
    return make_proxy(
        {
            "upstreams": [
                {
                    "name": "openai",
                    "base_url": fake.url,
                    "models": ["gpt-*"],
                    "headers": {"x-upstream": "openai"},
                },
                {
                    "name": "local",
                    "base_url": fake.url,
                    "models": ["llama*"],
                    "api_key": "sk-local",
                    "pass_client_key": False,
                    "headers": {"x-upstream": "local"},
                },
            ],
            "routing": {"default_upstream": "openai"},
        }
    )


def test_json_without_content_type_is_routed_and_cached(routed: Proxy, fake: Fake) -> None:
    url = f"{routed.base_url}/chat/completions"
    body = json.dumps(CHAT).encode()
    first = raw_post(url, body, {"Authorization": f"Bearer {KEY_A}"})
    assert first.status == 200, first.body
    assert first.headers["x-cache"] == "MISS"
    seen = fake.state.requests[-1].headers
    assert seen["x-upstream"] == "local" and seen["Authorization"] == "Bearer sk-local"
    assert seen["Content-Type"] == "application/json"
    assert all(KEY_A not in str(r.headers) for r in fake.state.requests)
    again = raw_post(url, body, {"Authorization": f"Bearer {KEY_A}"})
    assert again.status == 200 and again.headers["x-cache"] == "HIT"
    assert len(fake.state.requests) == 1


def test_declared_octet_stream_is_still_passed_through(routed: Proxy, fake: Fake) -> None:
    url = f"{routed.base_url}/chat/completions"
    headers = {"Authorization": f"Bearer {KEY_A}", "Content-Type": "application/octet-stream"}
    raw_post(url, json.dumps(CHAT).encode(), headers)
    seen = fake.state.requests[-1]
    assert seen.headers["x-upstream"] == "openai" and seen.body == json.dumps(CHAT).encode()


@pytest.mark.parametrize("body", [b"\x00\x01binary", b"[1, 2]", b""])
def test_untyped_body_that_is_no_json_object_passes_through(
    routed: Proxy, fake: Fake, body: bytes
) -> None:
    raw = raw_post(f"{routed.base_url}/audio/x", body, {"Authorization": f"Bearer {KEY_A}"})
    assert raw.status == 200, raw.body  # the fake echoes what it got
    seen = fake.state.requests[-1]
    assert seen.headers["x-upstream"] == "openai" and seen.body == body
    assert seen.headers["Authorization"] == f"Bearer {KEY_A}"


@pytest.mark.parametrize(
    "content_type", ["Multipart/Form-Data; boundary=b0undary", "Application/Octet-Stream"]
)
def test_streamed_types_are_recognised_in_any_case(
    routed: Proxy, fake: Fake, content_type: str
) -> None:
    """Media types are case-insensitive (RFC 9110 8.3.1): a capitalised multipart upload is
    streamed through like a lower-case one, not read as JSON and refused."""
    body = b'--b0undary\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
    body += b"--b0undary--\r\n"
    headers = {"Authorization": f"Bearer {KEY_A}", "Content-Type": content_type}
    raw = raw_post(f"{routed.base_url}/audio/transcriptions", body, headers)
    assert raw.status == 200, raw.body
    assert fake.state.requests[-1].body == body
