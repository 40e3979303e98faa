"""Upstreams: routing by model, one pooled session each, header filtering, error mapping."""

from __future__ import annotations

import base64
import fnmatch
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp
from multidict import CIMultiDict
from prometheus_client import Counter
from yarl import URL

from .auth import credential_header
from .call import Call, Reply
from .config import Settings, UpstreamSettings
from .errors import InvalidRequest, ModelNotFound, NotFound, UpstreamError, UpstreamTimeout
from .http1 import Answer, HeaderError, Pool, is_streamed

__all__ = ["Router", "Upstream", "forward_headers", "reply_headers"]

log = logging.getLogger(__name__)

#: Never forwarded in either direction (RFC 9110 7.6.1), plus what aiohttp sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
#: Request headers the proxy owns: credentials and its own controls.
_REQUEST_DROP = HOP_BY_HOP | {
    "authorization",
    "api-key",
    "accept-encoding",
    "cache-control",
    "x-cache-ttl",
    "prefer",
    "idempotency-key",
    "x-request-id",  # the proxy's own (the client's when sane), set in request_headers
    # The proxy has the body already (or streams it): an upstream that never answers 100 must
    # not stall the request.
    "expect",
}
#: The body is decompressed by the client session, so these no longer describe it.
_REPLY_DROP = HOP_BY_HOP | {"content-encoding", "date", "server"}


def _connection_tokens(headers: Mapping[str, str]) -> set[str]:
    value = headers.get("Connection")
    return {t.strip().lower() for t in value.split(",")} if value else set()


def forward_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's headers that go upstream (no hop-by-hop, no credentials)."""
    drop = _REQUEST_DROP | _connection_tokens(headers) if "Connection" in headers else _REQUEST_DROP
    return {k: v for k, v in headers.items() if k.lower() not in drop}


def reply_headers(pairs: Sequence[tuple[str, str]]) -> CIMultiDict[str]:
    """The upstream's headers (in order, as pairs) that go back to the client."""
    drop = _REPLY_DROP
    for name, value in pairs:
        if name.lower() == "connection":
            drop = drop | {t.strip().lower() for t in value.split(",")}
    return CIMultiDict((k, v) for k, v in pairs if k.lower() not in drop)


