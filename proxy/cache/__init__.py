"""Response cache (memory or Redis backend) and its pipeline stage.

``cache_ctx`` opens the backend and sets ``app[CACHE]`` to a :class:`ResponseCache` (``None``
when ``cache.enabled`` is false); ``add_cache_routes`` adds ``DELETE /v1/cache``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial

from aiohttp import web

from ..config import Settings
from ..handlers.cache_admin import clear_cache
from ..keys import CACHE, METRICS, READINESS, RESOURCES, SETTINGS
from ..metrics import Metrics
from .backend import CacheBackend
from .memory import MemoryBackend
from .redis import RedisBackend, open_cache_redis
from .stage import ResponseCache

__all__ = [
    "CacheBackend",
    "MemoryBackend",
    "RedisBackend",
    "ResponseCache",
    "add_cache_routes",
    "cache_ctx",
    "open_backend",
]


def open_backend(settings: Settings, metrics: Metrics) -> CacheBackend:
    """The backend ``cache.backend`` names (Redis clients connect lazily: no I/O here)."""
    cache = settings.cache
    if cache.backend == "redis":
        return RedisBackend(
            open_cache_redis(settings.redis), redis=settings.redis, cache=cache, metrics=metrics
        )
    return MemoryBackend(
        max_entries=cache.max_entries,
        max_bytes=cache.max_bytes,
        eviction=cache.eviction,
        metrics=metrics,
    )


async def cache_ctx(app: web.Application) -> AsyncIterator[None]:
    """Opens the cache backend and sets ``app[CACHE]`` (``None`` when the cache is off)."""
    settings = app[SETTINGS]
    if not settings.cache.enabled:
        app[CACHE] = None
        yield
        return
    metrics = app[METRICS]
    async with app[RESOURCES].use(
        _backend_key(settings), partial(open_backend, settings, metrics), _close_backend
    ) as backend:
        app[CACHE] = ResponseCache(settings=settings.cache, backend=backend, metrics=metrics)
        if isinstance(backend, RedisBackend):
            # Degraded while the breaker is open; a background probe closes it when Redis is
            # back.
            app[READINESS].watch(
                "cache",
                backend.breaker,
                backend.client.ping,
                timeout_s=backend.timeout_s,
                problem="cache off: its Redis is unavailable (circuit breaker open)",
            )
        yield


def _backend_key(settings: Settings) -> tuple[str, ...]:
    """What the backend is built from: a live reload that leaves it unchanged keeps the backend,
    and so the memory cache's entries."""
    cache = settings.cache
    if cache.backend == "redis":
        return ("cache", "redis", settings.redis.model_dump_json(), cache.model_dump_json())
    return ("cache", "memory", str(cache.max_entries), str(cache.max_bytes), cache.eviction)


async def _close_backend(backend: CacheBackend) -> None:
    await backend.close()


def add_cache_routes(app: web.Application) -> None:
    """Admin routes (``DELETE /v1/cache``)."""
    app.router.add_delete("/v1/cache", clear_cache)
