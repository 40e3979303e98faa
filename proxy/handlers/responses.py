"""The door for stored responses: ``GET``/``DELETE /v1/responses/{id}``, ``POST .../cancel``,
``GET .../input_items``, passed through to the upstream that created the response. A response
deleted upstream is dropped from the cache too. Another tenant's response is a 404 where the
upstream could not tell the two apart (:meth:`proxy.responses.origins.Origin.denies`)."""

from __future__ import annotations

from aiohttp import web

from ..errors import NotFound
from ..keys import CACHE, DOOR, IDENTITY, ORIGINS
from .proxy import safe_path, write_reply

__all__ = ["stored_response_handler"]


async def stored_response_handler(request: web.Request) -> web.StreamResponse:
    door = request.app[DOOR]
    url = request.rel_url
    path, query = safe_path(url.raw_path), url.raw_query_string
    origins = request.app[ORIGINS].origins
    response_id = request.match_info["response_id"]
    origin = await origins.lookup(response_id)
    identity = request[IDENTITY]
    upstream = door.router.upstreams.get(origin.upstream) if origin is not None else None
    if origin is not None:
        target = upstream or door.router.default_or_404()
        own_key = not target.forwards_client_key(identity.credential)
        if origin.denies(tenant=identity.tenant, own_key=own_key):
            raise NotFound(f"No response found with id '{response_id}'.")
    reply = await door.passthrough(request, identity, path, query, upstream=upstream)
    deleted = request.method == "DELETE" and "rest" not in request.match_info and reply.ok
    if deleted and origin is not None:
        await origins.forget(response_id)
        cache = request.app[CACHE]
        if origin.cache_key is not None and cache is not None:
            await cache.backend.delete(origin.cache_key)
    return await write_reply(request, reply)