class Upstream:
    """One OpenAI-compatible server and the pooled connections that talk to it.

    Requests with a body in hand go through ``pool``, the lean client of :mod:`proxy.http1`;
    ``session`` (aiohttp's client) carries request bodies streamed from the client, and ``HEAD``.
    """

    def __init__(
        self,
        settings: UpstreamSettings,
        session: aiohttp.ClientSession,
        *,
        pool: Pool | None = None,
        errors: Counter | None = None,
    ) -> None:
        self.settings = settings
        #: ``llm_proxy_upstream_errors``, labelled by upstream and kind.
        self._errors = errors
        self.name = settings.name
        self.session = session
        self.pool = pool
        #: Without ``user:password@`` (sent as a header instead, by either client).
        self.base_url = _without_userinfo(settings.base_url)
        self._auth = _own_key_header(settings)
        self._pass_client_key = settings.pass_client_key
        extra = dict(settings.headers)
        #: A ``Host`` of the config's own replaces the base URL's (a gateway behind an address).
        self._host = next((extra.pop(k) for k in list(extra) if k.lower() == "host"), None)
        self._extra_headers = extra
        self._extra_names = frozenset(k.lower() for k in extra)
        #: ``user:password@`` in the base URL: Basic auth, unless another credential is sent.
        self._basic = _basic_auth(settings.base_url)
        self._timeout = aiohttp.ClientTimeout(
            total=settings.total_timeout_s,
            sock_connect=settings.connect_timeout_s,
            sock_read=settings.first_byte_timeout_s,
        )
        exact = [m for m in settings.models if not _has_glob(m)]
        globs = [fnmatch.translate(m) for m in settings.models if _has_glob(m)]
        self._exact = frozenset(exact)
        self._pattern = re.compile("|".join(globs)) if globs else None

    def serves(self, model: str) -> bool:
        return model in self._exact or (
            self._pattern is not None and self._pattern.match(model) is not None
        )

    def url(self, path: str, query: str = "") -> str:
        rest = _rest(path)
        return f"{self.base_url}{rest}?{query}" if query else f"{self.base_url}{rest}"

    def forwards_client_key(self, credential: str | None) -> bool:
        """Whether a call with this client ``credential`` reaches the upstream with it (else with
        the upstream's own key, or none): then the upstream can tell one tenant from another."""
        return self._pass_client_key and credential is not None

    def request_headers(self, call: Call) -> dict[str, str]:
        """What goes upstream: the client's headers, the config's (which win, whatever their
        case), the request id and one credential (the client's, the upstream's key, a header
        of the config, or ``user:password@`` of the base URL, in that order)."""
        headers = self._request_headers(call)
        if self._basic is not None and not any(k.lower() in _CREDENTIALS for k in headers):
            headers["Authorization"] = self._basic
        return headers

    def _request_headers(self, call: Call) -> dict[str, str]:
        if self._extra_headers:
            headers = {k: v for k, v in call.headers.items() if k.lower() not in self._extra_names}
            headers.update(self._extra_headers)
        else:
            headers = dict(call.headers)
        if call.note.request_id:
            headers["X-Request-ID"] = call.note.request_id
        if self.forwards_client_key(call.credential):
            assert call.credential is not None
            name, value = credential_header(call.credential)
        elif self._auth is not None:
            name, value = self._auth
        else:
            return headers
        if self._extra_names and name.lower() in self._extra_names:
            for other in [k for k in headers if k.lower() == name.lower()]:
                del headers[other]
        headers[name] = value
        return headers

    async def send(self, call: Call, *, data: Any = None, stream_reply: bool = False) -> Reply:
        """Send ``call`` and return the reply: event streams and binary bodies (and every reply
        with ``stream_reply``) as a stream of chunks, JSON read whole."""
        started, call.note.upstream = time.perf_counter(), self.name
        body = call.body if data is None else data
        if self.pool is not None and isinstance(body, bytes) and call.method != "HEAD":
            return await self._send_lean(self.pool, call, body, stream_reply, started)
        try:
            sent = self.request_headers(call)
            if self._host is not None:
                sent["Host"] = self._host
            resp = await self.session.request(
                call.method,
                URL(self.url(call.path, call.query), encoded=True),
                data=call.body if data is None else data,
                headers=sent,
                timeout=self._timeout,
                allow_redirects=False,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self.failure(exc, "unreachable") from exc
        self._answered(call, resp.status, started)
        headers = reply_headers(list(resp.headers.items()))
        if stream_reply or is_streamed(resp.headers.get("Content-Type", "")):
            stream = _Chunks(resp.content, self)
            return Reply(resp.status, headers, stream=stream, closer=_closer(resp))
        try:
            body = await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self.failure(exc, "broken") from exc
        finally:
            resp.release()
        return Reply(resp.status, headers, body=body)

    async def _send_lean(
        self, pool: Pool, call: Call, body: bytes, stream_reply: bool, started: float
    ) -> Reply:
        target = f"{_rest(call.path)}?{call.query}" if call.query else _rest(call.path)
        try:
            answer = await pool.request(
                call.method,
                target,
                self.request_headers(call),
                body,
                stream_reply=stream_reply,
                host=self._host,
            )
        except HeaderError as exc:  # a header that would split the request
            raise InvalidRequest("A request header holds a line break") from exc
        except (TimeoutError, OSError) as exc:
            answered = getattr(exc, "answered", False)
            raise self.failure(exc, "broken" if answered else "unreachable") from exc
        status = answer.status
        self._answered(call, status, started, at=answer.headers_at)
        if answer.stream is None:
            return Reply(status, reply_headers(answer.headers), body=answer.body)
        return Reply(
            status,
            reply_headers(answer.headers),
            stream=_Chunks(answer.stream, self),
            closer=_lean_closer(answer),
        )

    def _answered(self, call: Call, status: int, started: float, *, at: float = 0.0) -> None:
        """The upstream answered with ``status`` (its headers in at ``at``, default now)."""
        call.note.answered(self.name, status, started, at=at)
        if status >= 400 and self._errors is not None:  # answered, but with a refusal
            self._errors.labels(upstream=self.name, kind=f"http_{status // 100}xx").inc()

    def failure(self, exc: BaseException, kind: str) -> UpstreamError:
        """The proxy's error for a failed exchange, counted: a timeout is 504, the rest 502."""
        if isinstance(exc, TimeoutError):
            kind = "timeout"
        if self._errors is not None:
            self._errors.labels(upstream=self.name, kind=kind).inc()
        if kind == "timeout":
            return UpstreamTimeout(f"upstream {self.name!r} did not answer in time")
        return UpstreamError(f"upstream {self.name!r} {_FAILURE_TEXT[kind]}")


_FAILURE_TEXT = {"unreachable": "is unreachable", "broken": "broke off its answer"}


def _own_key_header(settings: UpstreamSettings) -> tuple[str, str] | None:
    """The header that carries the upstream's own ``api_key``, per ``auth_header``."""
    if not settings.api_key:
        return None
    if settings.auth_header == "api-key":
        return "api-key", settings.api_key
    return "Authorization", f"Bearer {settings.api_key}"


_CREDENTIALS = frozenset({"authorization", "api-key"})


def _without_userinfo(base_url: str) -> str:
    url = urlsplit(base_url)
    if url.username is None:
        return base_url
    return url._replace(netloc=url.netloc.rpartition("@")[2]).geturl()


def _basic_auth(base_url: str) -> str | None:
    url = urlsplit(base_url)
    if url.username is None:
        return None
    pair = f"{unquote(url.username)}:{unquote(url.password or '')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


def _rest(path: str) -> str:
    """Client paths start with /v1; an upstream's base URL already ends where /v1 would be."""
    return path[3:] if path.startswith("/v1") else path


def _lean_closer(answer: Answer) -> Any:
    async def close() -> None:
        # A body read to its end gives the connection back; an unfinished one closes it.
        assert answer.stream is not None
        answer.stream.close()

    return close


def _has_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _closer(resp: aiohttp.ClientResponse) -> Any:
    async def close() -> None:
        # close(), not release(): an unfinished body must not return the connection to the pool.
        if resp.content.at_eof():
            resp.release()
        else:
            resp.close()

    return close


class _Chunks:
    """A streamed upstream body, chunk by chunk as it arrives.

    A class, not a generator, so that a cancelled read loses nothing: another reader can go on
    from the same point (the single-flight fan-out relies on it).
    """

    __slots__ = ("_content", "_upstream")

    def __init__(self, content: Any, upstream: Upstream) -> None:
        #: aiohttp's ``StreamReader`` or the lean client's ``Body``: both have ``readany``.
        self._content = content
        self._upstream = upstream

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk: bytes = await self._content.readany()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._upstream.failure(exc, "broken") from exc
        if not chunk:
            raise StopAsyncIteration
        return chunk


class Router:
    """Picks the upstream for a model: alias first, then the first match, then the default."""

    def __init__(self, settings: Settings, upstreams: Iterable[Upstream]) -> None:
        self.upstreams = {u.name: u for u in upstreams}
        self.aliases = dict(settings.routing.model_aliases)
        default = settings.default_upstream
        self.default = self.upstreams[default] if default else None
        self._memo: dict[str, Upstream | None] = {}

    def resolve(self, model: str) -> tuple[str, Upstream]:
        """The model name to forward and its upstream; :class:`ModelNotFound` if none."""
        model = self.aliases.get(model, model)
        try:
            upstream = self._memo[model]
        except KeyError:
            upstream = next((u for u in self.upstreams.values() if u.serves(model)), self.default)
            if len(self._memo) < 10_000:
                self._memo[model] = upstream
        if upstream is None:
            raise ModelNotFound(f"The model `{model}` is not served by this proxy", param="model")
        return model, upstream

    def default_or_404(self) -> Upstream:
        if self.default is None:
            raise NotFound("No upstream is configured for this route (no default upstream)")
        return self.default
