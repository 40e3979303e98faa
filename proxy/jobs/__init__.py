"""Asynchronous jobs: accept now, forward later through the pipeline, never lose one.

See ``docs/jobs.md``. The parts: :mod:`.models` (the job record), :mod:`.store` (the contract)
with :mod:`.memory` and :mod:`.redis`, :mod:`.worker` (claim, run, retry, record; its claim loop,
:mod:`.dispatch`, is the batch runner's too), :mod:`.limits` (per-upstream rate limits),
:mod:`.webhooks` and :mod:`.service`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import aiohttp
from aiohttp import web

from ..config import Settings
from ..handlers import jobs as handlers
from ..keys import DOOR, JOBS, METRICS, PIPELINE, READINESS, RESOURCES, SETTINGS
from ..readiness import redis_ping
from ..redis_client import open_redis
from ..resources import Resources
from .limits import MemoryBuckets, RateLimiter, RedisBuckets, bucket_limits
from .memory import MemoryJobStore
from .redis import RedisJobStore
from .service import JobService
from .store import JobStore
from .webhooks import WebhookSender
from .worker import Worker

__all__ = ["add_job_routes", "jobs_ctx", "memory_rate_state"]

log = logging.getLogger(__name__)

_MAX_CONNECTIONS = 128


def _redis(settings: Settings) -> Any:
    """The job feature's own client: a burst waits for a pool connection (up to
    ``jobs.store_timeout_s``) instead of failing with "too many connections"."""
    return open_redis(
        settings.redis,
        max_connections=_MAX_CONNECTIONS,
        pool_timeout_s=settings.jobs.store_timeout_s,
        socket_connect_timeout=1.0,
    )


def _memory_store(result_ttl_s: float) -> MemoryJobStore:
    log.warning(
        "jobs use the in-memory store: queued jobs and results do not survive a restart "
        "(set redis.url to keep them)"
    )
    return MemoryJobStore(result_ttl_s=result_ttl_s)


def _store(redis: Any, settings: Settings, resources: Resources) -> tuple[JobStore, RateLimiter]:
    jobs = settings.jobs
    limits = bucket_limits(jobs.rate_limit)
    if redis is not None:
        store = RedisJobStore(
            redis,
            prefix=settings.redis.key_prefix,
            result_ttl_s=jobs.result_ttl_s,
            op_timeout_s=jobs.store_timeout_s,
        )
        return store, RateLimiter(RedisBuckets(redis, store.keys, limits), limits)
    # The only copy of its jobs: the process keeps it, and a live reload's new app takes it over.
    memory = resources.keep("jobs-memory-store", partial(_memory_store, jobs.result_ttl_s))
    return memory, RateLimiter(MemoryBuckets(limits, tat=memory_rate_state(resources)), limits)


def memory_rate_state(resources: Resources) -> dict[str, float]:
    """The process's memory rate-limit state (for jobs and batches), kept across reloads."""
    state: dict[str, float] = resources.keep("jobs-memory-rate-limits", dict)
    return state


async def jobs_ctx(app: web.Application) -> AsyncIterator[None]:
    """Opens the job store, starts the workers, sets ``app[JOBS]`` (``None`` when off)."""
    settings = app[SETTINGS]
    if not settings.jobs.enabled:
        app[JOBS] = None
        yield
        return
    redis = _redis(settings) if settings.jobs_on_redis else None
    store, limiter = _store(redis, settings, app[RESOURCES])
    if redis is not None:
        app[READINESS].add_check("jobs", redis_ping(redis, "job store unavailable"))
    session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
    webhooks = None
    if settings.jobs.webhook_secret is not None:
        webhooks = WebhookSender(
            session,
            secret=settings.jobs.webhook_secret,
            allow=settings.jobs.callback_allow,
            max_attempts=settings.jobs.webhook_max_attempts,
            timeout_s=settings.jobs.webhook_timeout_s,
        )
    worker = Worker(
        store=store,
        door=app[DOOR],
        pipeline=app[PIPELINE],
        settings=settings.jobs,
        limiter=limiter,
        metrics=app[METRICS],
        on_finished=lambda job: None,
    )
    service = JobService(
        store=store, worker=worker, settings=settings.jobs, metrics=app[METRICS], webhooks=webhooks
    )
    app[JOBS] = service
    app[DOOR].async_door = handlers.async_door
    await service.start()
    # A reload's old generation stops dispatching at once (proxy.runtime): the new one takes over.
    app.on_shutdown.append(lambda _app: service.halt())
    try:
        yield
    finally:
        app[DOOR].async_door = None
        await service.stop()
        await session.close()
        if redis is not None:
            await redis.aclose()


def add_job_routes(app: web.Application) -> None:
    """``/v1/jobs`` routes."""
    handlers.add_routes(app)
