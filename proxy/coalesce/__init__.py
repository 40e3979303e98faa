"""Coalescing: single flight for identical in-flight calls, micro-batching of list inputs.

``coalesce_ctx`` builds both stages (``app[SINGLEFLIGHT]``, ``app[BATCHER]``; ``None`` when
switched off) and, on cleanup, cancels and awaits every task they own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from ..keys import BATCHER, CACHE, METRICS, REDIS, SETTINGS, SINGLEFLIGHT
from .batcher import Batcher
from .embcache import InputCache
from .remote import RemoteFlights
from .singleflight import SingleFlight

__all__ = ["Batcher", "InputCache", "RemoteFlights", "SingleFlight", "coalesce_ctx"]


async def coalesce_ctx(app: web.Application) -> AsyncIterator[None]:
    """Sets ``app[SINGLEFLIGHT]`` and ``app[BATCHER]`` (``None`` when off)."""
    settings = app[SETTINGS]
    metrics = app[METRICS]
    single: SingleFlight | None = None
    batcher: Batcher | None = None
    if settings.coalescing.enabled:
        redis = app[REDIS]
        remote = None
        if redis is not None:
            remote = RemoteFlights(
                redis,
                prefix=settings.redis.key_prefix,
                wait_s=settings.coalescing.cross_replica_wait_s,
                claim_ttl_s=settings.coalescing.claim_ttl_s,
                op_timeout_s=settings.redis.op_timeout_ms / 1000,
                breaker_cooldown_s=settings.redis.breaker_cooldown_s,
                metrics=metrics,
            )
        single = SingleFlight(cache=settings.cache, metrics=metrics, remote=remote)
    if settings.batching.enabled:
        cache = app[CACHE]
        inputs = None
        if cache is not None:
            inputs = InputCache(cache.backend, settings=settings.cache, metrics=metrics)
        batcher = Batcher(
            settings=settings.batching, cache=settings.cache, metrics=metrics, inputs=inputs
        )
    app[SINGLEFLIGHT] = single
    app[BATCHER] = batcher
    try:
        yield
    finally:
        if batcher is not None:
            await batcher.aclose()
        if single is not None:
            await single.aclose()
