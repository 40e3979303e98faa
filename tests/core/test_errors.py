"""Errors the proxy makes itself: OpenAI-shaped, the right status, no harm to other requests."""

from __future__ import annotations

import socket
from http.client import HTTPConnection

from bench.fake_upstream import Scripted
from tests.conftest import KEY_A, Fake, Proxy, ProxyFactory
from tests.support import http
from tests.support.redis_server import free_port


def assert_openai_error(raw: http.Raw, status: int, code: str | None = None) -> dict[str, object]:
    assert raw.status == status, raw.body
    assert raw.headers["content-type"].startswith("application/json")
    err = raw.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert "Traceback" not in err["message"]
    if code is not None:
        assert err["code"] == code
    return err  # type: ignore[no-any-return]


CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}


def chat_url(proxy: Proxy) -> str:
    return f"{proxy.base_url}/chat/completions"


def test_malformed_json_is_400(proxy: Proxy) -> None:
    raw = http.post(chat_url(proxy), b'{"model": "gpt-4o", ', {"Content-Type": "application/json"})
    err = assert_openai_error(raw, 400, "invalid_json")
    assert err["type"] == "invalid_request_error"


def test_non_object_body_is_400(proxy: Proxy) -> None:
    raw = http.post(chat_url(proxy), b"[1, 2]", {"Content-Type": "application/json"})
    assert "JSON object" in str(assert_openai_error(raw, 400, "invalid_json")["message"])


def test_wrong_types_are_400(proxy: Proxy) -> None:
    raw = http.post(chat_url(proxy), {"model": 5, "messages": []})
    assert assert_openai_error(raw, 400)["param"] == "model"
    raw = http.post(chat_url(proxy), {"model": "gpt-4o", "messages": [], "stream": "yes"})
    assert assert_openai_error(raw, 400)["param"] == "stream"


def test_keys_mode_requires_a_proxy_key(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy({"auth": {"mode": "keys", "keys": [{"name": "a", "key": KEY_A}]}})
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}
    assert_openai_error(http.post(chat_url(proxy), body), 401, "invalid_api_key")
    wrong = http.post(chat_url(proxy), body, {"Authorization": "Bearer sk-wrong"})
    err = assert_openai_error(wrong, 401, "invalid_api_key")
    assert "sk-wrong" not in str(err["message"])
    ok = http.post(chat_url(proxy), body, {"Authorization": f"Bearer {KEY_A}"})
    assert ok.status == 200
    assert fake.state.calls["/v1/chat/completions"] == 1


def test_unrouted_model_is_404_when_no_default(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy(
        {
            "upstreams": [
                {"name": "fake", "base_url": fake.url, "models": ["gpt-*"]},
                {"name": "other", "base_url": fake.url, "models": ["text-embedding-*"]},
            ]
        }
    )
    raw = http.post(chat_url(proxy), {"model": "claude-3", "messages": []})
    err = assert_openai_error(raw, 404, "model_not_found")
    assert err["param"] == "model" and "claude-3" in str(err["message"])
    assert sum(fake.state.calls.values()) == 0


def test_oversized_body_is_413(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy({"server": {"max_body_bytes": 1000}, "cache": {"enabled": False}})
    big = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 2000}]}
    assert_openai_error(http.post(chat_url(proxy), big), 413, "request_too_large")
    # Without a Content-Length (chunked), the limit still holds.
    conn = http_client_to(proxy)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    payload = b'{"model": "gpt-4o", "messages": [], "pad": "' + b"x" * 3000 + b'"}'
    conn.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload))
    resp = conn.getresponse()
    assert resp.status == 413
    assert resp.read().startswith(b'{"error"')
    conn.close()
    assert sum(fake.state.calls.values()) == 0


def http_client_to(proxy: Proxy) -> HTTPConnection:
    return HTTPConnection("127.0.0.1", proxy.live.port, timeout=10)


def test_unreachable_upstream_is_502(make_proxy: ProxyFactory) -> None:
    closed = free_port()
    proxy = make_proxy(
        {"upstreams": [{"name": "fake", "base_url": f"http://127.0.0.1:{closed}/v1"}]}
    )
    raw = http.post(chat_url(proxy), CHAT)
    err = assert_openai_error(raw, 502, "upstream_error")
    assert "unreachable" in str(err["message"])


def test_upstream_timeout_is_504(make_proxy: ProxyFactory, fake: Fake) -> None:
    proxy = make_proxy(
        {
            "upstreams": [{"name": "fake", "base_url": fake.url, "first_byte_timeout_s": 0.2}],
            "cache": {"enabled": False},
        }
    )
    fake.state.latency_ms = 2000
    raw = http.post(chat_url(proxy), CHAT)
    assert_openai_error(raw, 504, "upstream_timeout")


def test_upstream_error_bodies_and_headers_pass_unchanged(proxy: Proxy, fake: Fake) -> None:
    body = {
        "error": {
            "message": "Rate limit reached",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    fake.state.script.append(Scripted(429, body, {"retry-after": "7", "x-request-id": "req_9"}))
    raw = http.post(chat_url(proxy), CHAT)
    assert raw.status == 429
    assert raw.json() == body
    assert raw.headers["retry-after"] == "7" and raw.headers["x-request-id"] == "req_9"


def test_unknown_route_is_openai_shaped_404(proxy: Proxy) -> None:
    assert_openai_error(http.get(f"{proxy.url}/nope"), 404)


def test_a_bad_request_harms_no_other(proxy: Proxy) -> None:
    # A client that sends half a body and vanishes, then malformed JSON, then a good request.
    with socket.create_connection(("127.0.0.1", proxy.live.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 500\r\n\r\n{"model": '
        )
    http.post(chat_url(proxy), b"{", {"Content-Type": "application/json"})
    ok = proxy.client().chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "still fine"}]
    )
    assert ok.choices[0].message.content == "echo: still fine"
