"""Coalescing: single flight for identical in-flight calls, micro-batching of list inputs."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ..keys import BATCHER, SINGLEFLIGHT

__all__ = ["coalesce_ctx"]


async def coalesce_ctx(app: web.Application) -> AsyncIterator[None]:
    """Sets ``app[SINGLEFLIGHT]`` and ``app[BATCHER]`` (``None`` when off)."""
    app[SINGLEFLIGHT] = None
    app[BATCHER] = None
    yield
