"""``GET /v1/models``: the union of every upstream's model list, each asked once, briefly cached.

``GET /v1/models/{model}``: asked of the upstream that serves the model (aliases applied).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from ..auth import Identity
from ..call import Call
from ..errors import InvalidRequest, UpstreamError
from ..keys import IDENTITY, MODEL_LIST, ROUTER, SETTINGS
from ..upstream import Upstream, forward_headers
from .proxy import proxy_handler, safe_path, write_reply

__all__ = ["Answer", "ModelList", "model_handler", "models_ctx", "models_handler"]

log = logging.getLogger(__name__)

#: A model list larger than this is not a model list.
_MAX_LIST_BYTES = 8 * 1024 * 1024
_MAX_TENANTS = 10_000


@dataclass(frozen=True, slots=True)
class Answer:
    """What ``GET /v1/models`` answers: the merged list, or an upstream's refusal as it came."""

    status: int
    body: bytes
    content_type: str = "application/json"


class ModelList:
    """Merged model lists per tenant (their credentials may see different models).

    Concurrent callers of one tenant share one listing; tenants never wait for each other.
    """

    def __init__(self, *, ttl_s: float, aliases: dict[str, str]) -> None:
        self.ttl_s = ttl_s
        self.aliases = aliases
        self._cache: dict[str, tuple[float, bytes]] = {}
        self._flights: dict[str, asyncio.Task[Answer]] = {}

    async def get(
        self, upstreams: list[Upstream], identity: Identity, headers: Mapping[str, str]
    ) -> Answer:
        """The tenant's merged list: cached, joined while in flight, or asked anew."""
        tenant = identity.tenant
        hit = self._fresh(tenant)
        if hit is not None:
            return Answer(200, hit)
        flight = self._flights.get(tenant)
        if flight is None:
            flight = asyncio.create_task(self._list(upstreams, identity, headers))
            self._flights[tenant] = flight
            flight.add_done_callback(functools.partial(self._landed, tenant))
        # Shielded: a caller that goes away must not cancel the listing others wait for.
        return await asyncio.shield(flight)

    async def aclose(self) -> None:
        """Cancel the listings in flight (the upstream sessions close next)."""
        flights = list(self._flights.values())
        for flight in flights:
            flight.cancel()
        await asyncio.gather(*flights, return_exceptions=True)

    def _landed(self, tenant: str, flight: asyncio.Task[Answer]) -> None:
        if self._flights.get(tenant) is flight:
            del self._flights[tenant]
        if not flight.cancelled():
            flight.exception()  # its waiters, if any are left, have it; none must not warn

    def _fresh(self, tenant: str) -> bytes | None:
        hit = self._cache.get(tenant)
        return hit[1] if hit is not None and time.monotonic() - hit[0] < self.ttl_s else None

    async def _list(
        self, upstreams: list[Upstream], identity: Identity, headers: Mapping[str, str]
    ) -> Answer:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._ask(u, identity, headers)) for u in upstreams]
        results = [task.result() for task in tasks]
        lists = [r for r in results if isinstance(r, list)]
        if not lists:
            # Nobody listed: the first refusal (a 401 for a bad client key) tells the client why.
            refusal = next((r for r in results if isinstance(r, Answer)), None)
            if refusal is not None:
                return refusal
            raise UpstreamError("No upstream answered the model list")
        body = self._merge(lists)
        if len(lists) == len(results):  # a partial list is not kept: the next call asks again
            if len(self._cache) >= _MAX_TENANTS:
                self._cache.clear()
            self._cache[identity.tenant] = (time.monotonic(), body)
        return Answer(200, body)

    def _merge(self, lists: list[list[Any]]) -> bytes:
        seen: set[str] = set()
        data: list[Any] = []
        for listed in lists:
            for model in listed:
                model_id = model.get("id") if isinstance(model, dict) else None
                if isinstance(model_id, str) and model_id not in seen:
                    seen.add(model_id)
                    data.append(model)
        for alias in self.aliases:
            if alias not in seen:
                data.append({"id": alias, "object": "model", "created": 0, "owned_by": "llm-proxy"})
        return orjson.dumps({"object": "list", "data": data})

    async def _ask(
        self, upstream: Upstream, identity: Identity, headers: Mapping[str, str]
    ) -> list[Any] | Answer | None:
        """The upstream's entries, its refusal, or ``None`` when it gave no usable answer."""
        call = Call(
            tenant=identity.tenant,
            upstream=upstream,
            method="GET",
            path="/v1/models",
            body=b"",
            headers=forward_headers(headers),
            credential=identity.credential,
        )
        try:
            reply = await upstream.send(call)
            body = await reply.read(max_bytes=_MAX_LIST_BYTES)
        except UpstreamError as exc:
            log.warning("listing models of upstream %r failed: %s", upstream.name, exc.message)
            return None
        if not reply.ok:
            log.warning("upstream %r answered the model list with %d", upstream.name, reply.status)
            return Answer(reply.status, body, reply.headers.get("Content-Type", "application/json"))
        try:
            listed = orjson.loads(body)["data"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            listed = None
        if not isinstance(listed, list):
            log.warning("upstream %r sent a malformed model list", upstream.name)
            return None
        return listed


async def models_handler(request: web.Request) -> web.StreamResponse:
    router = request.app[ROUTER]
    upstreams = list(router.upstreams.values())
    listing = request.app[MODEL_LIST]
    if len(upstreams) == 1 and not listing.aliases:
        # One upstream and nothing to add: exactly its answer, status and headers included.
        return await proxy_handler(request)
    answer = await listing.get(upstreams, request[IDENTITY], request.headers)
    return web.Response(
        status=answer.status, body=answer.body, headers={"Content-Type": answer.content_type}
    )


async def model_handler(request: web.Request) -> web.StreamResponse:
    """``GET /v1/models/{model}`` from the model's upstream, with the caller's credential; an
    alias answers with its target's object."""
    safe_path(request.raw_path)  # the door's rule for dot segments and encoded separators
    model, upstream = request.app[ROUTER].resolve(request.match_info["model"])
    if any(segment in ("", ".", "..") for segment in re.split(r"[/\\]", model)):
        raise InvalidRequest("Invalid model id in the request path", code="invalid_path")
    identity = request[IDENTITY]
    call = Call(
        tenant=identity.tenant,
        upstream=upstream,
        method="GET",
        # Ids like ``org/name`` (vLLM) keep their slash; fine-tune ids keep their colons.
        path="/v1/models/" + quote(model, safe="/:@!$&'()*+,;="),
        body=b"",
        headers=forward_headers(request.headers),
        credential=identity.credential,
        model=model,
    )
    return await write_reply(request, await upstream.send(call, stream_reply=True))


async def models_ctx(app: web.Application) -> AsyncIterator[None]:
    """The merged model lists; listings still running are cancelled at shutdown."""
    settings = app[SETTINGS]
    listing = ModelList(
        ttl_s=settings.routing.models_cache_s, aliases=dict(settings.routing.model_aliases)
    )
    app[MODEL_LIST] = listing
    try:
        yield
    finally:
        await listing.aclose()
