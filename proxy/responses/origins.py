"""Which upstream created a response: ``resp_...`` id -> upstream name, for the cache's TTL.

A stored response lives on the upstream that created it, so ``GET /v1/responses/{id}``,
``DELETE``, ``POST .../cancel`` and ``GET .../input_items`` must go back there. The
:class:`OriginStage` notes the id of every successful ``POST /v1/responses`` answer that came
from an upstream (streams: from their first event, ``response.created``); the door for those
routes asks :meth:`Origins.lookup`. Memory for one process, Redis (``<prefix>:responses:origin:
<id>``) when ``redis.url`` is set, so every replica knows. Both fail open: an id nobody
remembers goes to the default upstream, as it did before.

Each id also keeps the cache key its answer was stored under, so that deleting the response
upstream drops the cached copy too: a hit must not hand out an id the upstream no longer has.

And the tenant that created it. Where the upstream cannot tell tenants apart (``auth.mode:
keys``, ``pass_client_key: false``, a keyless caller lent the upstream's key: the upstream gets
its own key, not the caller's), the proxy is the only guard of another tenant's response:
:meth:`Origin.denies` it to them, at the door for ``/v1/responses/{id}``, in this stage for a
job's calls below that path, and for ``previous_response_id`` (which would continue the owner's
conversation). An id nobody remembers is forwarded as before (fail open, like the routing): the
upstream's ids are unguessable, so reaching another tenant's response then takes its id *and* a
forgotten origin.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from cachetools import TLRUCache
from redis.exceptions import RedisError

from ..breaker import Breaker
from ..cache.responses import RESPONSES
from ..call import Call, Next, Reply
from ..config import CacheSettings
from ..errors import NotFound

__all__ = ["MemoryOrigins", "Origin", "OriginStage", "Origins", "RedisOrigins"]

#: Ids remembered by one process at most (about 150 bytes each).
MAX_REMEMBERED = 100_000
#: A stream whose first event is larger than this is not searched for its id.
_MAX_HEAD_BYTES = 64 * 1024
_REDIS_ERRORS = (RedisError, OSError, TimeoutError)
_STORED = RESPONSES + "/"


@dataclass(frozen=True, slots=True)
class Origin:
    #: The name of the upstream that created the response.
    upstream: str
    #: The cache key of the request that created it (``None``: not a cached route).
    cache_key: str | None = None
    #: The tenant that created it (``None``: noted by a version that did not keep it).
    tenant: str | None = None

    def encode(self) -> bytes:
        return orjson.dumps([self.upstream, self.cache_key, self.tenant])

    @classmethod
    def decode(cls, raw: bytes) -> Origin | None:
        try:
            upstream, cache_key, *rest = orjson.loads(raw)
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return None
        tenant = rest[0] if rest else None
        if not all(isinstance(v, str | None) for v in (cache_key, tenant)):
            return None
        return cls(upstream, cache_key, tenant) if isinstance(upstream, str) else None

    def denies(self, *, tenant: str, own_key: bool) -> bool:
        """Whether the proxy must refuse this response to ``tenant``: it belongs to another
        tenant, and the call would reach the upstream with the upstream's own key (``own_key``),
        so the upstream could not refuse it. With the caller's own key the upstream decides, as
        it would without the proxy."""
        return own_key and self.tenant is not None and self.tenant != tenant


class Origins(Protocol):
    async def remember(self, response_id: str, origin: Origin, *, ttl_s: float) -> None: ...

    async def lookup(self, response_id: str) -> Origin | None:
        """Where ``response_id`` was created, or ``None`` when unknown."""
        ...

    async def forget(self, response_id: str) -> None: ...


def _expires(_key: str, value: tuple[Origin, float], now: float) -> float:
    return now + value[1]


class MemoryOrigins:
    """One process's memory: bounded, each id with its own TTL."""

    def __init__(self, *, max_entries: int = MAX_REMEMBERED) -> None:
        self._ids: TLRUCache[str, tuple[Origin, float]] = TLRUCache(
            maxsize=max_entries, ttu=_expires, timer=time.monotonic
        )

    async def remember(self, response_id: str, origin: Origin, *, ttl_s: float) -> None:
        self._ids[response_id] = (origin, ttl_s)

    async def lookup(self, response_id: str) -> Origin | None:
        found = self._ids.get(response_id)
        return None if found is None else found[0]

    async def forget(self, response_id: str) -> None:
        self._ids.pop(response_id, None)


