"""What travels through the pipeline: a :class:`Call` down, a :class:`Reply` back up."""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from multidict import CIMultiDict

from .errors import InvalidRequest, UpstreamError
from .observe.note import Note, current_note

if TYPE_CHECKING:
    from .upstream import Upstream

__all__ = [
    "NO_CONTROL",
    "VARY_HEADERS",
    "CacheControl",
    "Call",
    "Next",
    "Reply",
    "Stage",
    "vary_of",
]


@dataclass(frozen=True, slots=True)
class CacheControl:
    """Per-request cache directives (``Cache-Control`` and ``X-Cache-TTL`` request headers)."""

    no_cache: bool = False
    no_store: bool = False
    only_if_cached: bool = False
    max_age_s: float | None = None
    ttl_s: float | None = None

    @classmethod
    def parse(cls, cache_control: str | None, x_cache_ttl: str | None) -> CacheControl:
        if not cache_control and x_cache_ttl is None:
            return NO_CONTROL
        no_cache = no_store = only_if_cached = False
        max_age: float | None = None
        for part in (cache_control or "").split(","):
            name, _, value = part.strip().lower().partition("=")
            if name == "no-cache":
                no_cache = True
            elif name == "no-store":
                no_store = True
            elif name == "only-if-cached":
                only_if_cached = True
            elif name == "max-age":
                max_age = _seconds(value.strip('"'), header="Cache-Control", what="max-age")
        ttl = None
        if x_cache_ttl is not None:
            ttl = _seconds(x_cache_ttl, header="X-Cache-TTL", what="X-Cache-TTL")
        return cls(no_cache, no_store, only_if_cached, max_age, ttl)

    @property
    def may_share(self) -> bool:
        """Whether this request may read the cache or join another's call."""
        return not (self.no_cache or self.no_store)


#: Seconds as a client may write them: digits, an optional fraction and exponent. Not ``inf``,
#: ``nan``, a sign, ``0x10`` or ``1_000``, which Python's ``float`` would take.
_SECONDS = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _seconds(text: str, *, header: str, what: str) -> float:
    """A finite number of seconds, 0 or more; anything else is the client's mistake (400),
    answered before the call goes anywhere. Clamping to ``cache.max_ttl_s`` is the cache's job.
    """
    text = text.strip()
    value = float(text) if _SECONDS.fullmatch(text) else math.inf
    if not math.isfinite(value):
        shown = text if len(text) <= 32 else text[:32] + "..."
        raise InvalidRequest(
            f"{what} must be a number of seconds, 0 or more (got {shown!r})",
            param=header,
            code="invalid_cache_header",
        )
    return value


NO_CONTROL = CacheControl()

#: Request headers that select a different answer for the same body (the account it runs in).
VARY_HEADERS = frozenset({"openai-organization", "openai-project"})


def vary_of(query: str, headers: Mapping[str, str]) -> bytes:
    """The query and :data:`VARY_HEADERS` as JSON (empty for most calls); computed once per call
    by the door, since every key (cache, flight, batch, per input) includes it."""
    picked = [(low, _text(v)) for k, v in headers.items() if (low := k.lower()) in VARY_HEADERS]
    if not query and not picked:
        return b""
    return orjson.dumps([_text(query), sorted(picked)])


def _text(value: str) -> str:
    """``value`` as valid UTF-8: bytes that were not (kept by aiohttp as surrogates) escaped."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value


@dataclass(frozen=True, slots=True)
class Call:
    """One upstream-bound request. Built once by a door; stages only read it.

    ``headers`` are the client's headers already stripped of hop-by-hop and credential headers;
    ``credential`` is the client's own credential to forward in passthrough mode, as
    ``"<header>: <value>"`` (:func:`proxy.auth.credential_header`); ``None``: the upstream's
    configured key is used.
    """

    tenant: str
    upstream: Upstream
    method: str
    path: str
    body: bytes
    json: dict[str, Any] | None = None
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    credential: str | None = None
    model: str | None = None
    stream: bool = False
    cache: CacheControl = NO_CONTROL
    #: What besides the body selects the answer (query, account headers): see :func:`vary_of`.
    vary: bytes = b""
    #: The cache key (hex SHA-256 of the canonical request), set by the cache stage when the
    #: call is cacheable; the coalescing stages share it. ``None``: not cacheable.
    key: str | None = None
    #: What the stages decided, for the request's log line and metrics (shared by copies).
    note: Note = field(default_factory=current_note, compare=False, repr=False)

    def with_body(self, data: dict[str, Any], body: bytes) -> Call:
        return replace(self, json=data, body=body)

    def with_key(self, key: str | None) -> Call:
        return replace(self, key=key)


ChunkSource = AsyncIterator[bytes]


@dataclass(slots=True)
class Reply:
    """An upstream's answer: complete ``body`` bytes, or a ``stream`` of chunks.

    A streamed reply must be closed (``aclose``) by whoever consumes it, so that the upstream
    connection is released at once when the client goes away.
    """

    status: int
    headers: CIMultiDict[str]
    body: bytes | None = None
    stream: ChunkSource | None = None
    closer: Callable[[], Awaitable[None]] | None = None
    #: Set on a reply that was produced by another request's upstream call (coalescing), so that
    #: stages above do not store it again.
    follower: bool = False

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    async def read(self, *, max_bytes: int | None = None) -> bytes:
        """The whole body, also of a streamed reply (which is then closed); past ``max_bytes``
        the read stops with :class:`~proxy.errors.UpstreamError`."""
        if self.stream is None:
            return self.body or b""
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in self.stream:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise UpstreamError(f"upstream answer larger than {max_bytes} bytes")
                chunks.append(chunk)
        finally:
            await self.aclose()
        return b"".join(chunks)

    async def aclose(self) -> None:
        if self.closer is not None:
            closer, self.closer = self.closer, None
            await closer()


Next = Callable[[Call], Awaitable[Reply]]


class Stage(Protocol):
    """A pipeline stage: wraps the stage below it."""

    def wrap(self, next_stage: Next) -> Next: ...
