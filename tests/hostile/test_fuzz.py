"""Hypothesis fuzzes the HTTP surface with raw bytes: random JSON, wrong types, huge numbers,
deep nesting, invalid UTF-8, odd headers, CRLF in header values, conflicting lengths.

Whatever arrives, the proxy never answers with a 5xx of its own (the fake upstream makes none),
never stops serving, and leaves no task behind.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cache.conftest import post
from tests.conftest import KEY_A, Fake, Proxy, ProxyFactory
from tests.support.live import BackgroundLoop

#: Examples per property; the figure in docs/reliability.md is the sum over the properties.
EXAMPLES = 150
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # the same inputs every run: a failure here is reproducible
)
PATHS = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/moderations",
    "/v1/responses",
    "/v1/jobs",
    "/v1/cache",
    "/v1/models",
    "/v1/files",
    "/v1/batches",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
#: Bodies shaped like the real thing, with any field swapped for any JSON value.
fields = st.sampled_from(
    ["model", "messages", "input", "prompt", "stream", "stream_options", "n", "endpoint", "body",
     "tools", "temperature", "encoding_format", "dimensions", "previous_response_id", "run_after",
     "callback_url", "metadata", "background", "max_tokens"]
)  # fmt: skip
shaped = st.dictionaries(fields, json_values, max_size=6).map(
    lambda d: {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], **d}
)


def _raw(port: int, data: bytes) -> int:
    """Send raw bytes; the status line's code, or 0 when the proxy closed without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        with sock.makefile("rb") as f:
            line = f.readline()
    parts = line.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def _request(method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    head = [f"{method} {path} HTTP/1.1".encode(), b"Host: fuzz", b"Connection: close"]
    head += [name + b": " + value for name, value in headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _tasks(bg: BackgroundLoop) -> int:
    """Tasks on the loop, less the connections' own (idle keep-alive to the fake upstream is
    not a leak; the proxy's open client connections are counted separately)."""

    def count() -> int:
        tasks = asyncio.all_tasks(bg.loop)
        return sum(1 for t in tasks if "RequestHandler.start" not in repr(t.get_coro()))

    return bg.call(count)


def _connections(proxy: Proxy) -> int:
    runner = proxy.live.runner
    assert runner is not None and runner.server is not None
    return len(runner.server.connections)


def _describe(bg: BackgroundLoop) -> str:
    return "\n".join(bg.call(lambda: [repr(t) for t in asyncio.all_tasks(bg.loop)]))


@pytest.fixture
def target(make_proxy: ProxyFactory, bg: BackgroundLoop) -> Iterator[Proxy]:
    proxy = make_proxy({"cache": {"enabled": True}})
    before = _tasks(bg)
    yield proxy
    # Nothing the fuzz sent may leave a task running once its connections are gone.
    deadline = time.monotonic() + 10
    while (_tasks(bg) > before or _connections(proxy)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _connections(proxy), "a fuzzed connection was left open"
    assert _tasks(bg) <= before, f"a fuzzed request left a task behind:\n{_describe(bg)}"
    assert post(proxy.url, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": "still serving"}]}).status == 200  # fmt: skip


def _auth() -> tuple[bytes, bytes]:
    return (b"Authorization", b"Bearer " + KEY_A.encode())


def _ok(status: int) -> None:
    assert status == 0 or status < 500, f"proxy answered {status}"


@FUZZ
@given(path=st.sampled_from(PATHS), body=shaped, method=st.sampled_from(["POST", "POST", "GET"]))
def test_shaped_json_with_wrong_types(target: Proxy, fake: Fake, path: str, body: dict[str, Any],
                                      method: str) -> None:  # fmt: skip
    data = json.dumps(body).encode()
    headers = [_auth(), (b"Content-Type", b"application/json"),
               (b"Content-Length", str(len(data)).encode())]  # fmt: skip
    _ok(_raw(target.live.port, _request(method, path, headers, data)))


@FUZZ
@given(path=st.sampled_from(PATHS), body=st.binary(max_size=300), ctype=st.sampled_from(
    [b"application/json", b"", b"text/plain", b"application/json; charset=latin-1",
     b"multipart/form-data; boundary=x"]))  # fmt: skip
def test_random_bytes_and_invalid_utf8(target: Proxy, path: str, body: bytes, ctype: bytes) -> None:
    headers = [_auth(), (b"Content-Length", str(len(body)).encode())]
    if ctype:
        headers.append((b"Content-Type", ctype))
    _ok(_raw(target.live.port, _request("POST", path, headers, body)))


@FUZZ
@given(
    depth=st.integers(min_value=1, max_value=5000),
    number=st.sampled_from([b"1e999999", b"-1e400", b"123456789" * 40, b"0.0000000001e-99999"]),
)
def test_deep_nesting_and_huge_numbers(target: Proxy, depth: int, number: bytes) -> None:
    data = (
        b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "n": '
        + (b"[" * depth + number + b"]" * depth)
        + b"}"
    )
    headers = [_auth(), (b"Content-Type", b"application/json"),
               (b"Content-Length", str(len(data)).encode())]  # fmt: skip
    _ok(_raw(target.live.port, _request("POST", "/v1/chat/completions", headers, data)))


header_names = st.sampled_from(
    [b"Authorization", b"api-key", b"X-Cache-TTL", b"Cache-Control", b"Prefer",
     b"Idempotency-Key", b"X-Request-ID", b"OpenAI-Organization", b"Content-Type",
     b"Transfer-Encoding", b"Content-Length", b"Expect", b"Connection", b"X-Weird\x7f"]
)  # fmt: skip
header_values = st.binary(max_size=40).map(lambda b: b.replace(b"\r\n\r\n", b"\r\n x"))


@FUZZ
@given(extra=st.lists(st.tuples(header_names, header_values), max_size=5), crlf=st.booleans())
def test_odd_headers_crlf_and_conflicting_lengths(
    target: Proxy, extra: list[tuple[bytes, bytes]], crlf: bool
) -> None:
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}'
    headers = [_auth(), (b"Content-Type", b"application/json"),
               (b"Content-Length", str(len(body)).encode()), *extra]  # fmt: skip
    if crlf:  # a header value that smuggles a second header line
        headers.append((b"X-Injected", b"a\r\nX-Cache-TTL: inf"))
    _ok(_raw(target.live.port, _request("POST", "/v1/chat/completions", headers, body)))


def test_conflicting_content_length_and_chunked(target: Proxy) -> None:
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}'
    headers = [_auth(), (b"Content-Type", b"application/json"), (b"Content-Length", b"5"),
               (b"Transfer-Encoding", b"chunked")]  # fmt: skip
    status = _raw(target.live.port, _request("POST", "/v1/chat/completions", headers, body))
    assert status in (0, 400)
    two = [_auth(), (b"Content-Length", b"5"), (b"Content-Length", b"7")]
    assert _raw(target.live.port, _request("POST", "/v1/chat/completions", two, body)) in (0, 400)


@pytest.mark.parametrize(
    ("header", "status"),
    [((b"Expect", b"\x80"), 417), ((b"Expect", b"200-ok"), 417),
     ((b"OpenAI-Organization", b"org-\xff"), 200), ((b"OpenAI-Project", b"\xc3("), 200)],
    ids=["expect-not-utf8", "expect-unknown", "org-not-utf8", "project-not-utf8"],
)  # fmt: skip
def test_header_values_that_are_not_utf8(
    target: Proxy, header: tuple[bytes, bytes], status: int
) -> None:
    """Found by the fuzz: both were a 500 from the proxy itself."""
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}'
    headers = [_auth(), (b"Content-Type", b"application/json"),
               (b"Content-Length", str(len(body)).encode()), header]  # fmt: skip
    assert _raw(target.live.port, _request("POST", "/v1/chat/completions", headers, body)) == status
