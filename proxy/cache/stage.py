"""The cache stage: the outermost pipeline stage, in front of coalescing and the upstream.

For every JSON call to a cached route it computes the key, answers from the cache when it may
(in the form the client asked for), and otherwise passes ``call.with_key(key)`` down and stores a
successful, complete answer on the way back up (streams are recorded as they pass).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDict
from prometheus_client import Counter

from ..call import Call, Next, Reply
from ..config import CacheSettings
from ..errors import NotCached, ProxyError
from ..metrics import Metrics
from .backend import CacheBackend
from .entry import Entry, keep_headers
from .forms import CONVERTIBLE, assemble, ends_with_usage, strip_usage, synthesize
from .keys import digest_of, drop_fields, is_deterministic, request_key
from .responses import RESPONSES, is_background, render_events, to_json
from .storable import storable_json, storable_stream
from .usage import ask_for_usage, include_usage, without_usage

__all__ = ["HIT", "MISS", "BYPASS", "ResponseCache"]

log = logging.getLogger(__name__)

HIT, MISS, BYPASS = "HIT", "MISS", "BYPASS"
#: Routes where sampling makes answers vary (``cache.only_deterministic`` applies to these).
SAMPLING_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses"})
_SSE_TYPE = "text/event-stream; charset=utf-8"
_JSON_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class _RouteCounters:
    hits: Any
    misses: Any
    bypasses: Any

    @classmethod
    def of(cls, metrics: Metrics, route: str) -> _RouteCounters:
        def child(counter: Counter) -> Any:
            return counter.labels(route=route)

        return cls(
            child(metrics.cache_hits), child(metrics.cache_misses), child(metrics.cache_bypasses)
        )


class ResponseCache:
    """Serves repeats from ``backend`` and stores fresh answers; ``wrap`` makes the stage."""

    def __init__(
        self,
        *,
        settings: CacheSettings,
        backend: CacheBackend,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.routes = frozenset(settings.routes)
        self.drop = drop_fields(settings)
        self._ttl = {r: settings.route_ttl_s.get(r, settings.default_ttl_s) for r in self.routes}
        self._counters = {r: _RouteCounters.of(metrics, r) for r in self.routes}
        self._clock = clock

    def wrap(self, next_stage: Next) -> Next:
        routes = self.routes

        async def cache_stage(call: Call) -> Reply:
            if call.json is None or call.path not in routes:
                return await next_stage(call)
            return await self.handle(call, next_stage)

        return cache_stage

    async def handle(self, call: Call, next_stage: Next) -> Reply:
        """Answer one cacheable call: from the cache, or from below (and store it)."""
        key = request_key(call, settings=self.settings, drop=self.drop)
        control = call.cache
        counters = self._counters[call.path]
        if control.no_store or not self._eligible(call):
            counters.bypasses.inc()
            return _mark(await next_stage(call.with_key(key)), BYPASS, key)
        if not control.no_cache:
            hit = await self._lookup(call, key)
            if hit is not None:
                counters.hits.inc()
                return hit
        if control.only_if_cached:
            counters.misses.inc()
            raise NotCached(
                "The response is not in the cache (Cache-Control: only-if-cached)",
                headers={"X-Cache": MISS, "X-Cache-Key": digest_of(key)},
            )
        call = call.with_key(key)  # (only now: a hit never pays for the copy)
        # What is recorded carries usage (so it can answer JSON requests); the client gets the
        # stream it asked for. The call with usage also shares flights with clients who asked.
        down = ask_for_usage(call)
        tag = BYPASS if control.no_cache else MISS
        try:
            reply = await next_stage(down)
        except ProxyError:
            (counters.bypasses if tag == BYPASS else counters.misses).inc()
            raise
        _mark(reply, tag, key)
        # The batcher answers HIT when every input came from its per-input cache.
        if reply.headers.get("X-Cache") == HIT:
            counters.hits.inc()
        else:
            (counters.bypasses if tag == BYPASS else counters.misses).inc()
        if not reply.follower and reply.ok and not _forbids_store(reply.headers):
            await self._keep(call, key, reply)
        if down is not call and reply.stream is not None and _is_sse(reply.headers):
            reply.stream = without_usage(reply.stream)
        return reply

    def _eligible(self, call: Call) -> bool:
        assert call.json is not None
        if call.path == RESPONSES and is_background(call.json):
            return False  # answered ``queued``: not a result to repeat
        if not self.settings.only_deterministic or call.path not in SAMPLING_ROUTES:
            return True
        return is_deterministic(call.json)

    # --- reading ---------------------------------------------------------------------------------

    async def _lookup(self, call: Call, key: str) -> Reply | None:
        raw = await self.backend.get(key)
        if raw is None:
            return None
        entry = Entry.decode(raw)
        if entry is None:
            log.debug("cache entry %s does not decode; treated as a miss", digest_of(key))
            return None
        age = max(0.0, self._clock() - entry.stored_at)
        max_age = call.cache.max_age_s
        if max_age is not None and age > max_age:
            return None
        return _serve(call, entry, key, age)

    # --- writing ---------------------------------------------------------------------------------

    async def _keep(self, call: Call, key: str, reply: Reply) -> None:
        ttl_s = call.cache.ttl_s if call.cache.ttl_s is not None else self._ttl[call.path]
        ttl_s = min(ttl_s, self.settings.max_ttl_s)
        if ttl_s <= 0:
            return
        if reply.stream is None:
            body = reply.body or b""
            if len(body) <= self.settings.max_entry_bytes and storable_json(call.path, body):
                entry = self._entry(reply, form="json", payload=body)
                await self.backend.set(key, entry.encode(), ttl_s=ttl_s)
        elif _is_sse(reply.headers):
            reply.stream = self._record(call, reply, reply.stream, key=key, ttl_s=ttl_s)

    def _entry(
        self, reply: Reply, *, form: str, payload: bytes, sizes: tuple[int, ...] = ()
    ) -> Entry:
        return Entry(
            status=reply.status,
            stored_at=self._clock(),
            headers=tuple(keep_headers(reply.headers)),
            form="sse" if form == "sse" else "json",
            payload=payload,
            chunk_sizes=sizes,
            has_usage=form == "sse" and ends_with_usage(payload),
        )

    async def _record(
        self,
        call: Call,
        reply: Reply,
        source: AsyncIterator[bytes],
        *,
        key: str,
        ttl_s: float,
    ) -> AsyncIterator[bytes]:
        """Pass every chunk on at once, keeping a copy; store once the stream ended properly.

        A stream the client left, or the upstream broke, never reaches the end of this loop; one
        that ended but is not whole (see :mod:`.storable`) is not stored.
        """
        chunks: list[bytes] | None = []
        size, limit = 0, self.settings.max_entry_bytes
        async for chunk in source:
            if chunks is not None:
                size += len(chunk)
                if size > limit:
                    chunks = None
                else:
                    chunks.append(chunk)
            yield chunk
        if chunks:
            payload = b"".join(chunks)
            if storable_stream(call.path, payload):
                sizes = tuple(len(c) for c in chunks)
                entry = self._entry(reply, form="sse", payload=payload, sizes=sizes)
                await self.backend.set(key, entry.encode(), ttl_s=ttl_s)


def _forbids_store(headers: CIMultiDict[str]) -> bool:
    value = headers.get("Cache-Control")
    return value is not None and "no-store" in value.lower()


def _mark(reply: Reply, tag: str, key: str) -> Reply:
    headers = reply.headers
    if "X-Cache" not in headers:
        headers["X-Cache"] = tag
    headers["X-Cache-Key"] = digest_of(key)
    return reply


def _is_sse(headers: CIMultiDict[str]) -> bool:
    return headers.get("Content-Type", "").startswith("text/event-stream")


def _hit_headers(entry: Entry, key: str, age: float, content_type: str | None) -> CIMultiDict[str]:
    headers = CIMultiDict(entry.headers)
    if content_type is not None:
        headers["Content-Type"] = content_type
    headers["X-Cache"] = HIT
    headers["X-Cache-Key"] = digest_of(key)
    headers["Age"] = str(int(age))
    return headers


def _serve(call: Call, entry: Entry, key: str, age: float) -> Reply | None:
    """The entry in the form ``call`` asks for, or ``None`` when it cannot be made from it."""
    if call.path == RESPONSES:
        return _serve_response(call, entry, key, age)
    convertible = call.path in CONVERTIBLE
    if entry.form == "json":
        if not (call.stream and convertible):
            return Reply(entry.status, _hit_headers(entry, key, age, None), body=entry.payload)
        chunks = synthesize(call.path, entry.payload, include_usage=include_usage(call))
        if chunks is None:
            return None
        return _stream_reply(entry, key, age, chunks)
    if call.stream:
        wants_usage = include_usage(call)
        if wants_usage == entry.has_usage:
            return _stream_reply(entry, key, age, entry.chunks(), keep_type=True)
        if not entry.has_usage:
            return None  # usage cannot be made up: ask the upstream, and store that answer
        stripped = strip_usage(entry.chunks())
        return None if stripped is None else _stream_reply(entry, key, age, stripped)
    body = assemble(call.path, entry.payload) if convertible else None
    if body is None:
        return None
    return Reply(entry.status, _hit_headers(entry, key, age, _JSON_TYPE), body=body)


def _serve_response(call: Call, entry: Entry, key: str, age: float) -> Reply | None:
    """A Responses API entry: a recorded stream is replayed as recorded or read as its final
    object; a JSON one is sent as is or rendered as events."""
    if entry.form == "sse":
        if call.stream:
            return _stream_reply(entry, key, age, entry.chunks(), keep_type=True)
        body = to_json(entry.payload)
        if body is None:
            return None
        return Reply(entry.status, _hit_headers(entry, key, age, _JSON_TYPE), body=body)
    if not call.stream:
        return Reply(entry.status, _hit_headers(entry, key, age, None), body=entry.payload)
    chunks = render_events(entry.payload)
    return None if chunks is None else _stream_reply(entry, key, age, chunks)


def _stream_reply(
    entry: Entry, key: str, age: float, chunks: list[bytes], *, keep_type: bool = False
) -> Reply:
    headers = _hit_headers(entry, key, age, None if keep_type else _SSE_TYPE)
    return Reply(entry.status, headers, stream=_replay(chunks))


async def _replay(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