class RedisOrigins:
    """Shared by every replica; each operation bounded by ``redis.op_timeout_ms``, and skipped
    for ``redis.breaker_cooldown_s`` after a failure."""

    def __init__(
        self, client: Any, *, prefix: str, op_timeout_s: float, breaker_cooldown_s: float = 5.0
    ) -> None:
        self.client = client
        self.prefix = f"{prefix}:responses:origin:"
        self.timeout_s = op_timeout_s
        self.breaker = Breaker(
            cooldown_s=breaker_cooldown_s,
            name="response origins redis",
            fallback="stored responses go to the default upstream",
        )

    async def remember(self, response_id: str, origin: Origin, *, ttl_s: float) -> None:
        await self._run("set", self.prefix + response_id, origin.encode(), px=int(ttl_s * 1000))

    async def lookup(self, response_id: str) -> Origin | None:
        raw = await self._run("get", self.prefix + response_id)
        return None if raw is None else Origin.decode(raw)

    async def forget(self, response_id: str) -> None:
        await self._run("unlink", self.prefix + response_id)

    async def _run(self, op: str, *args: Any, **kwargs: Any) -> Any:
        """One bounded command; ``None`` when Redis is down (or known to be)."""
        if not self.breaker.allow():
            return None
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await getattr(self.client, op)(*args, **kwargs)
        except _REDIS_ERRORS as exc:
            self.breaker.failed(op, exc)
            return None
        self.breaker.succeeded()
        return result


class OriginStage:
    """Notes the creating upstream of every response an upstream answered (not hits, not
    coalesced followers: the call that reached the upstream noted it)."""

    def __init__(self, origins: Origins, *, cache: CacheSettings) -> None:
        self.origins = origins
        self._ttl_s = cache.route_ttl_s.get(RESPONSES, cache.default_ttl_s)

    def wrap(self, next_stage: Next) -> Next:
        async def note_origin(call: Call) -> Reply:
            if call.path.startswith(_STORED):  # a job's call to a stored response
                await self._check_stored(call)
            if call.path != RESPONSES or call.method != "POST":
                return await next_stage(call)
            await self._check_previous(call)
            reply = await next_stage(call)
            if not reply.ok or reply.follower:
                return reply
            ttl_s = max(self._ttl_s, call.cache.ttl_s or 0.0)
            if reply.stream is None:
                await self._note(_id_of(reply.body or b""), call, ttl_s)
            else:
                reply.stream = self._sniff(reply.stream, call, ttl_s)
            return reply

        return note_origin

    async def _elsewhere(self, call: Call, response_id: str) -> bool:
        """Whether ``response_id`` is another tenant's and ``call`` would reach the upstream
        with the upstream's own key (so the upstream could not refuse it)."""
        if not response_id or call.upstream.forwards_client_key(call.credential):
            return False
        origin = await self.origins.lookup(response_id)
        return origin is not None and origin.denies(tenant=call.tenant, own_key=True)

    async def _check_stored(self, call: Call) -> None:
        """``/v1/responses/{id}/...`` of another tenant's response: 404, as at the door for
        stored responses (that door is the HTTP one; a job's calls come through here)."""
        response_id = call.path[len(_STORED) :].partition("/")[0]
        if await self._elsewhere(call, response_id):
            raise NotFound(f"No response found with id '{response_id}'.")

    async def _check_previous(self, call: Call) -> None:
        """``previous_response_id`` naming another tenant's response: 404, as OpenAI answers an
        id it does not know (the upstream would continue the owner's conversation)."""
        previous = call.json.get("previous_response_id") if call.json is not None else None
        if isinstance(previous, str) and await self._elsewhere(call, previous):
            raise NotFound(
                f"Previous response with id '{previous}' not found.",
                param="previous_response_id",
            )

    async def _note(self, response_id: str | None, call: Call, ttl_s: float) -> None:
        if response_id is not None:
            origin = Origin(call.upstream.name, call.key, call.tenant)
            await self.origins.remember(response_id, origin, ttl_s=ttl_s)

    async def _sniff(
        self, source: AsyncIterator[bytes], call: Call, ttl_s: float
    ) -> AsyncIterator[bytes]:
        """Pass every chunk on at once; note the id from the first event that names one
        (``response.created``; comments and keep-alives before it are skipped)."""
        head: bytes | None = b""
        seen = 0
        async for chunk in source:
            yield chunk
            if head is None:
                continue
            seen += len(chunk)
            head += chunk.replace(b"\r\n", b"\n")
            while head is not None:
                block, sep, rest = head.partition(b"\n\n")
                if not sep:
                    head = None if seen > _MAX_HEAD_BYTES else head
                    break
                found = _id_of_event(block)
                head = None if found is not None or seen > _MAX_HEAD_BYTES else rest
                if found is not None:
                    await self._note(found, call, ttl_s)


def _id_of(body: bytes) -> str | None:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    found = obj.get("id") if isinstance(obj, dict) else None
    return found if isinstance(found, str) and found else None


def _id_of_event(block: bytes) -> str | None:
    data = b"\n".join(
        line[5:].removeprefix(b" ") for line in block.split(b"\n") if line.startswith(b"data:")
    )
    if not data:
        return None
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    response = event.get("response") if isinstance(event, dict) else None
    found = response.get("id") if isinstance(response, dict) else None
    return found if isinstance(found, str) and found else None
