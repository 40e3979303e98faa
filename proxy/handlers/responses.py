"""The door for stored responses: ``GET``/``DELETE /v1/responses/{id}``, ``POST .../cancel``,
``GET .../input_items``, passed through to the upstream that created the response."""

from __future__ import annotations

from aiohttp import web

from ..keys import DOOR, IDENTITY, ORIGINS
from .proxy import safe_path, write_reply

__all__ = ["stored_response_handler"]


async def stored_response_handler(request: web.Request) -> web.StreamResponse:
    door = request.app[DOOR]
    url = request.rel_url
    path, query = safe_path(url.raw_path), url.raw_query_string
    name = await request.app[ORIGINS].origins.lookup(request.match_info["response_id"])
    upstream = door.router.upstreams.get(name) if name is not None else None
    reply = await door.passthrough(request, request[IDENTITY], path, query, upstream=upstream)
    return await write_reply(request, reply)
