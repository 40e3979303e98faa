"""The Responses API's stateful side: stored responses are retrieved from where they were made.

``responses_ctx`` sets ``app[ORIGINS]`` (the :class:`OriginStage`, in the pipeline between the
cache and single flight); ``add_response_routes`` adds the doors for ``/v1/responses/{id}`` and
what hangs below it, which go to the upstream that created the response. Caching, single flight
and the two forms of ``POST /v1/responses`` are the cache's and coalescing's business
(``proxy/cache/responses.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ..handlers.responses import stored_response_handler
from ..keys import ORIGINS, REDIS, RESOURCES, SETTINGS
from .origins import MemoryOrigins, Origins, OriginStage, RedisOrigins

__all__ = ["OriginStage", "Origins", "add_response_routes", "responses_ctx"]


async def responses_ctx(app: web.Application) -> AsyncIterator[None]:
    """Sets ``app[ORIGINS]``: memory, or Redis when ``redis.url`` is set (needs ``redis_ctx``)."""
    settings = app[SETTINGS]
    redis = app[REDIS]
    origins: Origins
    if redis is None:
        # The process's only record of where each response was made: a reload keeps it.
        origins = app[RESOURCES].keep("responses-memory-origins", MemoryOrigins)
    else:
        origins = RedisOrigins(
            redis,
            prefix=settings.redis.key_prefix,
            op_timeout_s=settings.redis.op_timeout_ms / 1000,
            breaker_cooldown_s=settings.redis.breaker_cooldown_s,
        )
    app[ORIGINS] = OriginStage(origins, cache=settings.cache)
    yield


def add_response_routes(app: web.Application) -> None:
    """``/v1/responses/{id}`` and below (add before the catch-all ``/v1/`` route)."""
    app.router.add_route("*", "/v1/responses/{response_id}", stored_response_handler)
    app.router.add_route("*", "/v1/responses/{response_id}/{rest:.*}", stored_response_handler)
