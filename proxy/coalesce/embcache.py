"""Per-input embedding cache: each input of an embeddings call is cached on its own.

A call whose inputs were partly seen before sends only the new ones upstream (through the
batcher, so they merge with other callers' new inputs) and gets the whole answer assembled in its
own order. ``X-Cache`` says ``HIT`` when every input hit, ``MISS`` otherwise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from multidict import CIMultiDict

from ..cache.keys import drop_fields, request_key
from ..call import Call, Reply
from ..config import CacheSettings
from ..errors import NotCached
from ..metrics import Metrics
from .merge import Item, Parsed, SplitError, apportion

__all__ = ["InputCache", "InputBackend"]

PATH = "/v1/embeddings"

Send = Callable[[Call, Parsed], Awaitable[Reply]]
Entry = dict[str, Any]  # {"e": embedding, "t": tokens, "m": model, "at": unix time}


class InputBackend(Protocol):
    """What the per-input cache needs of the response cache's backend (it fails open)."""

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes, *, ttl_s: float) -> None: ...


class InputCache:
    def __init__(self, backend: InputBackend, *, settings: CacheSettings, metrics: Metrics) -> None:
        self.backend = backend
        self.settings = settings
        self.metrics = metrics
        self._drop = drop_fields(settings) | {"input"}

    def key(self, call: Call, item: Item) -> str:
        extra = orjson.dumps(item)
        return request_key(call, settings=self.settings, drop=self._drop, extra=extra)

    def ttl_s(self, call: Call) -> float:
        """``X-Cache-TTL`` (``0``: store nothing), else the route's TTL; at most ``max_ttl_s``."""
        ttl_s = call.cache.ttl_s
        if ttl_s is None:
            ttl_s = self.settings.route_ttl_s.get(call.path, self.settings.default_ttl_s)
        return min(ttl_s, self.settings.max_ttl_s)

    async def answer(self, call: Call, parsed: Parsed, send: Send) -> Reply:
        """Answer ``call`` from cached inputs, sending only the missing ones on with ``send``."""
        ttl_s = self.ttl_s(call)
        read, write = call.cache.may_share, not call.cache.no_store and ttl_s > 0
        if call.path not in self.settings.routes or not (read or write):
            return await send(call, parsed)
        keys = [self.key(call, item) for item in parsed.items]
        entries: list[Entry | None] = [None] * len(keys)
        if read:
            entries = await self._lookup(call, keys)
        missing = [i for i, entry in enumerate(entries) if entry is None]
        self.metrics.cache_input_hits.labels(PATH).inc(len(keys) - len(missing))
        self.metrics.cache_input_misses.labels(PATH).inc(len(missing))
        if not missing:
            return _assembled(entries, CIMultiDict({"Content-Type": "application/json"}), "HIT")
        if call.cache.only_if_cached:
            raise NotCached("Not every input of this request is cached (only-if-cached)")
        sub_call, sub = call, parsed
        if len(missing) < len(keys):
            sub = Parsed([parsed.items[i] for i in missing], parsed.kind)
            data = {**(call.json or {}), "input": sub.items}
            sub_call = call.with_body(data, orjson.dumps(data)).with_key(None)
        reply = await send(sub_call, sub)
        if not reply.ok or reply.body is None:
            return reply
        try:
            fresh = _entries(orjson.loads(reply.body), sub)
        except (SplitError, orjson.JSONDecodeError):
            return reply
        for i, entry in zip(missing, fresh, strict=True):
            entries[i] = entry
        if write:
            await asyncio.gather(
                *(
                    self._store(keys[i], entry, ttl_s)
                    for i, entry in zip(missing, fresh, strict=True)
                )
            )
        if len(missing) == len(keys):
            reply.headers["X-Cache"] = "MISS"
            return reply
        return _assembled(entries, reply.headers, "MISS")

    async def _lookup(self, call: Call, keys: list[str]) -> list[Entry | None]:
        raws = await asyncio.gather(*(self.backend.get(k) for k in keys))
        max_age = call.cache.max_age_s
        now = time.time()
        out: list[Entry | None] = []
        for raw in raws:
            entry = _decode(raw)
            if entry is not None and max_age is not None and now - entry["at"] > max_age:
                entry = None
            out.append(entry)
        return out

    async def _store(self, key: str, entry: Entry, ttl_s: float) -> None:
        await self.backend.set(key, orjson.dumps(entry), ttl_s=ttl_s)


def _decode(raw: bytes | None) -> Entry | None:
    if raw is None:
        return None
    try:
        entry = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(entry, dict) or not {"e", "t", "m", "at"} <= entry.keys():
        return None
    return entry


def _entries(answer: Any, sub: Parsed) -> list[Entry]:
    """Cache entries for the inputs of ``sub`` from the upstream's answer to it."""
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list) or len(data) != len(sub.items):
        raise SplitError("the answer does not have one embedding per input")
    usage = answer.get("usage")
    total = usage.get("prompt_tokens", 0) if isinstance(usage, dict) else 0
    tokens = apportion(total if isinstance(total, int) else 0, sub.tokens)
    ordered = sorted(data, key=lambda d: int(d.get("index", 0)) if isinstance(d, dict) else 0)
    now = time.time()
    model = answer.get("model")
    return [
        {"e": d.get("embedding") if isinstance(d, dict) else None, "t": t, "m": model, "at": now}
        for d, t in zip(ordered, tokens, strict=True)
    ]


def _assembled(entries: list[Entry | None], headers: CIMultiDict[str], cache: str) -> Reply:
    tokens = sum(e["t"] for e in entries if e is not None)
    data = [
        {"object": "embedding", "index": i, "embedding": e["e"]}
        for i, e in enumerate(entries)
        if e is not None
    ]
    model = next((e["m"] for e in entries if e is not None), None)
    body = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    out = CIMultiDict(headers)
    out["X-Cache"] = cache
    return Reply(200, out, body=orjson.dumps(body))
