"""What an upstream's own settings add to each request: its ``headers`` (checked at load, a
``Host`` among them replacing the base URL's) and ``user:password@`` in its ``base_url`` (sent as
Basic auth). Seen through the real proxy by a raw upstream that records every header line as it
arrived, duplicates included."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from proxy.config import ConfigError, parse_settings
from tests.conftest import KEY_A, ProxyFactory
from tests.support import http
from tests.support.live import BackgroundLoop

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 0,
    "model": "gpt-4o",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hi"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}
_BODY = json.dumps(COMPLETION).encode()
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(_BODY),
    _BODY,
)
BOUNDARY = "form-boundary-1"
UPLOAD = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
    f"Content-Type: audio/wav\r\n\r\nRIFF\r\n--{BOUNDARY}--\r\n"
).encode()


# -- a raw upstream ------------------------------------------------------------------------------


@dataclass
class Seen:
    line: str
    headers: list[tuple[str, str]]
    body: bytes

    def values(self, name: str) -> list[str]:
        """Every value of ``name`` (any case), in the order they came."""
        return [v for n, v in self.headers if n.lower() == name.lower()]


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]]) -> bytes:
    names = {n.lower(): v for n, v in headers}
    if "chunked" in names.get("transfer-encoding", "").lower():
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
            pass
        return body
    return await reader.readexactly(int(names.get("content-length", "0")))


class Recorder:
    """An HTTP/1.1 server on the background loop that answers every request with a chat
    completion and records each request's header lines exactly as they arrived."""

    def __init__(self, bg: BackgroundLoop) -> None:
        self.bg = bg
        self.port = 0
        self.seen: list[Seen] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> Recorder:
        async def start() -> int:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            return int(self._server.sockets[0].getsockname()[1])

        self.port = self.bg.run(start())
        return self

    def stop(self) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()

        self.bg.run(stop())

    def url(self, userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.port}/v1"

    def last(self, path: str) -> Seen:
        found = [s for s in self.seen if s.line.split(" ")[1].split("?")[0] == path]
        assert found, f"no request for {path}: {[s.line for s in self.seen]}"
        return found[-1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *rest = head[:-4].decode("latin-1").split("\r\n")
                headers = []
                for raw in rest:
                    name, _, value = raw.partition(":")
                    headers.append((name, value.strip()))
                body = await _read_body(reader, headers)
                self.seen.append(Seen(line, headers, body))
                writer.write(ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


@pytest.fixture
def recorder(bg: BackgroundLoop) -> Iterator[Recorder]:
    rec = Recorder(bg).start()
    yield rec
    rec.stop()


def upstream(base_url: str, **settings: Any) -> dict[str, Any]:
    """A config whose one upstream is ``base_url`` (every model), with ``settings``."""
    up = {"name": "raw", "base_url": base_url, "models": ["*"], **settings}
    return {"upstreams": [up], "cache": {"enabled": False}}


#: The client's credential, as the requests below send it unless told otherwise.
BEARER = {"Authorization": f"Bearer {KEY_A}"}


def chat(base_url: str, credential: dict[str, str] = BEARER) -> http.Raw:
    """A JSON request: the proxy holds its body, and its own HTTP/1.1 client sends it."""
    return http.post(f"{base_url}/chat/completions", CHAT, dict(credential))


def upload(base_url: str, credential: dict[str, str] = BEARER) -> http.Raw:
    """A multipart upload (passed through): streamed from the client, sent by aiohttp's
    client."""
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", **credential}
    return http.post(f"{base_url}/audio/transcriptions", UPLOAD, headers)


SENDERS = {"json": (chat, "/v1/chat/completions"), "upload": (upload, "/v1/audio/transcriptions")}


# -- a. what the config refuses ------------------------------------------------------------------

UP = {"name": "a", "base_url": "http://127.0.0.1:1/v1"}
SECRET = "s3cr3t-gateway-value"


def headers_error(headers: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_settings({"upstreams": [{**UP, "headers": headers}]}, env={})
    return str(info.value)


@pytest.mark.parametrize(
    "name",
    [
        "Content-Length",
        "content-length",
        "Transfer-Encoding",
        "TRANSFER-ENCODING",
        "Connection",
        "connection",
        "Accept-Encoding",
        "aCCEPT-eNCODING",
        "X Gateway",
        "X-Gateway:",
    ],
)
def test_a_header_the_proxy_owns_or_a_bad_name_is_refused_by_name(name: str) -> None:
    msg = headers_error({"X-Fine": "1", name: SECRET})
    assert "upstreams[0].headers" in msg
    assert repr(name) in msg
    assert SECRET not in msg


@pytest.mark.parametrize(
    "value",
    [f"{SECRET}\r\nInjected: 1", f"{SECRET}\nInjected: 1", f"{SECRET}\rInjected: 1"],
    ids=["crlf", "lf", "cr"],
)
def test_a_header_value_with_a_line_break_is_refused_without_echoing_it(value: str) -> None:
    msg = headers_error({"X-Gateway-Token": value})
    assert "upstreams[0].headers" in msg and "line break" in msg
    assert SECRET not in msg and "Injected" not in msg


def test_a_header_value_with_a_line_break_is_refused_naming_its_header() -> None:
    msg = headers_error({"X-Fine": "1", "X-Gateway-Token": f"{SECRET}\r\nInjected: 1"})
    assert "X-Gateway-Token" in msg, msg


def test_host_and_ordinary_headers_are_accepted() -> None:
    settings = parse_settings(
        {"upstreams": [{**UP, "headers": {"Host": "api.internal", "api-version": "2024-10-21"}}]},
        env={},
    )
    assert settings.upstreams[0].headers == {"Host": "api.internal", "api-version": "2024-10-21"}


# -- b. a configured Host ------------------------------------------------------------------------


@pytest.mark.parametrize("sender", SENDERS, ids=list(SENDERS))
def test_a_configured_host_is_the_one_host_header_the_upstream_gets(
    make_proxy: ProxyFactory, recorder: Recorder, sender: str
) -> None:
    send, path = SENDERS[sender]
    headers = {"Host": "api.internal", "X-Gateway": "g-1"}
    proxy = make_proxy(upstream(recorder.url(), headers=headers))
    out = send(proxy.base_url)
    assert out.status == 200, out
    seen = recorder.last(path)
    assert seen.values("Host") == ["api.internal"], seen.headers
    assert seen.values("X-Gateway") == ["g-1"]


def test_without_a_configured_host_the_base_urls_is_sent(
    make_proxy: ProxyFactory, recorder: Recorder
) -> None:
    proxy = make_proxy(upstream(recorder.url()))
    assert chat(proxy.base_url).status == 200
    seen = recorder.last("/v1/chat/completions")
    assert seen.values("Host") == [f"127.0.0.1:{recorder.port}"]


# -- c. user:password@ in the base URL -----------------------------------------------------------

BASIC = "Basic " + base64.b64encode(b"user:p@ss").decode()


@pytest.mark.parametrize("sender", SENDERS, ids=list(SENDERS))
def test_userinfo_in_the_base_url_is_sent_as_basic_auth(
    make_proxy: ProxyFactory, recorder: Recorder, sender: str
) -> None:
    send, path = SENDERS[sender]
    proxy = make_proxy(upstream(recorder.url("user:p%40ss@"), pass_client_key=False))
    out = send(proxy.base_url)
    assert out.status == 200, out
    seen = recorder.last(path)
    assert seen.values("Authorization") == [BASIC], seen.headers
    assert seen.values("api-key") == []
    assert seen.values("Host") == [f"127.0.0.1:{recorder.port}"]  # no userinfo in it
    assert "user" not in seen.line and "p%40ss" not in seen.line


@pytest.mark.parametrize("sender", SENDERS, ids=list(SENDERS))
def test_an_api_key_is_sent_instead_of_the_base_urls_userinfo(
    make_proxy: ProxyFactory, recorder: Recorder, sender: str
) -> None:
    send, path = SENDERS[sender]
    config = upstream(recorder.url("user:p%40ss@"), api_key="sk-own", pass_client_key=False)
    proxy = make_proxy(config)
    out = send(proxy.base_url)
    assert out.status == 200, out
    seen = recorder.last(path)
    assert seen.values("Authorization") == ["Bearer sk-own"], seen.headers


@pytest.mark.parametrize("sender", SENDERS, ids=list(SENDERS))
def test_the_client_key_passed_on_is_sent_instead_of_the_base_urls_userinfo(
    make_proxy: ProxyFactory, recorder: Recorder, sender: str
) -> None:
    send, path = SENDERS[sender]
    proxy = make_proxy(upstream(recorder.url("user:p%40ss@")))  # passthrough, pass_client_key
    out = send(proxy.base_url)
    assert out.status == 200, out
    seen = recorder.last(path)
    assert seen.values("Authorization") == [f"Bearer {KEY_A}"], seen.headers


@pytest.mark.parametrize("whose", ["own-key", "client-key"])
@pytest.mark.parametrize("sender", SENDERS, ids=list(SENDERS))
def test_a_key_in_the_api_key_header_is_sent_instead_of_the_base_urls_userinfo(
    make_proxy: ProxyFactory, recorder: Recorder, sender: str, whose: str
) -> None:
    """Azure's ``api-key`` header, with the upstream's own key (``auth_header: api-key``) or the
    client's passed on: a credential too, so the base URL's ``user:password@`` is not sent beside
    it (docs/operations.md: "sent as Basic auth when no other credential is")."""
    send, path = SENDERS[sender]
    url = recorder.url("user:p%40ss@")
    if whose == "own-key":
        config = upstream(url, api_key="sk-own", auth_header="api-key", pass_client_key=False)
    else:
        config = upstream(url)
    proxy = make_proxy(config)
    out = send(proxy.base_url, {"api-key": KEY_A})
    assert out.status == 200, out
    seen = recorder.last(path)
    assert seen.values("api-key") == ["sk-own" if whose == "own-key" else KEY_A]
    assert seen.values("Authorization") == [], seen.headers


@pytest.mark.parametrize("sender", SENDERS, ids=list(SENDERS))
def test_config_headers_replace_the_clients_whatever_their_case(
    make_proxy: ProxyFactory, recorder: Recorder, sender: str
) -> None:
    """A config header wins over the client's of the same name in another case, and the
    upstream's own key wins over a config ``authorization``: one of each goes upstream."""
    send, path = SENDERS[sender]
    config = upstream(
        recorder.url(),
        api_key="sk-own",
        pass_client_key=False,
        headers={"X-Tag": "from-config", "authorization": "Bearer from-config"},
    )
    proxy = make_proxy(config)
    out = send(proxy.base_url, {**BEARER, "x-tag": "from-client"})
    assert out.status == 200, out
    seen = recorder.last(path)
    assert seen.values("X-Tag") == ["from-config"], seen.headers
    assert seen.values("Authorization") == ["Bearer sk-own"], seen.headers
